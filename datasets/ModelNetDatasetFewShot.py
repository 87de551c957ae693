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
from .common import DatasetFormatError, check_finite_points, dataset_schema, pc_normalize, require_path
from .safe_io import load_data_pickle, npz_twin, read_npz_arrays

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
        self.pickle_path = os.path.join(self.root, f"{self.way}way_{self.shot}shot", f"{self.fold}.pkl")
        if not os.path.isfile(npz_twin(self.pickle_path)):
            require_path(self.pickle_path, "ModelNetFewShot", LAYOUT)
        print_log(f"Load processed data from {self.pickle_path}...", logger=LOGGER)
        data = load_fewshot_file(self.pickle_path)
        if not isinstance(data, dict) or self.subset not in data:
            raise DatasetFormatError(f"'{self.pickle_path}': expected a dict with 'train' and 'test' lists")
        self.dataset = data[self.subset]
        source = npz_twin(self.pickle_path) if os.path.isfile(npz_twin(self.pickle_path)) else self.pickle_path
        if not isinstance(self.dataset, (list, tuple)):
            raise DatasetFormatError(f"'{source}' [{self.subset}]: expected a list of (points (N, 6), label, class), "
                                     f"got {type(self.dataset).__name__}")
        for i, item in enumerate(self.dataset):  # every item: __getitem__ must not fail on a later one
            check_fewshot_item(item, f"'{source}' [{self.subset}][{i}]", self.way)
        print_log(f"The size of {self.subset} data is {len(self.dataset)}", logger=LOGGER)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        points, label, _ = self.dataset[index]
        label = int(np.asarray(label).reshape(-1)[0])
        points = np.array(points, dtype=np.float32)
        points[:, 0:3] = pc_normalize(points[:, 0:3])
        if not self.use_normals:
            points = points[:, 0:3]
        if self.subset == "train":
            points = points[np.random.permutation(points.shape[0])]
        return "ModelNet", "sample", (torch.from_numpy(np.ascontiguousarray(points)), int(label))


FEWSHOT_NPZ_KEYS = ("points", "labels", "classes")  # per split: <split>_points (n, N, 6), _labels (n,), _classes (n,)


def load_fewshot_file(path: str) -> dict:
    """``{'train': [(points, label, class), ...], 'test': [...]}`` of a few-shot ``N.pkl``, through the
    restricted unpickler (:func:`datasets.safe_io.load_data_pickle`), or of its ``.npz``
    conversion beside it (``tools/convert_pickles.py``) when present."""
    twin = npz_twin(path)
    if not os.path.isfile(twin):
        return load_data_pickle(path, "few-shot split")
    names = [f"{split}_{key}" for split in ("train", "test") for key in FEWSHOT_NPZ_KEYS]
    arrays = read_npz_arrays(twin, "few-shot split", names)
    return {split: list(zip(arrays[f"{split}_points"], arrays[f"{split}_labels"].tolist(),
                            arrays[f"{split}_classes"].tolist())) for split in ("train", "test")}


def check_fewshot_item(item, where: str, way: int) -> None:
    """DatasetFormatError naming ``where`` unless ``item`` is ``(points (N, >=3) finite numbers, label
    in 0..way-1, class)``."""
    if not (isinstance(item, (tuple, list)) and len(item) == 3):
        raise DatasetFormatError(f"{where}: expected (points (N, 6), label, class)")
    points = np.asarray(item[0])
    if points.dtype.kind not in "biuf" or points.ndim != 2 or points.shape[0] == 0 or points.shape[1] < 3:
        raise DatasetFormatError(f"{where}: points are {points.dtype} {points.shape}, expected a numeric (N, 6) array")
    check_finite_points(points, where)
    label = np.asarray(item[1])
    if label.size != 1 or label.dtype.kind not in "iu" or not 0 <= int(label.reshape(-1)[0]) < way:
        raise DatasetFormatError(f"{where}: label {str(item[1])[:40]!r} is not an integer in 0..{way - 1}")


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
