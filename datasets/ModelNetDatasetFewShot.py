"""Few-shot ModelNet40 (``ModelNetFewshot/{way}way_{shot}shot/{fold}.pkl``, Point-BERT release), SPEC §5."""
from __future__ import annotations

import os
import pickle

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.logger import print_log

from .build import DATASETS
from .common import DatasetFormatError, check_dataset_keys, pc_normalize, require_path

LAYOUT = """  <DATA_PATH>/{way}way_{shot}shot/{fold}.pkl   ways 5/10, shots 10/20, folds 0-9
  each a pickled dict {'train': [...], 'test': [...]} of tuples
  (float32 (N, 6) points, label 0..way-1, original ModelNet40 class)"""


@DATASETS.register_module()
class ModelNetFewShot(Dataset):
    """Item: ``('ModelNet', 'sample', (points (N, 3 or 6) float32, label in 0..way-1))``.

    ``way``, ``shot``, ``fold`` come from main.py's ``--way --shot --fold``.
    """

    def __init__(self, config):
        check_dataset_keys(config, "ModelNetFewShot",
                           required=("DATA_PATH", "N_POINTS", "NUM_CATEGORY", "USE_NORMALS", "subset"),
                           optional=("way", "shot", "fold"))
        self.root = config.DATA_PATH
        self.npoints = int(config.N_POINTS)
        self.use_normals = bool(config.USE_NORMALS)
        self.subset = config.subset
        self.way, self.shot, self.fold = (int(config.get(k, -1)) for k in ("way", "shot", "fold"))
        if -1 in (self.way, self.shot, self.fold):
            raise DatasetFormatError("ModelNetFewShot needs --way, --shot and --fold on the command line "
                                     f"(got way={self.way}, shot={self.shot}, fold={self.fold})")
        if self.subset not in ("train", "test"):
            raise DatasetFormatError(f"ModelNetFewShot: subset must be 'train' or 'test', got '{self.subset}'")
        self.pickle_path = require_path(os.path.join(self.root, f"{self.way}way_{self.shot}shot", f"{self.fold}.pkl"),
                                        "ModelNetFewShot", LAYOUT)
        print_log(f"Load processed data from {self.pickle_path}...", logger="ModelNetFewShot")
        with open(self.pickle_path, "rb") as f:
            try:
                data = pickle.load(f)
            except Exception as e:
                raise DatasetFormatError(f"'{self.pickle_path}' could not be unpickled: {type(e).__name__}: {e}") from None
        if not isinstance(data, dict) or self.subset not in data:
            raise DatasetFormatError(f"'{self.pickle_path}': expected a dict with 'train' and 'test' lists")
        self.dataset = data[self.subset]
        for i, item in enumerate(self.dataset[:1]):
            if not (isinstance(item, (tuple, list)) and len(item) == 3 and np.asarray(item[0]).ndim == 2):
                raise DatasetFormatError(f"'{self.pickle_path}' [{self.subset}][{i}]: expected (points (N, 6), label, class)")
        bad = [int(item[1]) for item in self.dataset if not 0 <= int(item[1]) < self.way]
        if bad:
            raise DatasetFormatError(f"'{self.pickle_path}': labels must be in 0..{self.way - 1}, found {sorted(set(bad))}")
        print_log(f"The size of {self.subset} data is {len(self.dataset)}", logger="ModelNetFewShot")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        points, label, _ = self.dataset[index]
        points = np.array(points, dtype=np.float32)
        points[:, 0:3] = pc_normalize(points[:, 0:3])
        if not self.use_normals:
            points = points[:, 0:3]
        if self.subset == "train":
            points = points[np.random.permutation(points.shape[0])]
        return "ModelNet", "sample", (torch.from_numpy(np.ascontiguousarray(points)), int(label))
