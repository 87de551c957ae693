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


def prepare_data(config, required=(), logger=None) -> None:
    """Before the run directory exists: let each dataset entry of a run's config check its data
    (a dataset class's optional ``prepare_entry(entry, config)``, e.g. a folder dataset reads every
    file and resolves ``N_POINTS: auto`` into the config), so data refused at start-up, as a bad
    config, leaves nothing behind. ``required``: the entries the job cannot run without
    (``'dataset.train'``, ...): their errors are raised; the others' are left to the job (e.g.
    pre-training skips a validation set it cannot read). The lines the hooks return are logged."""
    from utils.cli import InputError
    from utils.logger import print_log

    for section in ("dataset", "svm_validation"):
        entries = config.get(section)
        if not isinstance(entries, dict):
            continue
        for split, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            base = entry.get("_base_") if isinstance(entry.get("_base_"), dict) else {}
            name = (entry.get("others") or {}).get("NAME") or base.get("NAME")
            hook = getattr(DATASETS.get(name), "prepare_entry", None) if name in DATASETS else None
            if hook is None:
                continue
            try:
                line = hook(entry, config)
            except InputError:
                if f"{section}.{split}" in required:
                    raise
                continue
            if line:
                print_log(f"{section}.{split}: {line}", logger=logger)
