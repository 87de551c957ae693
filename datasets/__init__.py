from .build import DATASETS, build_dataset_from_cfg
__all__ = ["DATASETS", "build_dataset_from_cfg"]
from . import ShapeNet55Dataset  # noqa: F401  (ShapeNet)
from . import ShapeNetRenderDataset  # noqa: F401  (ShapeNetRender)
from . import ModelNetDataset  # noqa: F401  (ModelNet)
from . import ModelNetDatasetFewShot  # noqa: F401  (ModelNetFewShot)
from . import ScanObjectNNDataset  # noqa: F401  (ScanObjectNN, ScanObjectNN_hardest)
from . import ModelNetH5Dataset  # noqa: F401  (ModelNet40SVM: modelnet40_ply_hdf5_2048, the linear-SVM protocol)
from . import PointCloudFolder  # noqa: F401  (PointCloudFolder: your own files, docs/own-data.md)
from . import PartSegFolder  # noqa: F401  (PartSegFolder: your own labelled point files, docs/own-segmentation.md)
