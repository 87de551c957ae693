"""What a command changes in a loaded config: ``--opts`` overrides (checked against the
sections' schemas), the data root (``--data_root`` / ``$DATA_ROOT``) and the cosine schedule's
length; :func:`load_config` does all of it for a command.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Tuple

import yaml
from easydict import EasyDict

from utils.config import cfg_from_yaml_file, safe_yaml_load
from utils.logger import print_log
from utils.schema import ConfigError, Schema, _set_origin, did_you_mean, origin_of
from utils.settings_table import DATA_ROOT_ENV, TOP_LEVEL_KEYS
from utils.text import quoted
from utils.validate import SECTION_SCHEMAS


def _parse_value(text: str) -> Any:
    try:
        return safe_yaml_load(text, f"--opts value {quoted(text, 80)}")
    except yaml.YAMLError:
        return text


# --------------------------------------------------------------------------------- --opts
def _schema_keys(schema: Optional[Schema], parts: Iterable[str]) -> Optional[Tuple[str, ...]]:
    """The keys of the sub-section ``parts`` of ``schema`` (None: no schema says)."""
    for part in parts:
        if schema is None:
            return None
        schema = schema.sections.get(part)
    return schema.keys() if schema is not None else None


def _dataset_keys(entry: Any, datasets) -> Optional[Tuple[str, ...]]:
    """The keys a dataset entry's ``_base_`` / ``others`` may hold: its class's schema."""
    if datasets is None or not isinstance(entry, Mapping):
        return None
    base = entry.get("_base_") if isinstance(entry.get("_base_"), Mapping) else {}
    others = entry.get("others") if isinstance(entry.get("others"), Mapping) else {}
    try:
        cls = datasets.get(others.get("NAME", base.get("NAME")))
    except KeyError:
        return None
    schema = getattr(cls, "config_schema", None)
    return schema.keys() if schema is not None else None


FREE_FORM = ("optimizer", "kwargs")  # optimizer.kwargs: the optimizer's own arguments, any key


def section_keys(config: Mapping, parts: Tuple[str, ...], models=None, datasets=None) -> Optional[Tuple[str, ...]]:
    """The keys the section ``parts`` of ``config`` may hold, by its schema: the top level, the
    optimizer / scheduler / svm_validation / voting sections, the model (``models``: the MODELS
    registry) and dataset entries (``datasets``: DATASETS). ``()`` for a free-form section
    (optimizer.kwargs), None when no schema is known."""
    if not parts:
        return tuple(TOP_LEVEL_KEYS)
    head, rest = parts[0], parts[1:]
    if tuple(parts) == FREE_FORM:
        return ()
    if head in ("dataset", "svm_validation") and len(rest) >= 1:
        entry = (config.get(head) or {}).get(rest[0])
        if len(rest) == 1:
            return ("_base_", "others")
        if len(rest) == 2 and rest[1] in ("_base_", "others"):
            return _dataset_keys(entry, datasets)
        return None
    if head in SECTION_SCHEMAS:
        return _schema_keys(SECTION_SCHEMAS[head], rest)
    if head == "model" and models is not None and isinstance(config.get("model"), Mapping):
        try:
            cls = models.get(config.model.get("NAME"))
        except KeyError:
            return None
        return _schema_keys(getattr(cls, "config_schema", None), rest)
    return None


def _unknown_opts_key(config: Mapping, parts: Tuple[str, ...], node: Mapping, allowed) -> ConfigError:
    where = ".".join(parts)
    section = ".".join(parts[:-1]) or "the top level"
    keys = sorted(set(allowed)) if allowed else sorted(node)
    kind = "valid keys" if allowed else "keys it holds"
    return ConfigError(f"--opts key '{where}' is not a key of {section}{did_you_mean(parts[-1], keys)}; "
                       f"{kind} of {section}: {', '.join(map(str, keys))}", origin_of(node) or origin_of(config))


def _opts_parts(dotted: str) -> Tuple[str, ...]:
    """``dataset.<split>.KEY`` is short for ``dataset.<split>.others.KEY`` (a dataset entry holds
    only ``_base_`` and ``others``)."""
    parts = tuple(dotted.split("."))
    if len(parts) == 3 and parts[0] == "dataset" and parts[2] not in ("_base_", "others"):
        parts = (parts[0], parts[1], "others", parts[2])
    return parts


def opts_keys(opts: Iterable[str]) -> Tuple[str, ...]:
    """The dotted keys of ``--opts`` entries (``key=value`` -> ``key``)."""
    return tuple(item.split("=", 1)[0] for item in opts or () if "=" in item)


def _every_entry_key(config: Mapping, parts: Tuple[str, ...]) -> bool:
    """``dataset.KEY`` where KEY is not one of the config's dataset entries: a key for every entry."""
    entries = config.get("dataset")
    return len(parts) == 2 and parts[0] == "dataset" and isinstance(entries, Mapping) and parts[1] not in entries


def _apply_to_every_entry(config: EasyDict, key: str, text: str, models=None, datasets=None) -> None:
    """``--opts dataset.KEY=VALUE``: ``others.KEY`` of every dataset entry whose class takes KEY
    (e.g. ``dataset.N_POINTS=1024`` for the train, val and test subsets of a folder at once)."""
    splits = [split for split, entry in config.dataset.items()
              if isinstance(entry, Mapping) and (_dataset_keys(entry, datasets) is None
                                                 or key in _dataset_keys(entry, datasets))]
    if not splits:
        known = sorted(set(config.dataset) | {k for e in config.dataset.values() for k in (_dataset_keys(e, datasets) or ())})
        raise ConfigError(f"--opts key 'dataset.{key}' is neither a dataset entry nor a key of one"
                          f"{did_you_mean(key, known)}; dataset entries: {', '.join(map(str, config.dataset))}",
                          origin_of(config.dataset) or origin_of(config))
    apply_opts(config, [f"dataset.{split}.others.{key}={text}" for split in splits], models, datasets)


def apply_opts(config: EasyDict, opts: Iterable[str], models=None, datasets=None) -> EasyDict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML).

    A key the config does not hold yet is added when the section's schema allows it (e.g.
    ``dataset.train.others.DATA_PATH``, ``model.label_smoothing``; model and dataset schemas need
    the ``models`` / ``datasets`` registries); ``dataset.<split>.KEY`` is short for
    ``dataset.<split>.others.KEY``, and ``dataset.KEY`` sets ``others.KEY`` of every dataset entry
    that takes KEY (``dataset.N_POINTS=1024``). Any other key is a ConfigError naming the key, the closest
    valid key and every valid key of that section."""
    for item in opts or ():
        if "=" not in item:
            raise ConfigError(f"--opts entry '{item}' is not of the form key.sub=value")
        dotted, text = item.split("=", 1)
        parts = _opts_parts(dotted)
        if _every_entry_key(config, parts):
            _apply_to_every_entry(config, parts[1], text, models, datasets)
            continue
        node = config
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part not in node:
                allowed = section_keys(config, parts[:i], models, datasets)
                if allowed is None or (allowed and part not in allowed):
                    raise _unknown_opts_key(config, parts[: i + 1], node, allowed)
                node[part] = EasyDict() if not last else None
                if not last:
                    _set_origin(node[part], "--opts")
            if last:
                node[part] = _parse_value(text)
            elif not isinstance(node[part], dict):
                raise ConfigError(f"--opts key '{dotted}': '{'.'.join(parts[: i + 1])}' is a value "
                                  f"({quoted(node[part])}), not a section", origin_of(node))
            else:
                node = node[part]
    return config


# ---------------------------------------------------------------------------- data root
DATA_PREFIX = "data"  # the shipped dataset configs' paths all start with data/
PATH_KEYS = ("DATA_PATH", "PC_PATH", "ROOT", "FEATURE_CACHE")


def resolve_data_root(cli_value: Optional[str]) -> Tuple[Optional[str], str]:
    """(data root, where it came from): ``--data_root``, else ``$DATA_ROOT``, else (None, '')."""
    if cli_value:
        return cli_value, "--data_root"
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return env, f"${DATA_ROOT_ENV}"
    return None, ""


def rebase_data_path(value: Any, root: str) -> Any:
    """``data/X`` -> ``<root>/X``. Absolute paths, paths not starting with ``data/`` and paths
    already under ``root`` are returned as they are (so rebasing twice changes nothing)."""
    if not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    norm, norm_root = os.path.normpath(value), os.path.normpath(root)
    parts = Path(norm).parts
    if not parts or parts[0] != DATA_PREFIX or norm == norm_root or norm.startswith(norm_root + os.sep):
        return value
    return os.path.join(root, *parts[1:])


def rebase_entry(entry: Mapping, root: str, where: str = "dataset") -> list:
    """Rebase the path keys (:data:`PATH_KEYS`) of a dataset entry's ``_base_`` and ``others``
    onto ``root`` in place; returns ``[(key, old, new), ...]`` of the changed ones."""
    changed = []
    for part in ("_base_", "others"):
        node = entry.get(part) if isinstance(entry, Mapping) else None
        if not isinstance(node, Mapping):
            continue
        for key in PATH_KEYS:
            if key in node:
                new = rebase_data_path(node[key], root)
                if new != node[key]:
                    changed.append((f"{where}.{part}.{key}", node[key], new))
                    node[key] = new
    return changed


def apply_data_root(config: Mapping, root: Optional[str], source: str = "--data_root", logger=None) -> list:
    """Move every dataset path of ``config`` that starts with ``data/`` under ``root`` (the
    ``dataset`` entries and ``svm_validation.train`` / ``.test``); one log line. Returns the changes."""
    if not root:
        return []
    changed = []
    for section in ("dataset", "svm_validation"):
        entries = config.get(section)
        if not isinstance(entries, Mapping):
            continue
        for split, entry in entries.items():
            if isinstance(entry, Mapping):
                changed += rebase_entry(entry, root, f"{section}.{split}")
    if changed:
        shown = "; ".join(f"{where}: {old} -> {new}" for where, old, new in changed[:3])
        more = f"; ... ({len(changed) - 3} more)" if len(changed) > 3 else ""
        print_log(f"Data root {root} ({source}): {len(changed)} dataset paths under data/ moved there ({shown}{more})",
                  logger=logger)
    else:
        print_log(f"Data root {root} ({source}): no dataset path of the config starts with data/; nothing moved",
                  logger=logger)
    return changed


# ------------------------------------------------------------------------------- schedule
def _as_int(value: Any) -> Optional[int]:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def resolve_schedule_length(config: Mapping, file_max_epoch: Any = None, file_epochs: Any = None,
                            opts: Iterable[str] = ()) -> Optional[str]:
    """Set ``scheduler.kwargs.epochs`` (the cosine length) and return one line saying why.

    The schedule follows ``max_epoch`` unless it was set explicitly: by ``--opts
    scheduler.kwargs.epochs=...``, or in the config to a value other than the config's
    ``max_epoch``. So ``--opts max_epoch=2`` on a config with ``max_epoch: 300`` and ``epochs: 300``
    gives a 2-epoch cosine. ``file_*``: the values in the config file, before ``--opts``."""
    sched = config.get("scheduler")
    if not isinstance(sched, Mapping) or sched.get("type") != "CosLR" or "max_epoch" not in config:
        return None
    if not isinstance(sched.get("kwargs"), Mapping):
        sched["kwargs"] = EasyDict()
    kwargs, max_epoch = sched["kwargs"], _as_int(config["max_epoch"])
    if max_epoch is None:
        return None  # check_values names the bad max_epoch
    if "scheduler.kwargs.epochs" in opts_keys(opts):
        why = "scheduler.kwargs.epochs set by --opts"
    elif file_epochs is None:
        kwargs["epochs"] = max_epoch
        why = f"follows max_epoch = {max_epoch} (scheduler.kwargs.epochs is not set)"
    elif _as_int(file_epochs) == _as_int(file_max_epoch) and max_epoch != _as_int(file_max_epoch):
        kwargs["epochs"] = max_epoch
        why = (f"follows max_epoch = {max_epoch} from --opts (the config's scheduler.kwargs.epochs {file_epochs} "
               f"is its max_epoch; set scheduler.kwargs.epochs to keep another length)")
    elif _as_int(kwargs.get("epochs")) == max_epoch:
        why = f"scheduler.kwargs.epochs = max_epoch = {max_epoch}"
    else:
        why = f"scheduler.kwargs.epochs as set in the config, not max_epoch = {max_epoch}"
    return f"Learning-rate schedule: cosine over {kwargs['epochs']} epochs ({why})"


def load_config(path: str, opts: Iterable[str] = (), data_root: Optional[str] = None, models=None, datasets=None,
                logger=None, schedule: bool = False,
                expand: Optional[Callable[[EasyDict], None]] = None) -> EasyDict:
    """A command's config: ``path`` (with ``_base_`` files), then ``--opts`` (see :func:`apply_opts`),
    then ``expand`` (a job's own sections filled in, e.g. :func:`engine.svm.expand_svm_section`),
    then the data root (``data_root``, else ``$DATA_ROOT``; :func:`apply_data_root`). With
    ``schedule`` the cosine length is resolved (:func:`resolve_schedule_length`) and logged."""
    config = cfg_from_yaml_file(path)
    sched_kwargs = (config.get("scheduler") or {}).get("kwargs") or {}
    file_max_epoch, file_epochs = config.get("max_epoch"), sched_kwargs.get("epochs")
    apply_opts(config, opts, models, datasets)
    if schedule:
        line = resolve_schedule_length(config, file_max_epoch, file_epochs, opts)
        if line:
            print_log(line, logger=logger)
    if expand is not None:
        expand(config)
    root, source = resolve_data_root(data_root)
    apply_data_root(config, root, source, logger=logger)
    return config
