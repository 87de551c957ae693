"""Seeds, devices and small helpers shared by the runners."""
from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np
import torch


def set_random_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices). ``deterministic`` also asks cuDNN and torch
    for deterministic kernels (slower)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: Optional[str] = None, local_rank: int = 0) -> torch.device:
    """``--device``: 'cuda', 'cuda:1', 'cpu', or None/'auto' (CUDA when present, else CPU).
    Under torchrun on CUDA each process takes the GPU of its LOCAL_RANK. A device that cannot be
    had is a :class:`utils.schema.ConfigError` naming it."""
    from utils.schema import ConfigError

    requested = name
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"--device {requested!r}: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested!r}: CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def warn_if_no_gpu(requested: Optional[str], device: torch.device, logger=None) -> None:
    """One warning line when the device was left to auto-detection and no GPU is visible."""
    from utils.logger import print_log

    if device.type == "cpu" and requested in (None, "", "auto"):
        print_log("WARNING: no CUDA GPU is visible, so this run uses the CPU (much slower than the GPUs the "
                  "recipes are made for); pass --device cpu to say this is intended", logger=logger)


def worker_init_fn(worker_id: int) -> None:
    """Distinct, reproducible NumPy / random streams per data-loader worker."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict:
    """Every RNG state needed to continue a run exactly (for checkpoints), as tensors and plain
    Python values only, so that a checkpoint loads with ``torch.load(path)`` (``weights_only=True``).

    ``python``: ``{"version", "state" (int64 tensor of the 625 Mersenne-Twister words), "gauss_next"}``;
    ``numpy``: ``{"bit_generator", "key" (int64 tensor of 624 words), "pos", "has_gauss",
    "cached_gaussian"}``; ``torch``: a uint8 tensor; ``cuda`` (when CUDA is present): a list of them.
    """
    version, words, gauss_next = random.getstate()
    bit_generator, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        "numpy": {"bit_generator": str(bit_generator), "key": torch.from_numpy(key.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _as_list(values) -> list:
    if isinstance(values, torch.Tensor):
        return values.tolist()
    return [int(v) for v in values]


def set_rng_state(state: dict) -> None:
    """Restore the states of :func:`rng_state`; also the older format of checkpoints written before
    it (``random.getstate()`` tuple, ``np.random.get_state()`` tuple with a uint32 array)."""
    py = state["python"]
    if isinstance(py, dict):
        gauss = py.get("gauss_next")
        random.setstate((int(py["version"]), tuple(_as_list(py["state"])), None if gauss is None else float(gauss)))
    else:
        random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    if isinstance(npy, dict):
        np.random.set_state((npy["bit_generator"], np.asarray(_as_list(npy["key"]), dtype=np.uint32), int(npy["pos"]),
                             int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    else:
        np.random.set_state(tuple(npy))
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def derived_seed(*keys: int) -> int:
    """A 32-bit seed from integer ``keys`` (e.g. seed, rank, epoch) through NumPy's SeedSequence,
    so that different keys give unrelated streams (unlike ``seed + rank``, which overlaps across epochs)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])
