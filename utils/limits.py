"""Limits on what a file may make a reader allocate, checked before anything is allocated.

A data file, a point file or a checkpoint's embedded config declares sizes (an array's shape, an
HDF5 dataset's extent, ``N_POINTS``, ``trans_dim``); a reader checks the declared size against
these limits before it reads, and refuses a file beyond them in one line naming the file, the
size, the limit and the environment variable that sets it. The defaults are generous: far above
every released dataset and model.

============================  ==========================================================  =========
Environment variable          What it bounds                                               Default
============================  ==========================================================  =========
``INTERMAE_MAX_ARRAY_MB``     one array of a data file (``.npy``, ``.npz`` member, HDF5    8192
                              dataset), in MiB, as declared
``INTERMAE_MAX_EXPANSION``    declared size / stored size of a compressed ``.npz`` member  100
                              or HDF5 dataset (a decompression bomb stores little, declares
                              much)
``INTERMAE_MAX_POINTS``       points per sample (``N_POINTS``, ``npoints``)                 1000000
``INTERMAE_MAX_MODEL_PARAMS`` parameters of a model built from a checkpoint's config       2000000000
``INTERMAE_MAX_DEPTH``        transformer blocks (``depth``, ``decoder_depth``) of a        256
                              config
============================  ==========================================================  =========
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

from utils.cli import InputError

# name -> (environment variable, default, unit shown in messages)
LIMITS: Dict[str, Tuple[str, float, str]] = {
    "array_mb": ("INTERMAE_MAX_ARRAY_MB", 8192, "MiB"),
    "expansion": ("INTERMAE_MAX_EXPANSION", 100, "x"),
    "points": ("INTERMAE_MAX_POINTS", 1_000_000, "points"),
    "model_params": ("INTERMAE_MAX_MODEL_PARAMS", 2_000_000_000, "parameters"),
    "depth": ("INTERMAE_MAX_DEPTH", 256, "blocks"),
}
# Arrays smaller than this are never refused for their expansion (tiny all-zero arrays compress well).
EXPANSION_FLOOR_BYTES = 1 << 20


class LimitError(InputError, ValueError):
    """A file declares a size beyond one of :data:`LIMITS`; the message names the file, the size,
    the limit and its environment variable."""


def limit(name: str) -> float:
    """The current value of limit ``name`` (its environment variable, else the default)."""
    env, default, _ = LIMITS[name]
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LimitError(f"${env} = {raw!r}: expected a positive number (default {default})") from None
    if not value > 0:
        raise LimitError(f"${env} = {raw!r}: expected a positive number (default {default})")
    return value


def how_to_raise(name: str) -> str:
    """``limit 8192 MiB, $INTERMAE_MAX_ARRAY_MB``: the words of a refusal naming the limit."""
    env, _, unit = LIMITS[name]
    value = limit(name)
    shown = f"{value:g}" if value < 1e15 else f"{value:.3g}"
    return f"the limit is {shown} {unit}; raise it with ${env} if you trust this file"


def check_array_bytes(nbytes: int, where: str, stored: int = -1) -> None:
    """Refuse an array of ``nbytes`` (declared) bytes beyond ``INTERMAE_MAX_ARRAY_MB``, or, when its
    ``stored`` size is known (compressed / chunked), declaring more than ``INTERMAE_MAX_EXPANSION``
    times what it stores. ``where`` names the file and the array."""
    mib = nbytes / 2 ** 20
    if mib > limit("array_mb"):
        raise LimitError(f"{where} declares {mib:.1f} MiB; {how_to_raise('array_mb')}")
    if stored >= 0 and nbytes > EXPANSION_FLOOR_BYTES and nbytes > limit("expansion") * max(stored, 1):
        raise LimitError(f"{where} declares {mib:.1f} MiB but stores {stored} bytes (a decompression bomb?); "
                         f"{how_to_raise('expansion')}")


def check_count(value: int, name: str, where: str) -> None:
    """Refuse ``value`` above limit ``name`` (``points``, ``depth``, ``model_params``)."""
    if value > limit(name):
        raise LimitError(f"{where} = {value}: too large; {how_to_raise(name)}")
