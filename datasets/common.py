"""Helpers shared by the dataset classes."""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from utils.cli import InputError
from utils.schema import Schema

# Keys every dataset accepts from a config's ``others`` entry.
COMMON_KEYS = ("NAME", "subset", "npoints", "bs", "whole")


class DatasetFormatError(InputError, FileNotFoundError):
    """A dataset root is missing or not in the expected layout; the message names both."""


F32_MAX = float(np.finfo(np.float32).max)


def first_non_finite(points: np.ndarray):
    """Index (tuple) of the first NaN / Inf value of ``points`` (or a value beyond the float32 range,
    which the float32 points the models take would turn into Inf), or None when all are finite."""
    arr = np.asarray(points)
    if arr.dtype.kind not in "fc":
        return None
    finite = np.isfinite(arr)
    if arr.dtype.itemsize > 4:
        finite &= np.abs(arr) <= F32_MAX
    if finite.all():
        return None
    return tuple(int(i) for i in np.argwhere(~finite)[0])


def check_finite_points(points: np.ndarray, where: str) -> None:
    """DatasetFormatError naming ``where`` (file, entry) and the index of the first NaN / Inf coordinate."""
    bad = first_non_finite(points)
    if bad is not None:
        raise DatasetFormatError(f"{where}: non-finite coordinate {np.asarray(points)[bad]} at index {bad}; "
                                 f"fix or remove this shape")


def require_path(path: str, dataset: str, layout: str) -> str:
    if not os.path.exists(path):
        raise DatasetFormatError(f"{dataset}: '{path}' does not exist. Expected layout:\n{layout}\n"
                                 "See README 'Data preparation' (or run `make data` for the embedded demo data).")
    return path


def dataset_schema(required: Iterable[str], optional: Iterable[str] = ()) -> Schema:
    """A dataset class's ``config_schema``: its own keys plus the keys every dataset accepts."""
    return Schema(required=tuple(required), optional=tuple(optional) + COMMON_KEYS)


def pc_normalize(pc: np.ndarray) -> np.ndarray:
    """Centre at the centroid and scale into the unit sphere (the released ``pc_normalize``).

    (N, 3+) -> a normalised copy; only the xyz columns change, extra columns (normals) are kept.
    """
    pc = pc.copy()
    centroid = pc[:, :3].mean(axis=0)
    pc[:, :3] -= centroid
    scale = np.sqrt((pc[:, :3] ** 2).sum(axis=1)).max()
    if scale > 0:
        pc[:, :3] /= scale
    return pc


def random_subset(pc: np.ndarray, num: int) -> np.ndarray:
    """``num`` random rows without replacement (numpy global RNG, seeded per worker)."""
    if num > pc.shape[0]:
        raise ValueError(f"cannot take {num} points from a cloud of {pc.shape[0]}")
    return pc[np.random.permutation(pc.shape[0])[:num]]
