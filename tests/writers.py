"""Tiny data in the released on-disk formats and tiny configs, written by the tests themselves
(independently of the project's loaders and of the demo generator)."""
from __future__ import annotations

import json
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
from easydict import EasyDict

def write_shapenet55(root: Path, n_train: int = 12, n_test: int = 4, n_points: int = 8192, seed: int = 0) -> Path:
    """ShapeNet-55 layout: ShapeNet-55/{train,test}.txt + shapenet_pc/<synset>-<model>.npy (8192, 3)."""
    rng = np.random.default_rng(seed)
    (root / "ShapeNet-55").mkdir(parents=True, exist_ok=True)
    (root / "shapenet_pc").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n_train + n_test):
        pts = rng.normal(size=(n_points, 3))
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
        pts *= np.array([1.0, 0.4 + 0.3 * (i % 3), 1.0]) * rng.uniform(0.5, 2.0)
        name = f"9000000{i % 3}-{i:06x}.npy"
        np.save(root / "shapenet_pc" / name, pts.astype(np.float32))
        names.append(name)
    (root / "ShapeNet-55" / "train.txt").write_text("\n".join(names[:n_train]) + "\n")
    (root / "ShapeNet-55" / "test.txt").write_text("\n".join(names[n_train:]) + "\n")
    return root


TINY_PRETRAIN = """
optimizer: {{type: AdamW, kwargs: {{lr: 0.001, weight_decay: 0.05}}}}
scheduler: {{type: CosLR, kwargs: {{epochs: {epochs}, initial_epochs: 1}}}}
dataset: {{
  train: {{_base_: cfgs/dataset_configs/ShapeNet-55.yaml,
          others: {{subset: train, npoints: 256, DATA_PATH: {root}/ShapeNet-55, PC_PATH: {root}/shapenet_pc}}}},
  val: {{_base_: cfgs/dataset_configs/ShapeNet-55.yaml,
        others: {{subset: test, npoints: 256, DATA_PATH: {root}/ShapeNet-55, PC_PATH: {root}/shapenet_pc}}}}}}
model: {{NAME: Inter_MAE, group_size: 16, num_group: 16, loss: cdl2,
  transformer_config: {{mask_ratio: 0.6, mask_type: rand, trans_dim: 32, encoder_dims: 32, depth: 2,
    drop_path_rate: 0.1, num_heads: 2, decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2}}}}
npoints: 256
total_bs: 4
step_per_update: 1
max_epoch: {epochs}
ckpt_period: 1
ckpt_from: 0
epoch_count: exact
"""


def write_tiny_pretrain_config(path: Path, data_root: Path, epochs: int = 2) -> Path:
    path.write_text(TINY_PRETRAIN.format(root=data_root, epochs=epochs))
    return path


CLASSES40 = [f"class{i:02d}_x" if i % 7 == 0 else f"cls{i:02d}" for i in range(40)]


def numpy_fps(xyz: np.ndarray, npoint: int, start: int = 0) -> np.ndarray:
    """Brute-force farthest point sampling (indices), as the released numpy loop, fixed start."""
    dist = np.full(xyz.shape[0], 1e10)
    out = np.zeros(npoint, dtype=np.int64)
    far = start
    for i in range(npoint):
        out[i] = far
        dist = np.minimum(dist, ((xyz - xyz[far]) ** 2).sum(-1))
        far = int(np.argmax(dist))
    return out


def write_modelnet(root: Path, ids_per_split=(("train", 6), ("test", 4)), n_rows: int = 120, cache_points: int = 0,
                   num_category: int = 40, seed: int = 0) -> dict:
    """modelnet40_normal_resampled layout; with ``cache_points`` also the released .dat caches
    (FPS from index 0). Returns {split: (list of (rows (n_rows, 6)), labels)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = CLASSES40[:num_category]
    (root / f"modelnet{num_category}_shape_names.txt").write_text("\n".join(names) + "\n")
    out = {}
    for split, n in ids_per_split:
        ids, rows_all, labels = [], [], []
        for i in range(n):
            label = (3 * i + (split == "test")) % num_category
            shape_id = f"{names[label]}_{i + (1000 if split == 'test' else 1):04d}"
            rows = rng.normal(size=(n_rows, 6)).astype(np.float32) * np.float32(1 + label)
            (root / names[label]).mkdir(exist_ok=True)
            np.savetxt(root / names[label] / f"{shape_id}.txt", rows, fmt="%.6f", delimiter=",")
            rows = np.loadtxt(root / names[label] / f"{shape_id}.txt", delimiter=",").astype(np.float32)
            ids.append(shape_id)
            rows_all.append(rows)
            labels.append(label)
        (root / f"modelnet{num_category}_{split}.txt").write_text("\n".join(ids) + "\n")
        if cache_points:
            pts = [r[numpy_fps(r[:, :3], cache_points)] for r in rows_all]
            lab = [np.array([l], dtype=np.int32) for l in labels]
            with open(root / f"modelnet{num_category}_{split}_{cache_points}pts_fps.dat", "wb") as f:
                pickle.dump([pts, lab], f)
            out[split] = (pts, labels)
        else:
            out[split] = (rows_all, labels)
    return out


def unit_sphere(xyz: np.ndarray) -> np.ndarray:
    c = xyz - xyz.mean(0)
    return c / np.sqrt((c ** 2).sum(1)).max()


def modelnet_cfg(root: Path, subset: str, n_points: int, normals: bool = False, num_category: int = 40) -> EasyDict:
    return EasyDict(NAME="ModelNet", DATA_PATH=str(root), N_POINTS=n_points, NUM_CATEGORY=num_category,
                    USE_NORMALS=normals, subset=subset)


TINY_FINETUNE = """
optimizer: {{type: AdamW, kwargs: {{lr: 0.001, weight_decay: 0.05}}}}
scheduler: {{type: CosLR, kwargs: {{epochs: {epochs}, initial_epochs: 1}}}}
dataset: {{
  train: {{_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {{subset: train, DATA_PATH: {root}, N_POINTS: 96}}}},
  val: {{_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {{subset: test, DATA_PATH: {root}, N_POINTS: 96}}}},
  test: {{_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {{subset: test, DATA_PATH: {root}, N_POINTS: 96}}}}}}
model: {{NAME: PointTransformer, trans_dim: 32, depth: 2, drop_path_rate: 0.1, cls_dim: 40, num_heads: 2,
        group_size: 8, num_group: 8, encoder_dims: 32, patch_embed: inter_mae}}
npoints: 64
total_bs: 4
step_per_update: 1
max_epoch: {epochs}
grad_norm_clip: 10
epoch_count: exact
"""


TINY_TC = dict(mask_ratio=0.5, mask_type="rand", trans_dim=32, encoder_dims=32, depth=2, drop_path_rate=0.1,
               num_heads=2, decoder_depth=1, decoder_num_heads=2)


# ShapeNetPart categories (synsetoffset2category.txt order) and their global part ids.
SEG_CLASSES = {
    "Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Cap": [6, 7], "Car": [8, 9, 10, 11], "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18], "Guitar": [19, 20, 21], "Knife": [22, 23], "Lamp": [24, 25, 26, 27], "Laptop": [28, 29],
    "Motorbike": [30, 31, 32, 33, 34, 35], "Mug": [36, 37], "Pistol": [38, 39, 40], "Rocket": [41, 42, 43],
    "Skateboard": [44, 45, 46], "Table": [47, 48, 49],
}
CATS = list(SEG_CLASSES)
SYNSETS = ["02691156", "02773838", "02954340", "02958343", "03001627", "03261776", "03467517", "03624134",
           "03636649", "03642806", "03790512", "03797390", "03948459", "04099429", "04225987", "04379243"]


def write_shapenetpart(root: Path, spec: dict, rows: int = 40, seed: int = 0) -> Path:
    """The released layout. ``spec`` = {category name: (n_train, n_val, n_test)}. Part j of a shape
    is a blob centred at x = 3 j, so parts are separable."""
    rng = np.random.default_rng(seed)
    (root / "train_test_split").mkdir(parents=True, exist_ok=True)
    (root / "synsetoffset2category.txt").write_text("".join(f"{n}\t{s}\n" for n, s in zip(CATS, SYNSETS)))
    lists = {"train": [], "val": [], "test": []}
    for name, counts in spec.items():
        synset = SYNSETS[CATS.index(name)]
        (root / synset).mkdir(exist_ok=True)
        parts = SEG_CLASSES[name]
        for split, n in zip(("train", "val", "test"), counts):
            for i in range(n):
                token = f"{split}{name.lower()}{i:03d}"
                labels = np.array(parts)[np.arange(rows) % len(parts)]
                xyz = rng.normal(scale=0.3, size=(rows, 3)) + np.stack([3.0 * (labels - parts[0]), 0 * labels, 0 * labels], 1)
                normals = rng.normal(size=(rows, 3))
                np.savetxt(root / synset / f"{token}.txt", np.column_stack([xyz, normals, labels]), fmt="%.6f")
                lists[split].append(f"shape_data/{synset}/{token}")
    for split, entries in lists.items():
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return root


SYSTEM = f"{os.system.__module__}.system"  # posix.system: how a pickle names os.system


class RunsCode:
    """Unpickling this object runs ``touch <marker>`` (as a downloaded .pth or data pickle could run anything)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)
