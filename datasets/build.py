"""Dataset registry: a dataset config's ``NAME`` picks the class (released names)."""
from utils.registry import Registry

DATASETS = Registry("datasets")


def build_dataset_from_cfg(cfg, default_args=None):
    """Build ``cfg.NAME`` from the dataset file's config ``cfg`` (the ``_base_``) merged with
    ``default_args`` (the ``others`` entry: subset, npoints, bs, ...)."""
    return DATASETS.build(cfg, default_args=default_args)
