"""ScanObjectNN (released HDF5 files): OBJ-BG, OBJ-ONLY and PB_T50_RS ("hardest")."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.schema import ConfigError, origin_of
from utils.logger import library_logger, print_log

from .build import DATASETS
from .common import DatasetFormatError, dataset_schema, first_non_finite, require_path
from .safe_io import open_h5, read_h5_dataset

LAYOUT = """  <DATA_PATH> = .../main_split (OBJ-BG, PB_T50_RS) or .../main_split_nobg (OBJ-ONLY)
  <DATA_PATH>/{training,test}_objectdataset.h5                      (OBJ-BG / OBJ-ONLY)
  <DATA_PATH>/{training,test}_objectdataset_augmentedrot_scale75.h5  (PB_T50_RS)
  HDF5 keys: data (n, 2048, 3) float, label (n,) int, mask (n, 2048) (unused)"""

NUM_CLASSES = 15


def read_h5(path: str):
    """-> (points (n, P, 3) float32, labels (n,) int64), checked."""
    require_path(path, "ScanObjectNN", LAYOUT)
    try:
        with open_h5(path, "ScanObjectNN") as h5:
            points = read_h5_dataset(h5, "data", path).astype(np.float32)
            labels = read_h5_dataset(h5, "label", path).astype(np.int64).reshape(-1)
    except DatasetFormatError:
        raise
    except (OSError, KeyError, ValueError) as e:  # truncated or not HDF5: h5py raises OSError
        raise DatasetFormatError(f"{path}: not a readable HDF5 file (truncated or malformed?): "
                                 f"{type(e).__name__}: {e}") from None
    if points.ndim != 3 or points.shape[2] != 3:
        raise DatasetFormatError(f"{path}: 'data' must be (n, P, 3), got {points.shape}")
    if labels.shape[0] != points.shape[0]:
        raise DatasetFormatError(f"{path}: {points.shape[0]} clouds but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetFormatError(f"{path}: labels must be in 0..{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    bad = first_non_finite(points)
    if bad is not None:
        raise DatasetFormatError(f"{path}: cloud {bad[0]} has a non-finite coordinate {points[bad]} at point {bad[1]}")
    return points, labels


_warned_root: set = set()


def data_path_of(config, dataset: str) -> str:
    """``DATA_PATH`` of a ScanObjectNN config, or its deprecated alias ``ROOT`` (one log line)."""
    if config.get("DATA_PATH") is not None:
        return config.DATA_PATH
    if config.get("ROOT") is not None:
        if dataset not in _warned_root:
            _warned_root.add(dataset)
            print_log(f"{dataset}: the key ROOT is deprecated; name the folder DATA_PATH, as for every dataset",
                      logger=library_logger(dataset))
        return config.ROOT
    raise ConfigError(f"missing key '{dataset}.DATA_PATH' (the main_split / main_split_nobg folder)", origin_of(config))


class _ScanObjectNNBase(Dataset):
    """Item: ``('ScanObjectNN', 'sample', (points (2048, 3) float32, label int))``; not normalised,
    point order shuffled for training (as released)."""

    suffix = ""
    dataset_name = "ScanObjectNN"

    # DATA_PATH, as every dataset; ROOT (the released name) is a deprecated alias.
    config_schema = dataset_schema(required=("subset",), optional=("DATA_PATH", "ROOT"))

    def __init__(self, config):
        self.root = data_path_of(config, self.dataset_name)
        self.subset = config.subset
        if self.subset not in ("train", "test"):
            raise DatasetFormatError(f"{self.dataset_name}: subset must be 'train' or 'test', got '{self.subset}'")
        prefix = "training" if self.subset == "train" else "test"
        self.path = os.path.join(self.root, f"{prefix}_objectdataset{self.suffix}.h5")
        self.points, self.labels = read_h5(self.path)
        print_log(f"Successfully load {self.dataset_name} shape of {self.points.shape} from {self.path}",
                  logger=library_logger(self.dataset_name))

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, idx: int):
        current = self.points[idx]
        if self.subset == "train":
            current = current[np.random.permutation(current.shape[0])]
        return "ScanObjectNN", "sample", (torch.from_numpy(np.ascontiguousarray(current)), int(self.labels[idx]))


@DATASETS.register_module()
class ScanObjectNN(_ScanObjectNNBase):
    """OBJ-BG (``DATA_PATH: .../main_split``) or OBJ-ONLY (``DATA_PATH: .../main_split_nobg``)."""


@DATASETS.register_module()
class ScanObjectNN_hardest(_ScanObjectNNBase):
    """PB_T50_RS: ``{training,test}_objectdataset_augmentedrot_scale75.h5`` in ``main_split``."""

    suffix = "_augmentedrot_scale75"
    dataset_name = "ScanObjectNN_hardest"
