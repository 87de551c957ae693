"""ModelNet40 in the ``modelnet40_ply_hdf5_2048`` HDF5 format: the data of the released linear-SVM
protocol (``datasets/ModelNetDataset.py``: ``load_modelnet_data`` / ``ModelNet40SVM``).

Layout (PointNet's release)::

    <DATA_PATH>/ply_data_train0.h5 .. ply_data_train4.h5
    <DATA_PATH>/ply_data_test0.h5, ply_data_test1.h5
    HDF5 keys: data (n, 2048, 3) float, label (n, 1) or (n,) int

As released: every ``ply_data_<subset>*.h5`` file of the folder is read (here in sorted order; the
release took ``glob``'s order), a cloud is its first ``npoints`` points (no sampling, no
normalisation: the files are already in the unit sphere), labels come from the files, and
``NUM_CATEGORY: 10`` keeps the shapes of the ten ModelNet10 classes with their ModelNet40 labels.
"""
from __future__ import annotations

import glob
import os
from typing import List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.logger import library_logger, print_log

from .build import DATASETS
from .common import DatasetFormatError, dataset_schema, first_non_finite, require_path
from .safe_io import open_h5, read_h5_dataset

LAYOUT = """  <DATA_PATH> = .../modelnet40_ply_hdf5_2048
  <DATA_PATH>/ply_data_train*.h5, <DATA_PATH>/ply_data_test*.h5
  HDF5 keys: data (n, P, 3) float with P >= npoints, label (n, 1) or (n,) int in 0..39"""

# ModelNet40 labels of the ModelNet10 classes (bathtub, bed, chair, desk, dresser, monitor,
# night_stand, sofa, table, toilet), as the released load_modelnet_data filters them.
MODELNET10_LABELS = (1, 2, 8, 12, 14, 22, 23, 30, 33, 35)


def h5_files(root: str, subset: str) -> List[str]:
    """The ``ply_data_<subset>*.h5`` files of ``root``, sorted; an error naming the folder if none."""
    require_path(root, "ModelNet40SVM", LAYOUT)
    files = sorted(glob.glob(os.path.join(root, f"ply_data_{subset}*.h5")))
    if not files:
        raise DatasetFormatError(f"ModelNet40SVM: no 'ply_data_{subset}*.h5' file in '{root}'. Expected layout:\n{LAYOUT}")
    return files


def read_modelnet_h5(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """One file -> (points (n, P, 3) float32, labels (n,) int64), checked."""
    try:
        with open_h5(path, "ModelNet40SVM") as h5:
            points = np.asarray(read_h5_dataset(h5, "data", path), dtype=np.float32)
            labels = np.asarray(read_h5_dataset(h5, "label", path))
    except DatasetFormatError as e:
        raise DatasetFormatError(f"{e}. Expected layout:\n{LAYOUT}") from None
    except (OSError, KeyError, ValueError) as e:  # truncated or malformed
        raise DatasetFormatError(f"{path}: not a readable HDF5 file ({e}). Expected layout:\n{LAYOUT}") from None
    if points.ndim != 3 or points.shape[2] != 3:
        raise DatasetFormatError(f"{path}: 'data' must be (n, P, 3), got {points.shape}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != points.shape[0]:
        raise DatasetFormatError(f"{path}: 'label' must be (n, 1) or (n,) with n = {points.shape[0]}, got {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= 40):
        raise DatasetFormatError(f"{path}: labels must be in 0..39, found {labels.min()}..{labels.max()}")
    bad = first_non_finite(points)  # NaN, Inf, or a float64 value beyond float32 (read as Inf)
    if bad is not None:
        raise DatasetFormatError(f"{path}: cloud {bad[0]} has a non-finite coordinate {points[bad]} at point {bad[1]}")
    return points, labels


@DATASETS.register_module()
class ModelNet40SVM(Dataset):
    """Item: ``('ModelNet', 'sample', (points (npoints, 3) float32, label int64))``: the first
    ``npoints`` points of each cloud of the ``subset`` (train / test) files, as released."""

    config_schema = dataset_schema(required=("DATA_PATH", "subset", "npoints"), optional=("NUM_CATEGORY",))

    def __init__(self, config):
        self.root = config.DATA_PATH
        self.subset = config.subset
        if self.subset not in ("train", "test"):
            raise DatasetFormatError(f"ModelNet40SVM: subset must be 'train' or 'test', got '{self.subset}'")
        self.npoints = int(config.npoints)
        num_category = int(config.get("NUM_CATEGORY", 40))
        if num_category not in (10, 40):
            raise DatasetFormatError(f"ModelNet40SVM: NUM_CATEGORY must be 40 or 10, got {num_category}")
        self.files = h5_files(self.root, self.subset)
        parts = [read_modelnet_h5(path) for path in self.files]
        points = np.concatenate([p for p, _ in parts], axis=0)
        labels = np.concatenate([l for _, l in parts], axis=0)
        if points.shape[1] < self.npoints:
            raise DatasetFormatError(f"ModelNet40SVM: the clouds of '{self.root}' have {points.shape[1]} points, "
                                     f"fewer than npoints={self.npoints}")
        if num_category == 10:
            keep = np.isin(labels, MODELNET10_LABELS)
            points, labels = points[keep], labels[keep]
        self.points = np.ascontiguousarray(points[:, : self.npoints])
        self.labels = labels
        print_log(f"ModelNet40SVM {self.subset}: {len(self.labels)} shapes x {self.npoints} points from "
                  f"{len(self.files)} file(s) in {self.root}", logger=library_logger("ModelNet40SVM"))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int):
        return "ModelNet", "sample", (torch.from_numpy(self.points[idx]), torch.tensor(self.labels[idx]))
