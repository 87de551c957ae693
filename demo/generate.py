"""Write the procedural demo datasets in the released on-disk formats (``tools/make_demo_data.py``).

Datasets (:data:`DATASETS` names) and where they go under ``root``:

* ``shapenet55``      ShapeNet55-34/ShapeNet-55/{train,test}.txt, ShapeNet55-34/shapenet_pc/<synset>-<model>.npy
* ``shapenet_render`` ShapeNetRender/ShapeNet/<synset>/<model>.ply and
                      ShapeNetRender/ShapeNetRendering/<synset>/<model>/rendering/{00..23}.png (+ txt files)
* ``modelnet``        ModelNet/modelnet40_normal_resampled/ (txt shapes, lists, FPS caches)
* ``fewshot``         ModelNetFewshot/{way}way_{shot}shot/{fold}.pkl (from the ModelNet40 caches)
* ``shapenetpart``    shapenetcore_partanno_segmentation_benchmark_v0_normal/
* ``scanobjectnn``    ScanObjectNN/main_split{,_nobg}/*.h5

Every shape is a procedural surface (:mod:`demo.shapes`) sampled uniformly by area; each class
maps to its own family / proportion regime, so the classes are learnable. Sizes are demo sizes
(ModelNet txt files hold 1200 rows by default, the real ones 10,000; the real 10 few-shot folds
are reduced to 2 by default). A dataset folder is complete when its ``.complete`` marker exists;
one without the marker (an interrupted run) is deleted and regenerated. Deterministic given the seed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datasets.ModelNetDatasetFewShot import make_fewshot_splits
from datasets.common import pc_normalize
from datasets.io import write_ply
from datasets.modelnet_cache import build_modelnet_cache, load_modelnet_cache
from datasets.safe_io import load_data_pickle
from datasets.render import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, default_view_grid, render_views
from demo import shapes as P
from utils.checkpoint import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["generate", "make_shapenet55", "make_shapenet_render", "make_modelnet", "make_fewshot_from_cache",
           "make_scanobjectnn", "make_shapenetpart", "DATASETS", "MARKER", "MODELNET40_CLASSES",
           "MODELNET10_CLASSES", "SHAPENET_CLASSES", "SHAPENETPART_CATEGORIES", "SCANOBJECTNN_CLASSES"]

MARKER = ".complete"

# ShapeNet-55 / ShapeNetRender demo classes: (synset-like id, procedural family), one per family of
# demo.shapes (the twelve primitives first, then the object families), so that the pre-training
# corpus covers the families of the ModelNet40 classes, as the real ShapeNet covers ModelNet's.
# Measured (seed 0, 600 pre-training steps): pre-training on the twelve primitives alone gave frozen
# features that a linear SVM separated worse than those of an untrained encoder on the 40 classes;
# pre-training on every family, better (59 % against 48 %).
_PRIMITIVES = ["sphere", "ellipsoid", "box", "cylinder", "cone", "torus", "capsule", "pyramid", "plate", "ring", "helix",
               "table"]
SHAPENET_CLASSES: List[Tuple[str, str]] = [
    (f"9{i:07d}", fam) for i, fam in enumerate(_PRIMITIVES + sorted(set(P.FAMILIES) - set(_PRIMITIVES)))]

# ModelNet40 class -> (family, proportion range of the family knob).
MODELNET40_CLASSES: Dict[str, Tuple[str, Tuple[float, float]]] = {
    "airplane": ("airplane", (0, 1)), "bathtub": ("sink", (0.0, 0.3)), "bed": ("bed", (0, 1)),
    "bench": ("bench", (0, 1)), "bookshelf": ("shelf", (0, 1)), "bottle": ("bottle", (0, 1)),
    "bowl": ("bowl", (0, 1)), "car": ("car", (0, 1)), "chair": ("chair", (0, 1)), "cone": ("cone", (0.3, 1)),
    "cup": ("cup", (0, 1)), "curtain": ("curtain", (0, 1)), "desk": ("table", (0.0, 0.4)), "door": ("door", (0, 1)),
    "dresser": ("box", (0.55, 0.7)), "flower_pot": ("flower_pot", (0, 1)), "glass_box": ("frame", (0, 1)),
    "guitar": ("guitar", (0, 1)), "keyboard": ("keyboard", (0, 1)), "lamp": ("lamp", (0, 1)),
    "laptop": ("laptop", (0, 1)), "mantel": ("arch", (0, 1)), "monitor": ("monitor", (0, 1)),
    "night_stand": ("box", (0.3, 0.45)), "person": ("person", (0, 1)), "piano": ("piano", (0, 1)),
    "plant": ("flower_pot", (0.8, 1.0)), "radio": ("radio", (0, 1)), "range_hood": ("range_hood", (0, 1)),
    "sink": ("sink", (0.6, 1.0)), "sofa": ("sofa", (0, 1)), "stairs": ("stairs", (0, 1)), "stool": ("stool", (0, 1)),
    "table": ("table", (0.6, 1.0)), "tent": ("tent", (0, 1)), "toilet": ("toilet", (0, 1)),
    "tv_stand": ("box", (0.0, 0.15)), "vase": ("vase", (0, 1)), "wardrobe": ("box", (0.85, 1.0)),
    "xbox": ("capsule", (0, 0.5)),
}
MODELNET10_CLASSES = ["bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet"]

# ShapeNetPart: (name, synset, first global part id, number of parts), in synsetoffset2category.txt order.
SHAPENETPART_CATEGORIES: List[Tuple[str, str, int, int]] = [
    ("Airplane", "02691156", 0, 4), ("Bag", "02773838", 4, 2), ("Cap", "02954340", 6, 2), ("Car", "02958343", 8, 4),
    ("Chair", "03001627", 12, 4), ("Earphone", "03261776", 16, 3), ("Guitar", "03467517", 19, 3),
    ("Knife", "03624134", 22, 2), ("Lamp", "03636649", 24, 4), ("Laptop", "03642806", 28, 2),
    ("Motorbike", "03790512", 30, 6), ("Mug", "03797390", 36, 2), ("Pistol", "03948459", 38, 3),
    ("Rocket", "04099429", 41, 3), ("Skateboard", "04225987", 44, 3), ("Table", "04379243", 47, 3),
]

# ScanObjectNN's 15 classes (label = index) -> (family, proportion range).
SCANOBJECTNN_CLASSES: List[Tuple[str, str, Tuple[float, float]]] = [
    ("bag", "bag", (0, 1)), ("bin", "cup", (0.3, 1)), ("box", "box", (0.2, 0.5)), ("cabinet", "box", (0.8, 1.0)),
    ("chair", "chair", (0, 1)), ("desk", "table", (0, 0.4)), ("display", "monitor", (0, 1)), ("door", "door", (0, 1)),
    ("shelf", "shelf", (0, 1)), ("table", "table", (0.6, 1)), ("bed", "bed", (0, 1)), ("pillow", "ellipsoid", (0, 0.25)),
    ("sink", "sink", (0, 1)), ("sofa", "sofa", (0, 1)), ("toilet", "toilet", (0, 1)),
]

_TAG = {"shapenet55": 1, "shapenet_render": 2, "modelnet": 3, "fewshot": 4, "shapenetpart": 5, "scanobjectnn": 6}
MODELNET_DIR = os.path.join("ModelNet", "modelnet40_normal_resampled")  # under the demo root


# ----------------------------------------------------------------------------- helpers

def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _token(seed: int, *keys) -> str:
    """32-hex-digit model id (ShapeNet style), deterministic."""
    return hashlib.md5("-".join(map(str, (seed,) + keys)).encode()).hexdigest()


def _place(pts: np.ndarray, nrm: np.ndarray, rng: np.random.Generator, y_up: bool,
           noise: float) -> Tuple[np.ndarray, np.ndarray]:
    """Optionally turn to ShapeNet's y-up frame, normalise into the unit sphere, add clipped noise."""
    if y_up:
        pts, nrm = P.z_up_to_y_up(pts), P.z_up_to_y_up(nrm)
    # pc_normalize keeps the input dtype (float64 after _family_shape's scaling): the clouds are float32
    pts = pc_normalize(pts).astype(np.float32)
    if noise > 0:
        pts = P.jitter(pts, rng, sigma=noise, clip=4 * noise)
    return pts, nrm.astype(np.float32)


def _family_shape(family: str, n: int, rng: np.random.Generator, p_range=(0.0, 1.0), y_up: bool = False,
                  noise: float = 0.002, texture: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(n,3) unit-sphere points (slight random anisotropic size, noise, optional surface texture of
    :data:`demo.shapes.TEXTURES`) and (n,3) normals (of the untextured surface)."""
    pts, nrm = P.sample_family(family, n, rng, p_range=p_range)
    s = rng.uniform(0.9, 1.1, size=3)
    pts = pts * s
    nrm = nrm / s
    nrm = nrm / np.linalg.norm(nrm, axis=1, keepdims=True)
    pts, nrm = _place(pts, nrm, rng, y_up, noise)
    if texture is not None:
        pts = P.apply_texture(pts, nrm, texture, rng)
    return pts, nrm


def _random_texture(rng: np.random.Generator) -> str:
    return str(rng.choice(sorted(P.TEXTURES)))


def _modelnet_shape(cls: str, n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A shape of ModelNet40 class ``cls``: its family and proportions (:data:`MODELNET40_CLASSES`),
    untextured. (Classes told apart by surface texture alone were tried and dropped: at the demo's
    512 points neither pre-trained nor untrained features separated them, 14 % for 10 classes.)"""
    fam, p_range = MODELNET40_CLASSES[cls]
    return _family_shape(fam, n, rng, p_range=p_range)


def _begin(folder: str, force: bool) -> bool:
    """True when ``folder`` must be (re)generated; clears an incomplete or forced one."""
    if os.path.isfile(os.path.join(folder, MARKER)) and not force:
        return False
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    return True


def _finish(folder: str, info: dict) -> dict:
    with open(os.path.join(folder, MARKER), "w") as f:
        json.dump(info, f, sort_keys=True)
    return info


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def _test_count(n: int, test_frac: float = 0.2) -> int:
    """Number of test items among n (at least 1 when n >= 2)."""
    return max(1 if n >= 2 else 0, int(round(n * test_frac)))


def _split_of(i: int, n: int, n_test: int, n_val: int = 0) -> str:
    """Split of item ``i`` of ``n``: the last ``n_test`` are test, the ``n_val`` before them val."""
    return "test" if i >= n - n_test else ("val" if i >= n - n_test - n_val else "train")


def _object_mask(n_obj: int, n_bg: int) -> np.ndarray:
    """ScanObjectNN ``mask`` row: 1 for the object's points, 0 for the background's."""
    return np.r_[np.ones(n_obj, np.int64), np.zeros(n_bg, np.int64)]


# ----------------------------------------------------------------------------- ShapeNet-55

def make_shapenet55(root: str, seed: int = 0, shapes_per_class: int = 3, n_points: int = 8192,
                    force: bool = False) -> Optional[dict]:
    """ShapeNet55-34/ShapeNet-55/{train,test}.txt and shapenet_pc/<synset>-<model>.npy float32 (n_points, 3).

    The last 20 % of each class form the test list. Returns a summary dict, or None when skipped."""
    base = os.path.join(root, "ShapeNet55-34")
    if not _begin(base, force):
        return None
    os.makedirs(os.path.join(base, "ShapeNet-55"))
    pc_dir = os.path.join(base, "shapenet_pc")
    os.makedirs(pc_dir)
    lists: Dict[str, List[str]] = {"train": [], "test": []}
    n_test = _test_count(shapes_per_class)
    for c, (synset, fam) in enumerate(tqdm(SHAPENET_CLASSES, desc="ShapeNet-55", leave=False)):
        for i in range(shapes_per_class):
            rng = _rng(seed, _TAG["shapenet55"], c, i)
            pts, _ = _family_shape(fam, n_points, rng, y_up=True, texture=_random_texture(rng))
            name = f"{synset}-{_token(seed, 'sn55', c, i)}.npy"
            np.save(os.path.join(pc_dir, name), pts)
            lists[_split_of(i, shapes_per_class, n_test)].append(name)
    for split, names in lists.items():
        _write_lines(os.path.join(base, "ShapeNet-55", f"{split}.txt"), names)
    return _finish(base, {"dataset": "ShapeNet-55", "train": len(lists["train"]), "test": len(lists["test"]),
                          "classes": len(SHAPENET_CLASSES)})


# ----------------------------------------------------------------------------- ShapeNetRender

def make_shapenet_render(root: str, seed: int = 0, shapes_per_class: int = 8, n_points: int = 2048,
                         image_size: int = 64, n_views: int = 24, batch_size: int = 8,
                         force: bool = False) -> Optional[dict]:
    """The pre-training corpus: ``shapes_per_class`` shapes of each :data:`SHAPENET_CLASSES` family,
    each with a random surface texture (:data:`demo.shapes.TEXTURES`), in the released layout.
    Views are rendered at ``image_size`` (the real renderings are 137 px; the demo's image encoder
    reads 64 px, and rendering at that size halves the generation time).

    ShapeNetRender/ShapeNet/<synset>/<model>.ply (binary PLY, x y z) and
    ShapeNetRender/ShapeNetRendering/<synset>/<model>/rendering/{00..}.png (RGBA, transparent
    background) + renderings.txt + rendering_metadata.txt (``azimuth elevation 0 distance fov``;
    distance in units of the unit-sphere-normalised object)."""
    base = os.path.join(root, "ShapeNetRender")
    if not _begin(base, force):
        return None
    az, el = default_view_grid(n_views)
    names = [f"{v:02d}.png" for v in range(n_views)]
    meta = [f"{a:.6f} {e:.6f} 0.000000 {DEFAULT_DISTANCE:.6f} {DEFAULT_FOV_DEG:.6f}" for a, e in zip(az.tolist(), el.tolist())]
    jobs = [(c, synset, fam, i) for c, (synset, fam) in enumerate(SHAPENET_CLASSES) for i in range(shapes_per_class)]
    bar = tqdm(total=len(jobs), desc="ShapeNetRender", leave=False)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start: start + batch_size]
        clouds, normals = [], []
        for c, synset, fam, i in chunk:
            rng = _rng(seed, _TAG["shapenet_render"], c, i)
            pts, nrm = _family_shape(fam, n_points, rng, y_up=True, texture=_random_texture(rng))
            clouds.append(pts)
            normals.append(nrm)
        imgs = render_views(torch.from_numpy(np.stack(clouds)), torch.from_numpy(np.stack(normals)), az, el,
                            image_size=image_size)
        imgs = (imgs.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8).numpy()  # B,V,H,W,4
        for b, (c, synset, fam, i) in enumerate(chunk):
            model = _token(seed, "render", c, i)
            os.makedirs(os.path.join(base, "ShapeNet", synset), exist_ok=True)
            write_ply(os.path.join(base, "ShapeNet", synset, model + ".ply"), clouds[b])
            rdir = os.path.join(base, "ShapeNetRendering", synset, model, "rendering")
            os.makedirs(rdir, exist_ok=True)
            for v in range(n_views):
                Image.fromarray(imgs[b, v], "RGBA").save(os.path.join(rdir, names[v]), compress_level=1)
            _write_lines(os.path.join(rdir, "renderings.txt"), names)
            _write_lines(os.path.join(rdir, "rendering_metadata.txt"), meta)
        bar.update(len(chunk))
    bar.close()
    return _finish(base, {"dataset": "ShapeNetRender", "shapes": len(jobs), "views": n_views, "image_size": image_size})


# ----------------------------------------------------------------------------- ModelNet40

def make_modelnet(root: str, seed: int = 0, train_per_class: int = 8, test_per_class: int = 16, n_rows: int = 1200,
                  cache_points: Sequence[int] = (1024,), force: bool = False) -> Optional[dict]:
    """ModelNet/modelnet40_normal_resampled/: shape names, split lists (40 and 10), ``<class>/<id>.txt``
    with ``n_rows`` rows ``x,y,z,nx,ny,nz`` (real data: 10,000; demo default 1200), and the FPS caches
    ``modelnet{40,10}_{train,test}_{N}pts_fps.dat`` for N in ``cache_points`` (each <= n_rows).
    The demo default is few labels and a larger test split: 8 training shapes per class for the
    fine-tuning, 16 test shapes per class so that one ModelNet10 test shape is 0.6 accuracy points."""
    bad = [n for n in cache_points if n > n_rows]
    if bad:
        raise ValueError(f"make_modelnet: cache of {bad} points needs n_rows >= {max(bad)} (got n_rows={n_rows})")
    base = os.path.join(root, MODELNET_DIR)
    if not _begin(base, force):
        return None
    names = sorted(MODELNET40_CLASSES)
    _write_lines(os.path.join(base, "modelnet40_shape_names.txt"), names)
    _write_lines(os.path.join(base, "modelnet10_shape_names.txt"), MODELNET10_CLASSES)
    splits: Dict[str, List[str]] = {"train": [], "test": []}
    ids10: Dict[str, List[str]] = {"train": [], "test": []}
    for c, cls in enumerate(tqdm(names, desc="ModelNet40", leave=False)):
        os.makedirs(os.path.join(base, cls))
        for i in range(train_per_class + test_per_class):
            pts, nrm = _modelnet_shape(cls, n_rows, _rng(seed, _TAG["modelnet"], c, i))
            shape_id = f"{cls}_{i + 1:04d}"
            np.savetxt(os.path.join(base, cls, shape_id + ".txt"), np.concatenate([pts, nrm], 1), fmt="%.6f", delimiter=",")
            split = "train" if i < train_per_class else "test"
            splits[split].append(shape_id)
            if cls in MODELNET10_CLASSES:
                ids10[split].append(shape_id)
    for split in splits:
        _write_lines(os.path.join(base, f"modelnet40_{split}.txt"), splits[split])
        _write_lines(os.path.join(base, f"modelnet10_{split}.txt"), ids10[split])
    remap = {names.index(c): np.int32(i) for i, c in enumerate(MODELNET10_CLASSES)}
    for n in cache_points:
        for split in ("train", "test"):
            path = build_modelnet_cache(base, split, n, num_category=40, progress=False)
            # the ModelNet10 cache holds the same FPS samples (FPS is deterministic): select, relabel
            pts40, lab40 = load_data_pickle(path, "ModelNet cache")
            keep = [k for k, lab in enumerate(lab40) if int(lab[0]) in remap]
            if len(keep) != len(ids10[split]):
                raise RuntimeError(f"{path}: {len(keep)} ModelNet10 shapes, expected {len(ids10[split])}")
            pts10 = [pts40[k] for k in keep]
            lab10 = [np.array([remap[int(lab40[k][0])]], dtype=np.int32) for k in keep]
            atomic_write(os.path.join(base, f"modelnet10_{split}_{n}pts_fps.dat"),
                         lambda f: pickle.dump([pts10, lab10], f))
    return _finish(base, {"dataset": "ModelNet40", "train": len(splits["train"]), "test": len(splits["test"]),
                          "rows": n_rows, "caches": list(cache_points)})


def make_fewshot_from_cache(root: str, seed: int = 0, ways: Sequence[int] = (5, 10), shots: Sequence[int] = (10, 20),
                            folds: int = 2, npoints: int = 1024, force: bool = False) -> Optional[dict]:
    """ModelNetFewshot/{way}way_{shot}shot/{fold}.pkl from the ModelNet40 ``npoints`` caches under
    ``root/ModelNet/modelnet40_normal_resampled`` (built if missing; run :func:`make_modelnet` first).
    The demo has fewer shapes per class than shots + 20 test: those classes are sampled with replacement."""
    cache_root = os.path.join(root, MODELNET_DIR)
    if not os.path.isdir(cache_root):
        raise FileNotFoundError(f"few-shot: '{cache_root}' does not exist; generate ModelNet40 first (--only modelnet)")
    base = os.path.join(root, "ModelNetFewshot")
    if not _begin(base, force):
        return None
    trp, trl = load_modelnet_cache(cache_root, "train", npoints)
    tep, tel = load_modelnet_cache(cache_root, "test", npoints)
    fewshot_logger = logging.getLogger("make_fewshot")
    level = fewshot_logger.level
    fewshot_logger.setLevel(logging.ERROR)  # replacement warnings are expected on demo sizes
    try:
        paths = make_fewshot_splits(trp, trl, tep, tel, base, ways, shots, folds, seed)
    finally:
        fewshot_logger.setLevel(level)
    return _finish(base, {"dataset": "ModelNetFewshot", "files": len(paths), "ways": list(ways), "shots": list(shots),
                          "folds": folds})


# ----------------------------------------------------------------------------- ShapeNetPart

def make_shapenetpart(root: str, seed: int = 0, shapes_per_class: int = 6, n_points: int = 2600,
                      force: bool = False) -> Optional[dict]:
    """shapenetcore_partanno_segmentation_benchmark_v0_normal/ with all 16 categories: labelled
    procedural objects, rows ``x y z nx ny nz part`` (global part id as a float), JSON split lists
    (about 70 % train, 10 % val, 20 % test per category). Every other category has one more test
    shape (the real categories differ in size), so the class mIoU (mean over categories) and the
    instance mIoU (mean over shapes) weigh the shapes differently."""
    base = os.path.join(root, "shapenetcore_partanno_segmentation_benchmark_v0_normal")
    if not _begin(base, force):
        return None
    _write_lines(os.path.join(base, "synsetoffset2category.txt"), [f"{n}\t{s}" for n, s, _, _ in SHAPENETPART_CATEGORIES])
    lists: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    for c, (name, synset, first, n_parts) in enumerate(tqdm(SHAPENETPART_CATEGORIES, desc="ShapeNetPart", leave=False)):
        os.makedirs(os.path.join(base, synset))
        count = shapes_per_class + c % 2  # every other category has one more test shape
        n_test = _test_count(shapes_per_class) + c % 2
        n_val = 1 if count - n_test >= 3 else 0
        for i in range(count):
            rng = _rng(seed, _TAG["shapenetpart"], c, i)
            pts, nrm, lab = P.sample_part_object(name, n_points, rng)
            pts, nrm = _place(pts, nrm, rng, y_up=True, noise=0.002)
            token = _token(seed, "part", c, i)[:16]
            rows = np.concatenate([pts, nrm, (lab + first)[:, None].astype(np.float32)], 1)
            np.savetxt(os.path.join(base, synset, token + ".txt"), rows, fmt="%.6f", delimiter=" ")
            lists[_split_of(i, count, n_test, n_val)].append(f"shape_data/{synset}/{token}")
    os.makedirs(os.path.join(base, "train_test_split"))
    for split, entries in lists.items():
        order = _rng(seed, _TAG["shapenetpart"], 999, len(split)).permutation(len(entries))
        with open(os.path.join(base, "train_test_split", f"shuffled_{split}_file_list.json"), "w") as f:
            json.dump([entries[k] for k in order], f)
    return _finish(base, {"dataset": "ShapeNetPart", **{k: len(v) for k, v in lists.items()}, "points": n_points})


# ----------------------------------------------------------------------------- ScanObjectNN

def _scan_object(family: str, p_range, n: int, rng: np.random.Generator) -> np.ndarray:
    pts, _ = _family_shape(family, n, rng, p_range=p_range, noise=0.0)
    pts = pts - [0, 0, pts[:, 2].min()]  # stand on the floor z = 0
    pts, _ = P.apply_pose(pts, None, P.random_rotation_z(rng))
    return P.jitter(pts, rng, sigma=0.008, clip=0.03)  # sensor noise


def _background(n: int, rng: np.random.Generator, obj: np.ndarray) -> np.ndarray:
    """Floor patch around the object plus one or two clutter boxes."""
    lo, hi = obj.min(0), obj.max(0)
    ext = (hi - lo)[:2] / 2 + 0.35
    c = (hi + lo)[:2] / 2
    n_floor = int(n * rng.uniform(0.5, 0.8))
    floor = np.concatenate([c + rng.uniform(-ext, ext, size=(n_floor, 2)), rng.normal(0, 0.005, size=(n_floor, 1))], 1)
    patches = []
    for _ in range(int(rng.integers(1, 3))):
        size = rng.uniform(0.15, 0.5, size=3)
        ang = rng.uniform(0, 2 * np.pi)
        pos = np.r_[c + (np.abs(ext) + 0.1) * [np.cos(ang), np.sin(ang)], size[2] / 2]
        patches += P.box(size, pos)
    clutter, _, _ = P.sample_patches(patches, n - n_floor, rng)
    return P.jitter(np.concatenate([floor, clutter]).astype(np.float32), rng, 0.008, 0.03)


def _perturb(obj: np.ndarray, bg: np.ndarray, n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """PB_T50_RS-style: translate up to 50 % of the extent, crop by a random plane, rotate about
    the up axis, scale up to 25 % down; returns (n,3) points and (n,) mask."""
    pts = np.concatenate([obj, bg])
    mask = _object_mask(len(obj), len(bg))
    ext = obj.max(0) - obj.min(0)
    pts = pts + rng.uniform(-0.5, 0.5, size=3) * ext * [1, 1, 0]
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    proj = (obj - obj.mean(0)) @ d
    cut = np.quantile(proj, rng.uniform(0.75, 0.95))
    keep = ((pts - obj.mean(0)) @ d) <= cut
    pts, mask = pts[keep], mask[keep]
    idx = rng.choice(len(pts), n, replace=len(pts) < n)
    pts, mask = pts[idx], mask[idx]
    pts, _ = P.apply_pose(pts, None, P.random_rotation_z(rng), scale=float(rng.uniform(0.75, 1.0)))
    return pts, mask


def _write_h5(path: str, data: np.ndarray, label: np.ndarray, mask: np.ndarray) -> None:
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=data.astype(np.float32))
        f.create_dataset("label", data=label.astype(np.int64))
        f.create_dataset("mask", data=mask.astype(np.int64), compression="gzip")  # 0/1: compresses well
    os.replace(tmp, path)


def make_scanobjectnn(root: str, seed: int = 0, train_per_class: int = 6, test_per_class: int = 4, n_points: int = 2048,
                      hardest_copies: int = 2, force: bool = False) -> Optional[dict]:
    """ScanObjectNN/main_split/{training,test}_objectdataset.h5 (OBJ-BG: object + floor / clutter),
    main_split_nobg/ (OBJ-ONLY) and main_split/*_augmentedrot_scale75.h5 (PB_T50_RS: ``hardest_copies``
    perturbed copies per training object, one per test object). Keys ``data`` float32 (n, n_points, 3),
    ``label`` int64 (n,), ``mask`` int64 (n, n_points) 1 object / 0 background. The clouds are
    unit-sphere normalised (OBJ-ONLY, OBJ-BG) or left as perturbed (PB_T50_RS)."""
    base = os.path.join(root, "ScanObjectNN")
    if not _begin(base, force):
        return None
    for sub in ("main_split", "main_split_nobg"):
        os.makedirs(os.path.join(base, sub))
    counts = {}
    for split, per_class, offset in (("training", train_per_class, 0), ("test", test_per_class, 1000)):
        bg_d, bg_m, only_d, hard_d, hard_m, labels, hard_labels = [], [], [], [], [], [], []
        for c, (_, fam, p_range) in enumerate(tqdm(SCANOBJECTNN_CLASSES, desc=f"ScanObjectNN {split}", leave=False)):
            for i in range(per_class):
                rng = _rng(seed, _TAG["scanobjectnn"], c, offset + i)
                obj = _scan_object(fam, p_range, n_points, rng)
                only_d.append(pc_normalize(obj))
                n_obj = int(n_points * rng.uniform(0.6, 0.85))
                bg = _background(n_points - n_obj, rng, obj)
                pts = np.concatenate([obj[:n_obj], bg])
                m = _object_mask(n_obj, len(bg))
                order = rng.permutation(n_points)
                bg_d.append(pc_normalize(pts[order]))
                bg_m.append(m[order])
                labels.append(c)
                for _ in range(hardest_copies if split == "training" else 1):
                    hp, hm = _perturb(obj, _background(n_points // 3, rng, obj), n_points, rng)
                    hard_d.append(hp)
                    hard_m.append(hm)
                    hard_labels.append(c)
        lab = np.array(labels, np.int64)
        _write_h5(os.path.join(base, "main_split", f"{split}_objectdataset.h5"), np.stack(bg_d), lab, np.stack(bg_m))
        _write_h5(os.path.join(base, "main_split_nobg", f"{split}_objectdataset.h5"), np.stack(only_d), lab,
                  np.ones((len(lab), n_points), np.int64))
        _write_h5(os.path.join(base, "main_split", f"{split}_objectdataset_augmentedrot_scale75.h5"), np.stack(hard_d),
                  np.array(hard_labels, np.int64), np.stack(hard_m))
        counts[split] = len(lab)
        counts[f"{split}_hardest"] = len(hard_labels)
    return _finish(base, {"dataset": "ScanObjectNN", **counts})


# ----------------------------------------------------------------------------- all

MAKERS = {"shapenet55": make_shapenet55, "shapenet_render": make_shapenet_render, "modelnet": make_modelnet,
          "fewshot": make_fewshot_from_cache, "shapenetpart": make_shapenetpart, "scanobjectnn": make_scanobjectnn}
DATASETS = tuple(MAKERS)  # in generation order: few-shot reads the ModelNet40 caches


def _size_overrides(shapes_per_class: Optional[int]) -> Dict[str, dict]:
    """Per-dataset shape-count keyword arguments for k = ``shapes_per_class`` training shapes per
    class (test counts about k / 2; datasets with a single count per class get k + k / 2)."""
    if shapes_per_class is None:
        return {}
    k = shapes_per_class
    half = max(1, k // 2)
    return {"shapenet55": {"shapes_per_class": k + half}, "shapenet_render": {"shapes_per_class": k},
            "modelnet": {"train_per_class": k, "test_per_class": half},
            "shapenetpart": {"shapes_per_class": k + half},
            "scanobjectnn": {"train_per_class": k, "test_per_class": half}}


def generate(root: str, seed: int = 0, only: Optional[Sequence[str]] = None, force: bool = False,
             shapes_per_class: Optional[int] = None, modelnet_rows: int = 1200, cache_points: Sequence[int] = (1024,),
             fewshot_folds: int = 2) -> Dict[str, Optional[dict]]:
    """Generate the selected datasets (all of :data:`DATASETS` by default) under ``root``; returns
    name -> summary (None for a dataset skipped because it was already complete; ``force``
    regenerates it). ``shapes_per_class`` overrides the per-class training shape count of every
    dataset (test counts follow at about half)."""
    only = list(only or DATASETS)
    unknown = [n for n in only if n not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    sizes = _size_overrides(shapes_per_class)
    options = {name: dict(sizes.get(name, {}), force=force) for name in DATASETS}
    options["modelnet"].update(n_rows=modelnet_rows, cache_points=cache_points)
    if "fewshot" in only:
        options["fewshot"].update(folds=fewshot_folds, npoints=min(cache_points))
    t0 = time.time()
    out = {}
    for name in DATASETS:
        if name in only:
            t = time.time()
            out[name] = MAKERS[name](root, seed, **options[name])
            logger.info("%-16s %s", name, "already complete (use --force to regenerate)" if out[name] is None
                        else f"{json.dumps(out[name], sort_keys=True)} in {time.time() - t:.1f}s")
    logger.info("demo data under %s done in %.1fs", root, time.time() - t0)
    return out
