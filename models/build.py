"""Model registry: a config's ``model.NAME`` picks the class (released names)."""
from utils.registry import Registry

MODELS = Registry("models")


def build_model_from_cfg(cfg, **kwargs):
    """Build the model named by ``cfg.NAME`` with ``cfg`` as its argument."""
    return MODELS.build(cfg, **kwargs)
