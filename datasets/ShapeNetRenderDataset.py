"""ShapeNetRender (CrossPoint's release): point clouds + 24 rendered views per shape.

Items carry the points and, with ``n_imgs > 0``, views for the image branch (datasets/views.py).
"""
from __future__ import annotations

import glob
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .build import DATASETS
from .common import DatasetFormatError, dataset_schema, pc_normalize, random_subset, require_path
from .views import VIEW_KEYS, FeatureCache, check_view_config, choose_views, load_view, project_views, rendered_view_paths

LAYOUT = """  <DATA_PATH>/ShapeNet/<synset>/<model>.ply                       (x, y, z vertices, >= N_POINTS)
  <DATA_PATH>/ShapeNetRendering/<synset>/<model>/rendering/00.png .. 23.png   (137x137 RGBA)
  with split: file, <DATA_PATH>/<subset>.txt with lines '<synset>/<model>' (a missing train.txt: every shape)"""
# ``split``: which shapes a subset holds. ``all`` (default, as the released load_shapenet_data, which
# globs every shape and ignores ``subset``): every <synset>/<model>.ply, whatever the subset. ``file``:
# the shapes listed in <DATA_PATH>/<subset>.txt; without that file 'train' is every shape and any
# other subset is an error (pre-training then skips validation with one log line).
SPLITS = ("all", "file")


@DATASETS.register_module()
class ShapeNetRender(Dataset):
    """Item: (taxonomy_id, model_id, data). Points are the first N_POINTS points of the PLY, a
    random ``npoints`` of them, unit-sphere normalised, (npoints, 3) float32.

    ``n_imgs == 0``: data = points. Otherwise data = {'points', 'imgs': (n_imgs, 3, IMG_SIZE,
    IMG_SIZE) in [0, 1]} (random distinct views; RGBA composited on white, or with ``IMG_ALPHA: drop``
    alpha dropped as released) or, with IMG_SOURCE
    'cached', {'points', 'img_feats': (n_imgs, F)}.

    Shapes: ``split: all`` (default) every PLY whatever the subset, as released; ``split: file`` the
    ``<subset>.txt`` list (see :data:`SPLITS`).
    """

    config_schema = dataset_schema(required=("DATA_PATH", "N_POINTS", "subset", "npoints"), optional=VIEW_KEYS + ("split",))

    def __init__(self, config):
        check_view_config(config, "ShapeNetRender")
        self.data_root = config.DATA_PATH
        self.subset = config.subset
        self.npoints = config.N_POINTS
        self.sample_points_num = config.npoints
        self.n_imgs = int(config.get("n_imgs", 1))
        self.img_source = config.get("IMG_SOURCE", "rendered")
        self.img_size = int(config.get("IMG_SIZE", 224))
        self.img_alpha = config.get("IMG_ALPHA", "white")
        self.render_root = os.path.join(self.data_root, "ShapeNetRendering")
        self.feature_cache = FeatureCache(config.FEATURE_CACHE) if self.n_imgs and self.img_source == "cached" else None
        if self.n_imgs and self.img_source == "rendered":
            require_path(self.render_root, "ShapeNetRender", LAYOUT)
        pc_root = os.path.join(self.data_root, "ShapeNet")
        require_path(pc_root, "ShapeNetRender", LAYOUT)
        self.split = config.get("split", "all")
        if self.split not in SPLITS:
            raise DatasetFormatError(f"ShapeNetRender: split must be one of {list(SPLITS)} ('all': every shape, as "
                                     f"released; 'file': <DATA_PATH>/<subset>.txt), got '{self.split}'")
        split_file = os.path.join(self.data_root, f"{self.subset}.txt")
        if self.split == "file" and os.path.isfile(split_file):
            names = [ln.strip() for ln in open(split_file) if ln.strip()]
        elif self.split == "all" or self.subset == "train":
            names = sorted(os.path.relpath(p, pc_root)[:-4] for p in glob.glob(os.path.join(pc_root, "*", "*.ply")))
        else:
            raise DatasetFormatError(f"ShapeNetRender: subset '{self.subset}' with split 'file' needs the split file "
                                     f"{split_file}; without one, all shapes form the 'train' subset. Expected layout:\n{LAYOUT}")
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
        return pc_normalize(points).astype(np.float32)

    def load_views(self, idx: int, points: np.ndarray, views) -> dict:
        sample = self.file_list[idx]
        if self.img_source == "cached":
            return {"img_feats": self.feature_cache.features(sample["taxonomy_id"], sample["model_id"], views)}
        if self.img_source == "projected":
            return {"imgs": project_views(points, views, self.img_size)}
        paths = rendered_view_paths(self.render_root, sample["taxonomy_id"], sample["model_id"], views)
        return {"imgs": torch.stack([load_view(p, self.img_size, self.img_alpha) for p in paths])}

    def __getitem__(self, idx: int):
        sample = self.file_list[idx]
        points = self.load_points(idx)
        if not self.n_imgs:
            return sample["taxonomy_id"], sample["model_id"], torch.from_numpy(points)
        views = choose_views(self.n_imgs)
        data = {"points": torch.from_numpy(points), **self.load_views(idx, points, views)}
        return sample["taxonomy_id"], sample["model_id"], data
