"""torch.distributed helpers (released names). NCCL on CUDA, gloo on CPU."""
from __future__ import annotations

import os
from typing import Tuple

import torch
import torch.distributed as dist


def init_dist(launcher: str, backend: str | None = None) -> None:
    """Initialise the default process group from torchrun's environment (``--launcher pytorch``)."""
    if launcher != "pytorch":
        raise ValueError(f"unsupported launcher '{launcher}'; use 'pytorch' (torchrun) or 'none'")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"--launcher pytorch needs the environment variable {key}; start with torchrun")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=backend)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_dist_info() -> Tuple[int, int]:
    """(rank, world_size); (0, 1) without a process group."""
    if is_dist():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (a no-op without a process group); returns it."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_dist():
        dist.barrier()
