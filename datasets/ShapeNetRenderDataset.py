"""ShapeNetRender (CrossPoint's release): point clouds + 24 rendered views per shape, SPEC §5.

This module reads the points; the rendered views feed the image branch.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .build import DATASETS
from .common import DatasetFormatError, check_dataset_keys, pc_norm, random_subset, require_path

LAYOUT = """  <DATA_PATH>/ShapeNet/<synset>/<model>.ply                       (x, y, z vertices, >= N_POINTS)
  <DATA_PATH>/ShapeNetRendering/<synset>/<model>/rendering/00.png .. 23.png   (137x137 RGBA)
  optional <DATA_PATH>/<subset>.txt with lines '<synset>/<model>' (default: every shape is 'train')"""


@DATASETS.register_module()
class ShapeNetRender(Dataset):
    """Item: (taxonomy_id, model_id, points (npoints, 3) float32): the first N_POINTS points of
    the PLY, a random ``npoints`` of them, unit-sphere normalised."""

    def __init__(self, config):
        check_dataset_keys(config, "ShapeNetRender", required=("DATA_PATH", "N_POINTS", "subset", "npoints"))
        self.data_root = config.DATA_PATH
        self.subset = config.subset
        self.npoints = config.N_POINTS
        self.sample_points_num = config.npoints
        pc_root = os.path.join(self.data_root, "ShapeNet")
        require_path(pc_root, "ShapeNetRender", LAYOUT)
        split_file = os.path.join(self.data_root, f"{self.subset}.txt")
        if os.path.isfile(split_file):
            names = [ln.strip() for ln in open(split_file) if ln.strip()]
        elif self.subset == "train":
            names = sorted(os.path.relpath(p, pc_root)[:-4] for p in glob.glob(os.path.join(pc_root, "*", "*.ply")))
        else:
            raise DatasetFormatError(f"ShapeNetRender: subset '{self.subset}' needs the split file {split_file}; "
                                     f"without one, all shapes form the 'train' subset. Expected layout:\n{LAYOUT}")
        self.file_list = []
        for name in names:
            parts = name.split("/")
            if len(parts) != 2:
                raise DatasetFormatError(f"ShapeNetRender: entry '{name}' is not '<synset>/<model>'")
            self.file_list.append({"taxonomy_id": parts[0], "model_id": parts[1],
                                   "ply": os.path.join(pc_root, parts[0], parts[1] + ".ply")})
        if not self.file_list:
            raise DatasetFormatError(f"ShapeNetRender: no '<synset>/<model>.ply' files under {pc_root}. Expected layout:\n{LAYOUT}")

    def __len__(self) -> int:
        return len(self.file_list)

    def load_points(self, idx: int) -> np.ndarray:
        from .io import read_ply

        sample = self.file_list[idx]
        points = read_ply(sample["ply"])
        if points.shape[0] < self.npoints:
            raise DatasetFormatError(f"{sample['ply']}: {points.shape[0]} points, expected at least N_POINTS={self.npoints}")
        points = random_subset(points[: self.npoints], self.sample_points_num)
        return pc_norm(points).astype(np.float32)

    def __getitem__(self, idx: int):
        sample = self.file_list[idx]
        return sample["taxonomy_id"], sample["model_id"], torch.from_numpy(self.load_points(idx))
