"""Dataset registry: a dataset config's ``NAME`` picks the class (released names)."""
from utils.registry import Registry

DATASETS = Registry("datasets")


def build_dataset_from_cfg(cfg, default_args=None):
    """Build ``cfg.NAME`` from the dataset file's config ``cfg`` (the ``_base_``) merged with
    ``default_args`` (the ``others`` entry: subset, npoints, bs, ...)."""
    return DATASETS.build(cfg, default_args=default_args)


def bind_run_dir(config, run_dir: str) -> None:
    """Let each dataset entry of a run's config record files it keeps in the run directory (a
    dataset class's optional ``bind_run_dir(entry, run_dir)``, e.g. the split a folder dataset
    draws and writes there), before the config is saved, so ``--test`` and ``--resume`` read the same."""
    for entry in (config.get("dataset") or {}).values():
        if not isinstance(entry, dict):
            continue
        name = (entry.get("others") or {}).get("NAME") or (entry.get("_base_") or {}).get("NAME")
        if name in DATASETS:
            hook = getattr(DATASETS.get(name), "bind_run_dir", None)
            if hook is not None:
                hook(entry, run_dir)
