"""Procedural labelled objects in the formats of a part-segmentation folder (``tools/make_part_folder.py``).

Object types (:data:`OBJECT_TYPES`), each with its parts; the part ids are global (the order of
:data:`PART_NAMES`), as a user labelling several object types with one label set would have them:

* ``lamp``: base (0), pole (1), shade (2)
* ``table``: top (3), leg (4)
* ``mug``: body (5), handle (6)

Each object is sampled uniformly by area on analytic surfaces (:mod:`demo.shapes`) with random
proportions, size, rotation about the vertical axis, a little noise and a point count that varies
by +-20 %, then written in one of :data:`FORMATS`, in turn: binary PLY with an ``int label``
property, ascii PLY with a float ``scalar_Label`` (what CloudCompare writes), ``x y z label``
text, CSV with a header, ``.npy`` (N, 4) and ``.npz`` ``points`` + ``labels``. Deterministic given
the seed.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from datasets.labelled_io import write_labelled_ply
from demo import shapes as P
from utils.checkpoint import atomic_write

PART_NAMES = ["base", "pole", "shade", "top", "leg", "body", "handle"]
FORMATS = ("ply", "ply-ascii", "txt", "csv", "npy", "npz")


def _lamp(rng: np.random.Generator) -> List[P.Patch]:
    h = rng.uniform(0.8, 1.6)
    rb = rng.uniform(0.25, 0.4)
    out = P.label(P.cylinder(rb, rng.uniform(0.05, 0.1), centered=False), 0)
    out += P.label(P.cylinder(rng.uniform(0.025, 0.045), h, caps=False, centered=False), 1)
    r_low, r_high, hs = rng.uniform(0.35, 0.55), rng.uniform(0.12, 0.25), rng.uniform(0.3, 0.45)
    out += P.label(P.frustum(r_low, r_high, hs, h - 0.6 * hs), 2)
    return out


def _table(rng: np.random.Generator) -> List[P.Patch]:
    lx, ly, hl, t, w = rng.uniform(0.8, 1.1), rng.uniform(0.45, 0.8), rng.uniform(0.5, 1.0), 0.06, rng.uniform(0.05, 0.1)
    out = P.label(P.box((2 * lx, 2 * ly, t), (0, 0, hl + t / 2)), 3)
    for sx in (1, -1):
        for sy in (1, -1):
            out += P.label(P.box((w, w, hl), (sx * (lx - w), sy * (ly - w), hl / 2)), 4)
    return out


def _mug(rng: np.random.Generator) -> List[P.Patch]:
    r, h = rng.uniform(0.35, 0.5), rng.uniform(0.6, 1.2)
    ri = r - 0.04
    body = (P.frustum(r, r, h) + P.flip(P.frustum(ri, ri, h - 0.04, 0.04)) + P.annulus(0, r, 0, False)
            + P.annulus(0, ri, 0.04, True) + P.annulus(ri, r, h, True))
    hr = min(0.3, h / 3)
    handle = P.move(P.torus(hr, rng.uniform(0.04, 0.07), (-math.pi / 2, math.pi / 2)), R=P.rot_axis(0, 90),
                    t=(r - 0.02, 0, h / 2))
    return P.label(body, 5) + P.label(handle, 6)


OBJECT_TYPES: Dict[str, Tuple[Callable[[np.random.Generator], List[P.Patch]], List[int]]] = {
    "lamp": (_lamp, [0, 1, 2]), "table": (_table, [3, 4]), "mug": (_mug, [5, 6]),
}


def sample_object(kind: str, n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One labelled object of type ``kind``: points (n, 3) float32 (z up, rotated about z, scaled,
    noisy), global part ids (n,) int64."""
    builder, _ = OBJECT_TYPES[kind]
    points, _, labels = P.sample_patches(builder(rng), n, rng)
    R = P.random_rotation_z(rng)
    points, _ = P.apply_pose(points, None, R, scale=float(rng.uniform(0.6, 1.5)), t=rng.normal(0, 0.3, 3))
    return P.jitter(points, rng, sigma=0.004), labels


def write_object(path: str, points: np.ndarray, labels: np.ndarray, fmt: str) -> str:
    """Write one object as ``<path>.<ext>`` in format ``fmt`` (:data:`FORMATS`); returns the file."""
    if fmt == "ply":
        write_labelled_ply(path + ".ply", points, labels, label_name="label", label_type="int", binary=True)
        return path + ".ply"
    if fmt == "ply-ascii":
        write_labelled_ply(path + ".ply", points, labels.astype(np.float32), label_name="scalar_Label",
                           label_type="float", binary=False)
        return path + ".ply"
    if fmt in ("txt", "csv"):
        rows = np.concatenate([points.astype(np.float64), labels[:, None].astype(np.float64)], 1)
        sep, head = (" ", "") if fmt == "txt" else (",", "x,y,z,label\n")

        def write(f):
            f.write(head.encode("ascii"))
            np.savetxt(f, rows, fmt=["%.6f", "%.6f", "%.6f", "%d"], delimiter=sep)
        atomic_write(f"{path}.{fmt}", write)
        return f"{path}.{fmt}"
    if fmt == "npy":
        table = np.concatenate([points, labels[:, None].astype(np.float32)], 1)
        atomic_write(path + ".npy", lambda f: np.save(f, table))
        return path + ".npy"
    if fmt == "npz":
        atomic_write(path + ".npz", lambda f: np.savez(f, points=points, labels=labels.astype(np.int32)))
        return path + ".npz"
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def make_part_folder(root: str, seed: int = 0, per_type: int = 12, n_points: int = 2048,
                     types: Sequence[str] = tuple(OBJECT_TYPES), categories: bool = True, split_dirs: bool = False,
                     test_share: float = 0.25, formats: Sequence[str] = FORMATS, part_names: bool = True) -> Dict[str, int]:
    """Write ``per_type`` objects of each type under ``root`` (made if needed): in ``<type>/``
    subfolders with ``categories``, under ``train/`` and ``test/`` (``test_share`` of each type)
    with ``split_dirs``, in the ``formats`` in turn; ``labels.txt`` names the parts with
    ``part_names``. Returns {file extension: files written}."""
    unknown = [t for t in types if t not in OBJECT_TYPES]
    if unknown:
        raise ValueError(f"unknown object type(s) {unknown}; known: {sorted(OBJECT_TYPES)}")
    os.makedirs(root, exist_ok=True)
    written: Dict[str, int] = {}
    k = 0
    for t_index, kind in enumerate(types):
        n_test = int(round(test_share * per_type)) if split_dirs else 0
        for i in range(per_type):
            rng = np.random.default_rng([seed, t_index, i])
            n = int(n_points * rng.uniform(0.8, 1.2))
            points, labels = sample_object(kind, n, rng)
            parts = ([("test" if i < n_test else "train")] if split_dirs else []) + ([kind] if categories else [])
            folder = os.path.join(root, *parts)
            os.makedirs(folder, exist_ok=True)
            path = write_object(os.path.join(folder, f"{kind}_{i:03d}"), points, labels, formats[k % len(formats)])
            k += 1
            ext = os.path.splitext(path)[1]
            written[ext] = written.get(ext, 0) + 1
    if part_names:
        used = sorted({p for kind in types for p in OBJECT_TYPES[kind][1]})
        if used != list(range(len(used))):  # a subset of the types: the ids must stay 0..K-1
            raise ValueError(f"types {list(types)} use parts {used}; with part_names they must be 0..K-1")
        text = "".join(f"{PART_NAMES[p]}\n" for p in used)
        atomic_write(os.path.join(root, "labels.txt"), lambda f: f.write(text.encode("ascii")))
    return written
