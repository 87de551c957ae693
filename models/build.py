"""Model registry: a config's ``model.NAME`` picks the class (released names)."""
from utils.registry import Registry

MODELS = Registry("models")


def build_model_from_cfg(cfg, **switches):
    """Build the model named by ``cfg.NAME`` from ``cfg`` (its ``model`` section). ``switches``:
    keyword arguments that change how, not what, it computes (``fps_backend``, ``embed_compute``),
    e.g. those of a run's settings (:meth:`utils.settings.RunSettings.model_switches`)."""
    return MODELS.build(cfg, **switches)
