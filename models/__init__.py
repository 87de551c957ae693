from .build import MODELS, build_model_from_cfg
__all__ = ["MODELS", "build_model_from_cfg"]
from . import Inter_MAE  # noqa: F401  (registers Inter_MAE, Point_MAE)
from . import PointTransformer  # noqa: F401  (registers PointTransformer)
from . import PartSegTransformer  # noqa: F401  (registers PartSegTransformer)
