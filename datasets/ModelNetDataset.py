"""ModelNet40 / ModelNet10 (``modelnet40_normal_resampled``, Point-BERT / Point-MAE release).

The loader reads the released farthest-point-sampled cache
``modelnet{NUM_CATEGORY}_{subset}_{N_POINTS}pts_fps.dat`` as it is. When the cache is missing it
is built once from the ``.txt`` shapes with a batched torch FPS
(:func:`datasets.modelnet_cache.build_modelnet_cache`).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.logger import library_logger, print_log

from .build import DATASETS
from .common import DatasetFormatError, dataset_schema, pc_normalize, require_path
from .modelnet_cache import build_modelnet_cache, cache_file_name, load_cache, read_lines
from .safe_io import npz_twin

LOGGER = library_logger("ModelNet")

LAYOUT = """  <DATA_PATH>/modelnet40_shape_names.txt        40 class names, index = line
  <DATA_PATH>/modelnet40_{train,test}.txt        shape ids such as night_stand_0001
  <DATA_PATH>/<class>/<id>.txt                   rows x,y,z,nx,ny,nz
  <DATA_PATH>/modelnet40_{train,test}_<N>pts_fps.dat   (cache) pickle [list of float32 (N, 6), list of int32 (1,)]
  (NUM_CATEGORY: 10 uses the modelnet10_* files)"""


@DATASETS.register_module()
class ModelNet(Dataset):
    """Item: ``('ModelNet', 'sample', (points (N_POINTS, 3 or 6) float32, label int))``.

    xyz is normalised into the unit sphere; with ``USE_NORMALS`` the normals follow. Training
    shuffles the point order (the runner's FPS then starts at a random point), as released.
    """

    config_schema = dataset_schema(required=("DATA_PATH", "N_POINTS", "NUM_CATEGORY", "USE_NORMALS", "subset"))

    def __init__(self, config):
        self.root = config.DATA_PATH
        self.npoints = int(config.N_POINTS)
        self.use_normals = bool(config.USE_NORMALS)
        self.num_category = int(config.NUM_CATEGORY)
        self.subset = config.subset
        if self.num_category not in (10, 40):
            raise DatasetFormatError(f"ModelNet: NUM_CATEGORY must be 10 or 40, got {self.num_category}")
        if self.subset not in ("train", "test"):
            raise DatasetFormatError(f"ModelNet: subset must be 'train' or 'test', got '{self.subset}'")
        require_path(self.root, "ModelNet", LAYOUT)
        self.save_path = os.path.join(self.root, cache_file_name(self.num_category, self.subset, self.npoints))
        ids_file = os.path.join(self.root, f"modelnet{self.num_category}_{self.subset}.txt")
        if not os.path.exists(self.save_path) and not os.path.exists(npz_twin(self.save_path)):
            print_log(f"Processing data {self.save_path} (only running the first time)...", logger=LOGGER)
            build_modelnet_cache(self.root, self.subset, self.npoints, num_category=self.num_category)
        else:
            print_log(f"Load processed data from {self.save_path}...", logger=LOGGER)
        self.list_of_points, self.list_of_labels = load_cache(self.save_path, self.npoints)
        if os.path.exists(ids_file):
            n_ids = len(read_lines(ids_file))
            if n_ids != len(self.list_of_points):
                raise DatasetFormatError(f"ModelNet cache '{self.save_path}' holds {len(self.list_of_points)} shapes but "
                                         f"'{ids_file}' lists {n_ids}; delete the cache to rebuild it")
        print_log(f"The size of {self.subset} data is {len(self.list_of_points)}", logger=LOGGER)

    def __len__(self) -> int:
        return len(self.list_of_points)

    def _get_item(self, index: int):
        point_set = np.array(self.list_of_points[index], dtype=np.float32)
        label = int(np.asarray(self.list_of_labels[index]).reshape(-1)[0])
        point_set[:, 0:3] = pc_normalize(point_set[:, 0:3])
        if not self.use_normals:
            point_set = point_set[:, 0:3]
        return point_set, label

    def __getitem__(self, index: int):
        points, label = self._get_item(index)
        if self.subset == "train":
            points = points[np.random.permutation(points.shape[0])]
        return "ModelNet", "sample", (torch.from_numpy(np.ascontiguousarray(points)), label)
