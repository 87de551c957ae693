"""YAML configs: loading (``_base_`` merging, ``--opts`` overrides) and validation, in one place.

Layout as released (Point-BERT / Point-MAE): a dataset entry is
``{_base_: cfgs/dataset_configs/X.yaml, others: {subset: train, npoints: 1024}}``; loading replaces
the ``_base_`` path by the contents of that file. Every node remembers the file it came from, so a
missing or unknown key is reported with the key and the file.

Validation: every section has a :class:`Schema` (required and optional keys, sub-sections). The
top-level, optimizer and scheduler schemas are here; each registered model and dataset class
declares its own ``config_schema``. :func:`validate_config` checks a whole run config at start-up;
the registries check a section again whenever they build from it.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import yaml
from easydict import EasyDict

from utils.logger import print_log

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A config key is missing, unknown or has a bad value. The message names key and file."""

    def __init__(self, message: str, source: Optional[str] = None):
        super().__init__(f"{message} (in {source})" if source else message)


# Top-level keys a training config may have, with what they mean. Unknown keys are errors.
TOP_LEVEL_KEYS = {
    "optimizer": "{type: AdamW|Adam|SGD, kwargs: {...}}",
    "scheduler": "{type: CosLR|StepLR|none, kwargs: {...}}",
    "bnmscheduler": "accepted for released configs; unused",
    "dataset": "{train, val, test, ...: {_base_: dataset yaml, others: {...}}}",
    "model": "{NAME: registered model, ...}",
    "npoints": "points per sample fed to the model",
    "total_bs": "global batch size (split across processes)",
    "step_per_update": "gradient accumulation steps",
    "max_epoch": "number of epochs",
    "grad_norm_clip": "clip gradients to this L2 norm (0 or absent: no clipping)",
    "consider_metric": "metric that selects ckpt-best",
    "amp": "mixed precision: off | bf16 | fp16 (true = bf16)",
    "ckpt_period": "also keep ckpt-epoch-XXX every this many epochs (0: never)",
    "fps_backend": "farthest point sampling on CUDA: auto | torch | triton | pointnet2_ops",
    "svm_validation": "linear-SVM validation of pre-trained features during pre-training",
    "epoch_count": "released (default: epochs 0..max_epoch, as the released loops) | exact (max_epoch epochs)",
    "lr_schedule": "exact (default: epoch e at cosine(e)) | released (the released one-epoch lag)",
    "voting": "{times: 10, repeats: 299, above: 92.1, above_if_best: 91.0}: voting passes, --test repeats, "
              "fine-tuning thresholds",
}


# Top-level keys each job needs.
JOB_REQUIRED_KEYS = {
    "pretrain": ("model", "dataset", "optimizer", "max_epoch", "total_bs"),
    "finetune": ("model", "dataset", "optimizer", "max_epoch", "total_bs", "npoints"),
    "test": ("model", "dataset", "npoints"),
}


@dataclass(frozen=True)
class Schema:
    """The keys of one config section: ``required``, ``optional`` and ``sections`` (keys whose
    value is a mapping with a schema of its own; checked when present)."""

    required: Tuple[str, ...] = ()
    optional: Tuple[str, ...] = ()
    sections: Dict[str, "Schema"] = field(default_factory=dict)

    def check(self, node: Mapping, where: str) -> None:
        """Raise ConfigError naming ``where.key`` and the file for an unknown or missing key."""
        check_keys(node, where, required=self.required, optional=self.optional + tuple(self.sections))
        for key, schema in self.sections.items():
            if isinstance(node.get(key), Mapping):
                schema.check(node[key], f"{where}.{key}")


OPTIMIZER_SCHEMA = Schema(required=("type", "kwargs"), optional=("part",))
SCHEDULER_SCHEMA = Schema(required=("type",), sections={  # CosLR, the only schedule the released configs use
    "kwargs": Schema(required=("epochs",), optional=("initial_epochs", "lr_min", "warmup_lr_init"))})
SVM_SCHEMA = Schema(optional=("enabled", "train", "test", "C", "freq"))


# ----------------------------------------------------------------------------------- origins
def _set_origin(node: Any, source: str) -> None:
    """Record the file a config node came from, on the node and all its sub-dicts."""
    if isinstance(node, dict):
        # object.__setattr__: an attribute only, never a config item (EasyDict would add one).
        object.__setattr__(node, "_origin", source)
        for value in node.values():
            if isinstance(value, dict) and getattr(value, "_origin", None) is None:
                _set_origin(value, source)


def origin_of(node: Any) -> Optional[str]:
    return getattr(node, "_origin", None)


def to_plain(node: Any) -> Any:
    """EasyDict tree -> plain dicts and lists (for YAML dumps and checkpoints)."""
    if isinstance(node, dict):
        return {k: to_plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [to_plain(v) for v in node]
    return node


def merge_into(base: Mapping, overrides: Mapping) -> EasyDict:
    """A copy of ``base`` updated (recursively) by ``overrides``; origins are kept."""
    out = EasyDict(copy.deepcopy(to_plain(base)))
    _set_origin(out, origin_of(base) or "<config>")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_into(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
            if isinstance(out[key], dict):
                _set_origin(out[key], origin_of(overrides) or origin_of(base) or "<config>")
    return out


# ----------------------------------------------------------------------------------- loading
def resolve_base_path(path: str, including_file: str) -> Path:
    """``_base_`` paths are relative to the working directory in the released configs; we also
    accept them relative to the repository root and to the including file."""
    candidates = [Path(path), REPO_ROOT / path, Path(including_file).parent / path]
    for cand in candidates:
        if cand.is_file():
            return cand
    raise ConfigError(f"_base_ file '{path}' not found (looked in the working directory, {REPO_ROOT} and "
                      f"{Path(including_file).parent})", including_file)


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    with open(path, "r") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file is not valid YAML: {e}", str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top of the config, got {type(data).__name__}", str(path))
    return data


def merge_new_config(config: EasyDict, new_config: Mapping, source: str) -> EasyDict:
    """Merge ``new_config`` (loaded from ``source``) into ``config``, expanding ``_base_`` entries."""
    for key, val in new_config.items():
        if not isinstance(val, dict):
            if key == "_base_":
                base_path = resolve_base_path(str(val), source)
                base = EasyDict()
                merge_new_config(base, _load_yaml(base_path), str(base_path))
                _set_origin(base, str(base_path))
                config[key] = base
            else:
                config[key] = val
            continue
        if key not in config or not isinstance(config[key], dict):
            config[key] = EasyDict()
        merge_new_config(config[key], val, source)
        if origin_of(config[key]) is None:
            _set_origin(config[key], source)
    return config


def cfg_from_yaml_file(cfg_file: str | os.PathLike) -> EasyDict:
    """Load a config, expanding ``_base_`` files. Released name and signature."""
    cfg_file = str(cfg_file)
    config = EasyDict()
    merge_new_config(config, _load_yaml(Path(cfg_file)), cfg_file)
    _set_origin(config, cfg_file)
    return config


def check_top_level(config: Mapping, required: Iterable[str] = ("model",)) -> None:
    source = origin_of(config)
    for key in config:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"unknown top-level key '{key}'; known keys: {sorted(TOP_LEVEL_KEYS)}", source)
    for key in required:
        if key not in config:
            raise ConfigError(f"missing top-level key '{key}'", source)


def check_keys(node: Mapping, where: str, required: Iterable[str] = (), optional: Iterable[str] = ()) -> None:
    """Fail on unknown or missing keys of one config section. ``where`` names the section."""
    source = origin_of(node)
    allowed = set(required) | set(optional)
    for key in node:
        if key not in allowed:
            raise ConfigError(f"unknown key '{where}.{key}'; allowed: {sorted(allowed)}", source)
    for key in required:
        if key not in node:
            raise ConfigError(f"missing key '{where}.{key}'", source)


def dataset_entry(config: Mapping, *names: str):
    """(name, entry) of the first of ``config.dataset``'s entries ``names`` that the config has."""
    for name in names:
        entry = config.get("dataset", {}).get(name)
        if entry is not None:
            return name, entry
    raise ConfigError(f"the config has no dataset.{' / dataset.'.join(names)} entry", origin_of(config))


def validate_config(config: Mapping, job: str, models, datasets) -> None:
    """Check a run config before anything is built: top-level keys for ``job`` (``pretrain``,
    ``finetune`` or ``test``), the model section against its class's schema (``models``: the
    MODELS registry), every dataset entry against its class's schema (``datasets``: DATASETS),
    the optimizer and the scheduler."""
    check_top_level(config, required=JOB_REQUIRED_KEYS[job])
    models.check(config.model, "model")
    for split, entry in config.dataset.items():
        if not isinstance(entry, Mapping) or "_base_" not in entry or "others" not in entry:
            raise ConfigError(f"dataset.{split} needs '_base_' and 'others'", origin_of(config.dataset))
        datasets.check(merge_into(entry._base_, entry.others), f"dataset.{split}")
    if "optimizer" in config:
        OPTIMIZER_SCHEMA.check(config.optimizer, "optimizer")
    if isinstance(config.get("scheduler"), Mapping):
        SCHEDULER_SCHEMA.check(config.scheduler, "scheduler")
    if isinstance(config.get("svm_validation"), Mapping):
        SVM_SCHEMA.check(config.svm_validation, "svm_validation")


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_opts(config: EasyDict, opts: Iterable[str]) -> EasyDict:
    """Apply ``key.sub=value`` overrides; an unknown key is an error (set it in the YAML first)."""
    for item in opts or ():
        if "=" not in item:
            raise ConfigError(f"--opts entry '{item}' is not of the form key.sub=value")
        dotted, text = item.split("=", 1)
        node = config
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--opts key '{where}' does not exist in the config", origin_of(config))
            if i == len(parts) - 1:
                node[part] = _parse_value(text)
            else:
                node = node[part]
    return config


def save_experiment_config(args, config: Mapping, logger=None) -> str:
    """Write the resolved config to ``<experiment_path>/config.yaml`` (released function name)."""
    path = os.path.join(args.experiment_path, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(to_plain(config), f, sort_keys=False)
    print_log(f"Copy the config file to {path}", logger=logger)
    return path


def get_config(args, logger=None) -> EasyDict:
    """Config for a run: ``args.config`` (or the saved one when resuming), with ``--opts``."""
    if getattr(args, "resume", False):
        saved = os.path.join(args.experiment_path, "config.yaml")
        if not os.path.exists(saved):
            raise ConfigError(f"--resume: no saved config at {saved}; is --exp_name right?")
        print_log(f"Resume: loading config from {saved}", logger=logger)
        args.config = saved
    config = cfg_from_yaml_file(args.config)
    apply_opts(config, getattr(args, "opts", None))
    if not getattr(args, "resume", False) and getattr(args, "local_rank", 0) == 0 and hasattr(args, "experiment_path"):
        save_experiment_config(args, config, logger)
    return config
