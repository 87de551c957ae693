"""Shared fixtures: the repository on sys.path, tiny data in the real formats, tiny configs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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


@pytest.fixture(scope="session")
def shapenet55_root(tmp_path_factory) -> Path:
    return write_shapenet55(tmp_path_factory.mktemp("ShapeNet55-34"))


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
"""


def write_tiny_pretrain_config(path: Path, data_root: Path, epochs: int = 2) -> Path:
    path.write_text(TINY_PRETRAIN.format(root=data_root, epochs=epochs))
    return path
