"""Few-shot ModelNet40 splits in the released layout: ``{way}way_{shot}shot/{fold}.pkl``.

Each pickle is a dict ``{'train': [...], 'test': [...]}`` of tuples
``(points float32 (N, 6), label in 0..way-1, original ModelNet40 class index)``.

    python tools/make_fewshot.py --cache_root data/ModelNet/modelnet40_normal_resampled \
        --out data/ModelNetFewshot --seed 0 [--ways 5 10] [--shots 10 20] [--folds 10] [--npoints 1024]

reads (or builds) the ModelNet40 train/test caches ``modelnet40_{train,test}_{npoints}pts_fps.dat``.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import tempfile
from typing import List, Sequence

import numpy as np

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger("make_fewshot")

__all__ = ["make_fewshot_splits", "load_modelnet_cache", "main"]


def _pick(rng: np.random.Generator, pool: np.ndarray, k: int, what: str) -> np.ndarray:
    if len(pool) == 0:
        raise ValueError(f"few-shot: no {what} samples")
    if len(pool) < k:
        logger.warning("few-shot: only %d %s samples, need %d: sampling with replacement", len(pool), what, k)
        return rng.choice(pool, k, replace=True)
    return rng.choice(pool, k, replace=False)


def make_fewshot_splits(train_points: Sequence[np.ndarray], train_labels: Sequence, test_points: Sequence[np.ndarray],
                        test_labels: Sequence, out_dir: str, ways: Sequence[int] = (5, 10), shots: Sequence[int] = (10, 20),
                        folds: int = 10, seed: int = 0, n_test_per_class: int = 20) -> List[str]:
    """Write ``out_dir/{way}way_{shot}shot/{fold}.pkl`` for every way, shot and fold < ``folds``.

    Per file (seeded by ``(seed, way, shot, fold)``, so every file is deterministic on its own):
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
                rng = np.random.default_rng([seed, way, shot, fold])
                chosen = rng.choice(classes, way, replace=False)
                data = {"train": [], "test": []}
                for new_label, cls in enumerate(chosen):
                    for split, lab, pts, k in (("train", tr_lab, train_points, shot),
                                               ("test", te_lab, test_points, n_test_per_class)):
                        for i in _pick(rng, np.flatnonzero(lab == cls), k, f"{split} class {cls}"):
                            data[split].append((pts[i], new_label, int(cls)))
                path = os.path.join(folder, f"{fold}.pkl")
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".pkl")
                with os.fdopen(fd, "wb") as f:
                    pickle.dump(data, f)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
                written.append(path)
    return written


def load_modelnet_cache(cache_root: str, split: str, npoints: int, build: bool = True):
    """Released ModelNet40 cache ``[points list, labels list]``; built from the txt shapes if missing."""
    path = os.path.join(cache_root, f"modelnet40_{split}_{npoints}pts_fps.dat")
    if not os.path.isfile(path):
        if not build:
            raise FileNotFoundError(f"ModelNet40 cache '{path}' does not exist")
        from datasets.modelnet_cache import build_modelnet_cache
        build_modelnet_cache(cache_root, split, npoints, num_category=40)
    with open(path, "rb") as f:
        points, labels = pickle.load(f)
    return points, labels


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache_root", required=True, help="modelnet40_normal_resampled folder")
    ap.add_argument("--out", required=True, help="output ModelNetFewshot folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ways", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--shots", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--npoints", type=int, default=1024)
    ap.add_argument("--n_test_per_class", type=int, default=20)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    trp, trl = load_modelnet_cache(args.cache_root, "train", args.npoints)
    tep, tel = load_modelnet_cache(args.cache_root, "test", args.npoints)
    paths = make_fewshot_splits(trp, trl, tep, tel, args.out, args.ways, args.shots, args.folds, args.seed,
                                args.n_test_per_class)
    logger.info("few-shot: wrote %d files under %s", len(paths), args.out)


if __name__ == "__main__":
    main()
