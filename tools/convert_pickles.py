"""Convert the released pickle data files to .npz beside them (read instead of the pickle from then on).

    python tools/convert_pickles.py data/ModelNet/modelnet40_normal_resampled/modelnet40_*_8192pts_fps.dat
    python tools/convert_pickles.py data/ModelNetFewshot   # every {way}way_{shot}shot/{fold}.pkl below it

A ModelNet cache ``modelnet40_<split>_<N>pts_fps.dat`` becomes ``modelnet40_<split>_<N>pts_fps.npz``
with ``points`` (S, N, 6) float32 and ``labels`` (S, 1) int32; a few-shot ``<fold>.pkl`` becomes
``<fold>.npz`` with ``train_points`` (n, N, 6), ``train_labels`` (n,), ``train_classes`` (n,) and
the same for ``test``. The pickles are read through the same restricted unpickler as the loaders
(a file that would run code is refused); the ``.npz`` files hold no pickle at all, so they can be
shared and loaded without that risk. The loaders (``ModelNet``, ``ModelNetFewShot``,
``tools/make_fewshot.py``, ``tools/svm.py``) read the ``.npz`` when it lies beside the pickle.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

import numpy as np  # noqa: E402

from datasets.common import DatasetFormatError  # noqa: E402
from datasets.safe_io import load_data_pickle, npz_twin, write_npz  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.parser import new_parser  # noqa: E402

LOG = logging.getLogger("convert_pickles")


def _stack(arrays: list, path: str, what: str, dtype) -> np.ndarray:
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1:
        raise DatasetFormatError(f"'{path}': the {what} have different shapes {sorted(shapes)[:4]}; cannot stack them")
    return np.stack([np.asarray(a, dtype=dtype) for a in arrays])


def convert_cache(path: str) -> str:
    """A ModelNet ``.dat`` -> its ``.npz`` twin; returns the written path."""
    data = load_data_pickle(path, "ModelNet cache")
    if not (isinstance(data, (list, tuple)) and len(data) == 2 and len(data[0]) == len(data[1]) and len(data[0])):
        raise DatasetFormatError(f"ModelNet cache '{path}': expected [list of points, list of labels] of equal length")
    points = _stack(list(data[0]), path, "point arrays", np.float32)
    labels = np.array([int(np.asarray(x).reshape(-1)[0]) for x in data[1]], dtype=np.int32).reshape(-1, 1)
    out = npz_twin(path)
    write_npz(out, {"points": points, "labels": labels})
    return out


def convert_fewshot(path: str) -> str:
    """A few-shot ``.pkl`` -> its ``.npz`` twin; returns the written path."""
    data = load_data_pickle(path, "few-shot split")
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in ("train", "test")):
        raise DatasetFormatError(f"few-shot split '{path}': expected a dict with 'train' and 'test' lists")
    arrays = {}
    for split in ("train", "test"):
        items = data[split]
        if not all(isinstance(it, (tuple, list)) and len(it) == 3 for it in items):
            raise DatasetFormatError(f"few-shot split '{path}' [{split}]: expected (points, label, class) tuples")
        arrays[f"{split}_points"] = _stack([it[0] for it in items], path, f"{split} point arrays", np.float32)
        arrays[f"{split}_labels"] = np.array([int(np.asarray(it[1]).reshape(-1)[0]) for it in items], dtype=np.int64)
        arrays[f"{split}_classes"] = np.array([int(np.asarray(it[2]).reshape(-1)[0]) for it in items], dtype=np.int64)
    out = npz_twin(path)
    write_npz(out, arrays)
    return out


def targets(paths: List[str]) -> List[str]:
    """The ``.dat`` / ``.pkl`` files named, and those below the folders named (sorted)."""
    found = []
    for p in paths:
        if os.path.isdir(p):
            for cur, dirs, files in os.walk(p):
                dirs.sort()
                found += [os.path.join(cur, f) for f in sorted(files) if f.endswith((".dat", ".pkl"))]
        elif p.endswith((".dat", ".pkl")):
            found.append(p)
        else:
            raise DatasetFormatError(f"'{p}': expected a .dat / .pkl file or a folder holding them")
    if not found:
        raise DatasetFormatError(f"no .dat / .pkl file in {' '.join(paths)}")
    return found


def build_parser():
    ap = new_parser(__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="FILE_OR_DIR",
                    help="ModelNet .dat caches, few-shot .pkl files, or folders holding them (recursive)")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in targets(args.paths):
        out = convert_cache(path) if path.endswith(".dat") else convert_fewshot(path)
        LOG.info("%s -> %s", path, out)


if __name__ == "__main__":
    run_main(main)
