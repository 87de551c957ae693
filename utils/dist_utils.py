"""torch.distributed helpers (released names). NCCL on CUDA, gloo on CPU."""
from __future__ import annotations

import datetime
import os
import pickle
from typing import Callable, List, Optional, Tuple, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


TIMEOUT_ENV = "INTERMAE_DIST_TIMEOUT"  # seconds a collective (and setting up the group) may wait; torch's default


def init_dist(launcher: str, backend: str | None = None) -> None:
    """Initialise the default process group from torchrun's environment (``--launcher pytorch``).

    ``$INTERMAE_DIST_TIMEOUT`` (seconds) bounds how long the processes wait for each other, also
    while the group is set up (torch's default otherwise: 30 min): under ``torchrun --max-restarts``
    a group that cannot form then fails, and torchrun restarts it, instead of waiting."""
    if launcher != "pytorch":
        raise ValueError(f"unsupported launcher '{launcher}'; use 'pytorch' (torchrun) or 'none'")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"--launcher pytorch needs the environment variable {key}; start with torchrun")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = os.environ.get(TIMEOUT_ENV, "").strip()
    kwargs = {"timeout": datetime.timedelta(seconds=float(timeout))} if timeout else {}
    dist.init_process_group(backend=backend, **kwargs)


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


def all_gather_objects(obj) -> List:
    """``obj`` of every process, as a list indexed by rank (``[obj]`` without a process group).

    Collective: every process must call it. ``obj`` is pickled (tensors travel as they are)."""
    if not is_dist():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _shareable(error: BaseException) -> BaseException:
    """``error`` itself when it pickles (to be sent to the other processes), else a RuntimeError
    with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(error).__name__}: {error}")


def run_on_rank0(fn: Callable[[], T]) -> Optional[T]:
    """``fn()`` on rank 0 only, with its outcome shared: when it raises, every process raises the
    same error (type and message) instead of waiting in a later collective for a rank 0 that
    stopped. Returns ``fn()``'s value on rank 0 and None elsewhere.

    Collective under torch.distributed (one ``broadcast_object_list``); without a process group it
    is ``fn()``.
    """
    if not is_dist():
        return fn()
    result, failure = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every process
            failure = e
    box = [_shareable(failure) if failure is not None else None]
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    if box[0] is not None:
        raise box[0]
    return result
