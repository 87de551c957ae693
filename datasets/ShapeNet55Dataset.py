"""ShapeNet-55 point clouds (Point-BERT / Point-MAE release)."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .build import DATASETS
from .common import DatasetFormatError, check_finite_points, dataset_schema, pc_normalize, random_subset, require_path
from .io import read_point_file
from .views import VIEW_KEYS, check_view_config, choose_views, project_views

LAYOUT = """  <DATA_PATH>/{train,test}.txt   lines '<synset>-<model>.npy'
  <PC_PATH>/<synset>-<model>.npy  float (8192, 3)"""


@DATASETS.register_module()
class ShapeNet(Dataset):
    """Item: (taxonomy_id, model_id, points (npoints, 3) float32, unit-sphere normalised).

    With ``n_imgs > 0`` (IMG_SOURCE must be 'projected': ShapeNet-55 has no renderings) the data
    is {'points', 'imgs': (n_imgs, 3, IMG_SIZE, IMG_SIZE)}: the sample's points rendered on white.
    """

    config_schema = dataset_schema(required=("DATA_PATH", "PC_PATH", "N_POINTS", "subset", "npoints"), optional=VIEW_KEYS)

    def __init__(self, config):
        self.n_imgs = int(config.get("n_imgs", 0))
        if self.n_imgs:
            check_view_config(config, "ShapeNet", allowed_sources=("projected",))
        self.img_size = int(config.get("IMG_SIZE", 224))
        self.data_root = config.DATA_PATH
        self.pc_path = config.PC_PATH
        self.subset = config.subset
        self.npoints = config.N_POINTS
        self.sample_points_num = config.npoints
        list_file = os.path.join(self.data_root, f"{self.subset}.txt")
        require_path(list_file, "ShapeNet-55", LAYOUT)
        require_path(self.pc_path, "ShapeNet-55", LAYOUT)
        lines = [ln.strip() for ln in open(list_file) if ln.strip()]
        if config.get("whole") and self.subset == "train":
            test_file = os.path.join(self.data_root, "test.txt")
            lines += [ln.strip() for ln in open(test_file) if ln.strip()]
        self.file_list = []
        for line in lines:
            if not line.endswith(".npy") or "-" not in line:
                raise DatasetFormatError(f"{list_file}: line '{line}' is not '<synset>-<model>.npy'")
            taxonomy_id, model_id = line[:-4].split("-", 1)
            self.file_list.append({"taxonomy_id": taxonomy_id, "model_id": model_id, "file_path": line})
        if not self.file_list:
            raise DatasetFormatError(f"{list_file} lists no shapes")

    def __len__(self) -> int:
        return len(self.file_list)

    def __getitem__(self, idx: int):
        sample = self.file_list[idx]
        path = os.path.join(self.pc_path, sample["file_path"])
        data, _ = read_point_file(path)  # numeric (N, >=3) arrays only, declared size checked before reading
        data = data.astype(np.float32)
        check_finite_points(data, f"{path} (item {idx})")
        data = pc_normalize(random_subset(data[:, :3], self.sample_points_num))
        if not self.n_imgs:
            return sample["taxonomy_id"], sample["model_id"], torch.from_numpy(data)
        imgs = project_views(data, choose_views(self.n_imgs), self.img_size)
        return sample["taxonomy_id"], sample["model_id"], {"points": torch.from_numpy(data), "imgs": imgs}
