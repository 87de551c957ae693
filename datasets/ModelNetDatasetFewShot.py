"""Few-shot ModelNet40 (``ModelNetFewshot/{way}way_{shot}shot/{fold}.pkl``, Point-BERT release)."""
from __future__ import annotations

import logging
import os
import pickle
from typing import List, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.checkpoint import atomic_write
from utils.logger import library_logger, print_log

from .build import DATASETS
from .common import DatasetFormatError, dataset_schema, pc_normalize, require_path

LOGGER = library_logger("ModelNetFewShot")

LAYOUT = """  <DATA_PATH>/{way}way_{shot}shot/{fold}.pkl   ways 5/10, shots 10/20, folds 0-9
  each a pickled dict {'train': [...], 'test': [...]} of tuples
  (float32 (N, 6) points, label 0..way-1, original ModelNet40 class)"""


@DATASETS.register_module()
class ModelNetFewShot(Dataset):
    """Item: ``('ModelNet', 'sample', (points (N, 3 or 6) float32, label in 0..way-1))``.

    ``way``, ``shot``, ``fold`` come from main.py's ``--way --shot --fold``.
    """

    config_schema = dataset_schema(required=("DATA_PATH", "N_POINTS", "NUM_CATEGORY", "USE_NORMALS", "subset"),
                                   optional=("way", "shot", "fold"))

    def __init__(self, config):
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
        print_log(f"Load processed data from {self.pickle_path}...", logger=LOGGER)
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
        print_log(f"The size of {self.subset} data is {len(self.dataset)}", logger=LOGGER)

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


def _pick(rng: np.random.Generator, pool: np.ndarray, k: int, what: str) -> np.ndarray:
    if len(pool) == 0:
        raise ValueError(f"few-shot: no {what} samples")
    if len(pool) < k:
        logging.getLogger("make_fewshot").warning("few-shot: only %d %s samples, need %d: sampling with replacement", len(pool), what, k)
        return rng.choice(pool, k, replace=True)
    return rng.choice(pool, k, replace=False)


def make_fewshot_splits(train_points: Sequence[np.ndarray], train_labels: Sequence, test_points: Sequence[np.ndarray],
                        test_labels: Sequence, out_dir: str, ways: Sequence[int] = (5, 10), shots: Sequence[int] = (10, 20),
                        folds: int = 10, seed: int = 0, n_test_per_class: int = 20) -> List[str]:
    """Write ``out_dir/{way}way_{shot}shot/{fold}.pkl`` for every way, shot and fold < ``folds``.

    Per file (seeded by ``(seed, way, shot, fold)``, so every file is deterministic on its own; a
    negative ``seed`` draws from fresh OS entropy, unrepeatable, as the released unseeded
    ``random.shuffle`` in ``datasets/generate_few_shot_data.py``):
    ``way`` distinct classes are drawn among those present in both splits; label = position in
    that draw; then ``shot`` train shapes per class from the train set and ``n_test_per_class``
    test shapes per class from the test set, without replacement. A class with fewer shapes
    than needed is sampled WITH replacement (a warning is logged) -- only small demo sets hit this.

    Args:
        train_points / test_points: float32 (N, 6) arrays; train_labels / test_labels: ints or (1,) arrays.
    Returns:
        the written paths.
    """
    # one float32 array object per shape, so that pickle stores a shape drawn twice only once
    train_points = [np.asarray(p, dtype=np.float32) for p in train_points]
    test_points = [np.asarray(p, dtype=np.float32) for p in test_points]
    tr_lab = np.array([int(np.asarray(x).reshape(-1)[0]) for x in train_labels])
    te_lab = np.array([int(np.asarray(x).reshape(-1)[0]) for x in test_labels])
    classes = np.intersect1d(np.unique(tr_lab), np.unique(te_lab))
    written = []
    for way in ways:
        if way > len(classes):
            raise ValueError(f"few-shot: way={way} but only {len(classes)} classes have train and test samples")
        for shot in shots:
            folder = os.path.join(out_dir, f"{way}way_{shot}shot")
            os.makedirs(folder, exist_ok=True)
            for fold in range(folds):
                rng = np.random.default_rng(None if seed < 0 else [seed, way, shot, fold])
                chosen = rng.choice(classes, way, replace=False)
                data = {"train": [], "test": []}
                for new_label, cls in enumerate(chosen):
                    for split, lab, pts, k in (("train", tr_lab, train_points, shot),
                                               ("test", te_lab, test_points, n_test_per_class)):
                        for i in _pick(rng, np.flatnonzero(lab == cls), k, f"{split} class {cls}"):
                            data[split].append((pts[i], new_label, int(cls)))
                path = os.path.join(folder, f"{fold}.pkl")
                atomic_write(path, lambda f, data=data: pickle.dump(data, f))
                written.append(path)
    return written
