from .build import DATASETS, build_dataset_from_cfg
from . import ShapeNet55Dataset  # noqa: F401  (ShapeNet)
from . import ShapeNetRenderDataset  # noqa: F401  (ShapeNetRender)
