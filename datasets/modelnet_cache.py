"""Build the released ModelNet ``modelnet{C}_{split}_{N}pts_fps.dat`` caches from the ``.txt`` shapes.

Format (as written by the released Point-BERT / Point-MAE ``ModelNetDataset``):
``pickle.dump([list_of_points, list_of_labels], f)`` with float32 (N, 6) arrays
(x, y, z, nx, ny, nz; farthest-point sampled on xyz, not normalised) and int32 (1,) labels.

Difference from the release: the released numpy ``farthest_point_sample`` starts at a random
index; we start at index 0 (as the CUDA kernel does), so the cache is deterministic. Shapes with
the same row count are sampled together with the batched torch FPS of ``extensions.pointops``.
"""
from __future__ import annotations

import os
import pickle
import warnings
from collections import defaultdict
from typing import List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from extensions.pointops import furthest_point_sample
from utils.checkpoint import atomic_write
from utils.logger import library_logger, print_log

from .common import DatasetFormatError, check_finite_points
from .safe_io import load_data_pickle, npz_twin, read_npz_arrays

__all__ = ["build_modelnet_cache", "cache_file_name", "class_of_shape_id", "load_cache", "load_modelnet_cache",
           "read_lines", "read_modelnet_txt"]



def cache_file_name(num_category: int, split: str, npoints: int) -> str:
    """``modelnet{num_category}_{split}_{npoints}pts_fps.dat``."""
    return f"modelnet{num_category}_{split}_{npoints}pts_fps.dat"


def read_modelnet_txt(path: str) -> np.ndarray:
    """One ModelNet shape file (rows ``x,y,z,nx,ny,nz``) -> float32 (rows, 6)."""
    if not os.path.isfile(path):
        raise DatasetFormatError(f"ModelNet shape file '{path}' does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's "input contained no data": 0 rows, reported below
            data = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as e:
        raise DatasetFormatError(f"ModelNet shape file '{path}': expected rows of 6 comma-separated floats "
                                 f"x,y,z,nx,ny,nz ({str(e)[:200]})") from None
    if data.size == 0:
        return np.zeros((0, 6), dtype=np.float32)
    if data.shape[1] != 6:
        raise DatasetFormatError(f"ModelNet shape file '{path}': expected 6 comma-separated columns x,y,z,nx,ny,nz, "
                                 f"got {data.shape[1]}")
    check_finite_points(data, f"ModelNet shape file '{path}'")  # NaN, Inf, or beyond float32 (read as Inf)
    return data


def read_lines(path: str) -> List[str]:
    """The non-empty lines of a released list file (shape names, split ids)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ModelNet list file '{path}' does not exist")
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip()]


def class_of_shape_id(shape_id: str) -> str:
    """``night_stand_0001`` -> ``night_stand`` (the id without its last ``_xxxx``)."""
    return "_".join(shape_id.split("_")[:-1])


def load_cache(path: str, n_points: int) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Read and check a released ``.dat`` cache: ``[points list, labels list]``.

    The pickle is read by the restricted unpickler (:func:`datasets.safe_io.load_data_pickle`:
    plain values and numeric NumPy arrays only, anything else refused naming the global); its
    ``.npz`` conversion beside it (``tools/convert_pickles.py``: ``points`` (S, N, 6),
    ``labels`` (S, 1)) is read instead when present."""
    twin = npz_twin(path)
    if os.path.isfile(twin):
        arrays = read_npz_arrays(twin, "ModelNet cache", ("points", "labels"))
        data = [list(arrays["points"]), list(arrays["labels"])]
        path = twin
    else:
        data = load_data_pickle(path, "ModelNet cache")
    if not (isinstance(data, (list, tuple)) and len(data) == 2 and len(data[0]) == len(data[1])):
        raise DatasetFormatError(f"ModelNet cache '{path}': expected [list of points, list of labels] of equal length")
    points, labels = list(data[0]), list(data[1])
    if not points:
        raise DatasetFormatError(f"ModelNet cache '{path}' holds no shapes")
    first = np.asarray(points[0])
    if first.ndim != 2 or first.shape[0] != n_points or first.shape[1] < 3:
        raise DatasetFormatError(f"ModelNet cache '{path}': expected ({n_points}, 6) point arrays (N_POINTS: {n_points}), "
                                 f"got {first.shape}")
    for i, (pts, label) in enumerate(zip(points, labels)):
        pts = np.asarray(pts)
        if pts.shape != first.shape:
            raise DatasetFormatError(f"ModelNet cache '{path}': entry {i} has shape {pts.shape}, expected {first.shape} "
                                     f"as entry 0 (ragged cache; rebuild it)")
        if np.asarray(label).size != 1:
            raise DatasetFormatError(f"ModelNet cache '{path}': entry {i}: expected a (1,) label, got shape "
                                     f"{np.asarray(label).shape}")
        check_finite_points(pts, f"ModelNet cache '{path}', entry {i}")
    return points, labels


def build_modelnet_cache(root: str, split: str, npoints: int, num_category: int = 40,
                         use_normals: bool = True, batch_size: int = 64, device: Optional[str] = None,
                         out_path: Optional[str] = None, progress: bool = True) -> str:
    """Write ``<root>/modelnet{num_category}_{split}_{npoints}pts_fps.dat`` and return its path.

    Args:
        root: ``modelnet40_normal_resampled`` folder (shape names, split lists, ``<class>/<id>.txt``).
        split: 'train' or 'test'.
        npoints: points kept per shape by farthest point sampling (start index 0).
        num_category: 40 or 10 (selects the ``modelnet10_*`` list files).
        use_normals: kept for the released signature; the cache always stores all 6 columns,
            as released (the loader drops normals when ``USE_NORMALS`` is false).
        batch_size: shapes per FPS batch (shapes are grouped by equal row count).
        device: torch device for FPS; default CUDA when available, else CPU.
        out_path: override of the output file.
    """
    npoints = int(npoints)
    if split not in ("train", "test"):
        raise ValueError(f"build_modelnet_cache: split must be 'train' or 'test', got '{split}'")
    if num_category not in (10, 40):
        raise ValueError(f"build_modelnet_cache: num_category must be 10 or 40, got {num_category}")
    names = read_lines(os.path.join(root, f"modelnet{num_category}_shape_names.txt"))
    classes = {name: i for i, name in enumerate(names)}
    ids = read_lines(os.path.join(root, f"modelnet{num_category}_{split}.txt"))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    labels: List[np.ndarray] = []
    for shape_id in ids:
        cls = class_of_shape_id(shape_id)
        if cls not in classes:
            raise ValueError(f"{root}/modelnet{num_category}_{split}.txt: id '{shape_id}' has class '{cls}' "
                             f"not in modelnet{num_category}_shape_names.txt")
        labels.append(np.array([classes[cls]], dtype=np.int32))
    points: List[Optional[np.ndarray]] = [None] * len(ids)
    groups = defaultdict(list)
    shapes_by_index = {}
    bar = tqdm(total=len(ids), desc=f"modelnet{num_category} {split} FPS {npoints}", disable=not progress, leave=False)

    def flush(rows: int) -> None:
        idx = groups.pop(rows)
        data = np.stack([shapes_by_index[i] for i in idx])
        xyz = torch.from_numpy(data[:, :, :3]).to(device)
        threads = torch.get_num_threads()
        if device.type == "cpu":  # FPS is a loop of small ops: one CPU thread is much faster
            torch.set_num_threads(1)
        try:
            sel = furthest_point_sample(xyz, npoints, skip_origin=False).cpu().numpy()  # released numpy FPS: no skip rule
        finally:
            torch.set_num_threads(threads)
        for j, i in enumerate(idx):
            points[i] = np.ascontiguousarray(data[j][sel[j]], dtype=np.float32)
            del shapes_by_index[i]
        bar.update(len(idx))

    try:  # the bar is closed also on an error, whose message then starts on a line of its own
        for i, shape_id in enumerate(ids):
            cls = class_of_shape_id(shape_id)
            shape_file = os.path.join(root, cls, shape_id + ".txt")
            data = read_modelnet_txt(shape_file)
            if data.shape[0] < npoints:
                raise DatasetFormatError(
                    f"ModelNet shape file '{shape_file}' has {data.shape[0]} rows (points), fewer than the {npoints} "
                    f"points per shape the cache {cache_file_name(num_category, split, npoints)} keeps (N_POINTS); "
                    f"use a complete copy of the file, or a smaller N_POINTS")
            shapes_by_index[i] = data
            groups[data.shape[0]].append(i)
            if len(groups[data.shape[0]]) >= batch_size:
                flush(data.shape[0])
        for rows in list(groups):
            flush(rows)
    finally:
        bar.close()

    path = out_path or os.path.join(root, cache_file_name(num_category, split, npoints))
    atomic_write(path, lambda f: pickle.dump([points, labels], f))
    print_log(f"wrote {path} ({len(points)} shapes)", logger=library_logger("ModelNet"))
    return path


def load_modelnet_cache(cache_root: str, split: str, npoints: int, build: bool = True):
    """Released ModelNet40 cache ``[points list, labels list]``; built from the txt shapes if missing."""
    path = os.path.join(cache_root, cache_file_name(40, split, npoints))
    if not os.path.isfile(path) and not os.path.isfile(npz_twin(path)):
        if not build:
            raise FileNotFoundError(f"ModelNet40 cache '{path}' does not exist")
        build_modelnet_cache(cache_root, split, npoints, num_category=40)
    return load_cache(path, npoints)
