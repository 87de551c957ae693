"""Run-config validation: the keys of every section (:class:`utils.schema.Schema`) and the value
rules (types, ranges, choice words, cross-key sanity), checked once at start-up, before anything is
written.

The top-level keys, their numbers' ranges and their choice words come from the settings table
(:mod:`utils.settings_table`); the optimizer, scheduler, SVM and voting sections have their schema
here; each registered model and dataset class declares its own ``config_schema``.
:func:`validate_config` checks a whole run config; the registries check a section again whenever
they build from it.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Tuple

from utils.schema import ConfigError, Schema, check_keys, did_you_mean, merge_into, origin_of
from utils.settings_table import BOOLEAN_WORDS, CHOICE_KEYS, JOB_REQUIRED_KEYS, TOP_LEVEL_KEYS, TOP_LEVEL_NUMBERS
from utils.text import quoted

OPTIMIZER_SCHEMA = Schema(required=("type", "kwargs"), optional=("part",))
OPTIMIZER_TYPES = ("AdamW", "Adam", "SGD")  # engine.builder.build_opti_sche
SCHEDULER_TYPES = ("CosLR", "none", None)
# CosLR, the only schedule the released configs use; kwargs.epochs defaults to max_epoch (see resolve_schedule_length).
SCHEDULER_SCHEMA = Schema(required=("type",), sections={
    "kwargs": Schema(optional=("epochs", "initial_epochs", "lr_min", "warmup_lr_init"))})
SVM_SCHEMA = Schema(optional=("enabled", "train", "test", "C", "freq"))

# ``voting`` (top-level key of fine-tuning configs): the released figures (tools/runner_finetune.py:
# validate_vote / test_vote times=10, run_net's thresholds 92.1 and 91, test's range(1, 300)).
VOTING_DEFAULTS = {"times": 10, "repeats": 299, "above": 92.1, "above_if_best": 91.0}
VOTING_SCHEMA = Schema(optional=tuple(VOTING_DEFAULTS))
# Top-level sections with a schema of their own (model and dataset sections: their registries).
SECTION_SCHEMAS = {"optimizer": OPTIMIZER_SCHEMA, "scheduler": SCHEDULER_SCHEMA, "svm_validation": SVM_SCHEMA,
                   "voting": VOTING_SCHEMA}

def check_top_level(config: Mapping, required: Iterable[str] = ("model",)) -> None:
    source = origin_of(config)
    for key in config:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"unknown top-level key '{key}'{did_you_mean(key, TOP_LEVEL_KEYS)}; known keys: {sorted(TOP_LEVEL_KEYS)}", source)
    for key in required:
        if key not in config:
            raise ConfigError(f"missing top-level key '{key}'", source)


def dataset_entry(config: Mapping, *names: str):
    """(name, entry) of the first of ``config.dataset``'s entries ``names`` that the config has."""
    for name in names:
        entry = config.get("dataset", {}).get(name)
        if entry is not None:
            return name, entry
    raise ConfigError(f"the config has no dataset.{' / dataset.'.join(names)} entry", origin_of(config))

# ------------------------------------------------------------------------------ value rules
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def _bad_value(where: str, value: Any, expected: str, node: Mapping) -> ConfigError:
    return ConfigError(f"'{where}' = {quoted(value)}: expected {expected}", origin_of(node))


def check_number(node: Any, key: str, where: str, integer: bool = False, low: Optional[float] = None,
                 high: Optional[float] = None, low_open: bool = False, high_open: bool = False,
                 allow_none: bool = True) -> None:
    """Check (and convert in place) the number ``node[key]``: numeric strings such as ``"1e-3"``
    (PyYAML reads ``1e-3`` as a string) become numbers; anything else outside the range is a
    ConfigError naming key, value, range and file. Absent keys are not checked."""
    if not isinstance(node, Mapping) or key not in node:
        return
    value = node[key]
    kind = "an integer" if integer else "a number"
    rng = []
    if low is not None:
        rng.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        rng.append(f"{'<' if high_open else '<='} {high:g}")
    expected = kind + (" " + " and ".join(rng) if rng else "")
    if value is None:
        if allow_none:
            return
        raise _bad_value(where, value, expected, node)
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _bad_value(where, value, expected, node) from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise _bad_value(where, value, expected, node)
    if integer:
        if float(number) != int(number):
            raise _bad_value(where, value, expected, node)
        number = int(number)
    if (low is not None and (number < low or (low_open and number == low))) or \
            (high is not None and (number > high or (high_open and number == high))):
        raise _bad_value(where, value, expected, node)
    if number is not value:
        node[key] = number


def check_bool(node: Any, key: str, where: str) -> None:
    """Check (and convert in place) the boolean ``node[key]``: true/false, or one of the strings
    true/false/yes/no/on/off/1/0 (any case); anything else is a ConfigError. ``"false"`` is false."""
    if not isinstance(node, Mapping) or key not in node or node[key] is None:
        return
    value = node[key]
    if isinstance(value, bool):
        return
    if isinstance(value, int) and value in (0, 1):
        node[key] = bool(value)
        return
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        node[key] = value.strip().lower() in TRUE_WORDS
        return
    raise _bad_value(where, value, "true or false (or one of the strings " + "/".join(TRUE_WORDS + FALSE_WORDS) + ")",
                     node)

DATASET_BOOLS = ("USE_NORMALS",)
# ``N_POINTS: auto`` (the smallest file's count, resolved when the run starts): datasets that read a folder of files.
AUTO_POINTS = "auto"
AUTO_POINTS_DATASETS = ("PointCloudFolder",)
IMAGE_BRANCH_BOOLS = ("trainable", "normalize", "per_view", "fresh_encoder_every_step")

def is_pretraining_model(cls: type) -> bool:
    """Pre-training models (Inter_MAE, Point_MAE) nest their transformer in ``transformer_config``
    with a ``mask_ratio``; the fine-tuning PointTransformer has a flat section."""
    schema = getattr(cls, "config_schema", None)
    return schema is not None and "transformer_config" in schema.sections


def check_mask_ratio(node: Mapping, where: str = "model.transformer_config.mask_ratio") -> None:
    """The fraction of masked patches: in (0, 1), so that some patches are masked (the loss is the
    reconstruction of the masked ones) and some stay visible. The one rule of pre-training and
    main_vis.py's --mask_ratio."""
    check_number(node, "mask_ratio", where, low=0, high=1, low_open=True, high_open=True, allow_none=False)


def check_values(config: Mapping, job: str, model_cls: Optional[type] = None, world_size: int = 1) -> None:
    """The value rules of a run config (types, ranges, cross-key sanity), after the key checks."""
    for key, integer, low, low_open, allow_none in TOP_LEVEL_NUMBERS:
        check_number(config, key, key, integer=integer, low=low, low_open=low_open, allow_none=allow_none)
    _check_limit(config, "npoints", "npoints", "points")
    if "total_bs" in config and world_size > 1 and config.total_bs % world_size != 0:
        raise ConfigError(f"'total_bs' = {config.total_bs}: expected a multiple of the {world_size} processes "
                          f"(each process takes total_bs / world size)", origin_of(config))
    for key, words in CHOICE_KEYS.items():
        value = config.get(key)
        if key in BOOLEAN_WORDS and isinstance(value, bool):  # amp: true (configs before fp16); on / off
            continue
        if value is not None and value not in words:
            raise ConfigError(f"'{key}' = {quoted(value)}: expected one of {list(words)}", origin_of(config))
    released_count = config.get("epoch_count", CHOICE_KEYS["epoch_count"][0]) == "released"
    if job in ("pretrain", "finetune", "partseg") and isinstance(config.get("max_epoch"), int) \
            and config.max_epoch + released_count < 1:
        raise ConfigError(f"'max_epoch' = {config.max_epoch}: expected an integer >= 1 with epoch_count: exact (a "
                          f"training run of 0 epochs trains nothing)", origin_of(config))
    check_voting(config)
    opt = config.get("optimizer")
    if isinstance(opt, Mapping) and opt.get("type") not in OPTIMIZER_TYPES:
        raise ConfigError(f"'optimizer.type' = {quoted(opt.get('type'))}: expected one of {list(OPTIMIZER_TYPES)}",
                          origin_of(opt))
    sched = config.get("scheduler")
    if isinstance(sched, Mapping) and sched.get("type") not in SCHEDULER_TYPES:
        raise ConfigError(f"'scheduler.type' = {quoted(sched.get('type'))}: expected one of {list(SCHEDULER_TYPES)[:2]}",
                          origin_of(sched))
    if isinstance(opt, Mapping) and isinstance(opt.get("kwargs"), Mapping):
        check_number(opt.kwargs, "lr", "optimizer.kwargs.lr", low=0, low_open=True, allow_none=False)
        check_number(opt.kwargs, "weight_decay", "optimizer.kwargs.weight_decay", low=0)
        check_number(opt.kwargs, "momentum", "optimizer.kwargs.momentum", low=0)
        check_number(opt.kwargs, "eps", "optimizer.kwargs.eps", low=0, low_open=True)
    sched = config.get("scheduler")
    if isinstance(sched, Mapping) and isinstance(sched.get("kwargs"), Mapping):
        check_number(sched.kwargs, "epochs", "scheduler.kwargs.epochs", integer=True, low=0)
        check_number(sched.kwargs, "initial_epochs", "scheduler.kwargs.initial_epochs", integer=True, low=0)
        check_number(sched.kwargs, "lr_min", "scheduler.kwargs.lr_min", low=0)
        check_number(sched.kwargs, "warmup_lr_init", "scheduler.kwargs.warmup_lr_init", low=0)
    svm = config.get("svm_validation")
    if isinstance(svm, Mapping):
        check_bool(svm, "enabled", "svm_validation.enabled")
        check_number(svm, "freq", "svm_validation.freq", integer=True, low=1)
    model = config.get("model")
    if isinstance(model, Mapping):
        name = model.get("NAME")
        if model_cls is not None:
            if is_pretraining_model(model_cls) and job in ("finetune", "test"):
                flag = "--test" if job == "test" else "--finetune_model / --scratch_model"
                raise ConfigError(f"model.NAME '{name}' is a pre-training model, but {flag} asks for fine-tuning or "
                                  f"testing a classifier: use a fine-tuning config (model.NAME: PointTransformer, "
                                  f"e.g. cfgs/finetune_modelnet.yaml)", origin_of(model))
            if not is_pretraining_model(model_cls) and job == "pretrain":
                raise ConfigError(f"model.NAME '{name}' is a fine-tuning model, but no --finetune_model, "
                                  f"--scratch_model or --test was given (pre-training): add one of those flags, or "
                                  f"use a pre-training config (model.NAME: Inter_MAE / Point_MAE)", origin_of(model))
        for key in ("num_group", "group_size"):
            check_number(model, key, f"model.{key}", integer=True, low=1, allow_none=False)
        tc = model.get("transformer_config") if isinstance(model.get("transformer_config"), Mapping) else model
        prefix = "model.transformer_config." if tc is not model else "model."
        for key in ("trans_dim", "depth", "num_heads", "encoder_dims", "cls_dim", "decoder_depth", "decoder_num_heads"):
            check_number(tc, key, prefix + key, integer=True, low=1)
        for key, name in (("depth", "depth"), ("decoder_depth", "depth")):
            _check_limit(tc, key, prefix + key, name)
        for key in ("num_group", "group_size"):
            _check_limit(model, key, f"model.{key}", "points")
        check_number(tc, "drop_path_rate", prefix + "drop_path_rate", low=0, high=1, high_open=True)
        if tc is not model:
            check_mask_ratio(tc, prefix + "mask_ratio")
        if isinstance(model.get("image_branch"), Mapping):
            for key in IMAGE_BRANCH_BOOLS:
                check_bool(model.image_branch, key, f"model.image_branch.{key}")
        npoints = config.get("npoints")
        num_group = model.get("num_group")
        if isinstance(npoints, int) and isinstance(num_group, int) and num_group > npoints:
            raise ConfigError(f"'model.num_group' = {num_group}: expected at most npoints = {npoints} "
                              f"(one group centre per sampled point)", origin_of(model))
    for split, entry in (config.get("dataset") or {}).items():
        for part in ("_base_", "others"):
            node = entry.get(part)
            check_number(node, "npoints", f"dataset.{split}.{part}.npoints", integer=True, low=1)
            if isinstance(node, Mapping) and node.get("N_POINTS") == AUTO_POINTS:
                name = (entry.get("others") or {}).get("NAME") or (entry.get("_base_") or {}).get("NAME")
                if name not in AUTO_POINTS_DATASETS:
                    raise _bad_value(f"dataset.{split}.{part}.N_POINTS", AUTO_POINTS, f"an integer >= 1 ('{AUTO_POINTS}' "
                                     f"is for {', '.join(AUTO_POINTS_DATASETS)}: a folder of your own files)", node)
            else:
                check_number(node, "N_POINTS", f"dataset.{split}.{part}.N_POINTS", integer=True, low=1)
            for key in ("npoints", "N_POINTS"):
                _check_limit(node, key, f"dataset.{split}.{part}.{key}", "points")
            for key in DATASET_BOOLS:
                check_bool(node, key, f"dataset.{split}.{part}.{key}")


def _check_limit(node: Any, key: str, where: str, name: str) -> None:
    """A checked integer ``node[key]`` within limit ``name`` of :mod:`utils.limits` (points, blocks):
    a ConfigError naming the key, the value, the limit and its environment variable otherwise."""
    from utils.limits import how_to_raise, limit

    value = node.get(key) if isinstance(node, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > limit(name):
        raise ConfigError(f"'{where}' = {value}: too large; {how_to_raise(name)}", origin_of(node))


def check_voting(config: Mapping) -> None:
    """The ``voting`` section: its keys and values (passes and repeats positive integers,
    thresholds percentages)."""
    section = config.get("voting")
    if section is None:
        return
    if not isinstance(section, Mapping):
        raise ConfigError(f"'voting' = {quoted(section)}: expected a mapping such as {VOTING_DEFAULTS}", origin_of(config))
    VOTING_SCHEMA.check(section, "voting")
    for key in ("times", "repeats"):
        check_number(section, key, f"voting.{key}", integer=True, low=1, allow_none=False)
    for key in ("above", "above_if_best"):  # accuracy thresholds in percent (below 0: vote at every validation)
        check_number(section, key, f"voting.{key}", allow_none=False)


def _points_of(entry: Mapping) -> Tuple[Optional[int], Optional[int]]:
    """(npoints, N_POINTS) of a dataset entry, ``others`` over ``_base_`` (None when absent)."""
    merged = {**(entry.get("_base_") if isinstance(entry.get("_base_"), Mapping) else {}),
              **(entry.get("others") if isinstance(entry.get("others"), Mapping) else {})}
    values = [merged.get(k) for k in ("npoints", "N_POINTS")]
    return tuple(v if isinstance(v, int) and not isinstance(v, bool) else None for v in values)


def check_point_counts(config: Mapping, job: str) -> None:
    """Sizes that would otherwise fail at the first step: a patch of ``model.group_size`` points
    (kNN) and ``model.num_group`` centres (FPS) need that many points per sample, and a classifier
    fed ``npoints`` needs datasets holding at least that many (``N_POINTS``)."""
    model = config.get("model")
    if not isinstance(model, Mapping):
        return
    fed = config.get("npoints") if isinstance(config.get("npoints"), int) else None
    where = "npoints"
    if fed is None:
        train = (config.get("dataset") or {}).get("train")
        if isinstance(train, Mapping):
            fed, where = _points_of(train)[0], "dataset.train.others.npoints"
    for key in ("group_size", "num_group"):
        value = model.get(key)
        if isinstance(fed, int) and isinstance(value, int) and value > fed:
            what = "points per patch (k nearest neighbours)" if key == "group_size" else "group centres (FPS)"
            raise ConfigError(f"'model.{key}' = {value}: expected at most {where} = {fed} ({what} are drawn from "
                              f"the {fed} points of a sample)", origin_of(model))
    if job not in ("finetune", "test") or not isinstance(config.get("npoints"), int):
        return
    for split, entry in (config.get("dataset") or {}).items():
        if not isinstance(entry, Mapping):
            continue
        n_points = _points_of(entry)[1]
        if n_points is not None and config.npoints > n_points:
            raise ConfigError(f"'npoints' = {config.npoints}: expected at most dataset.{split}'s N_POINTS = "
                              f"{n_points} (the points each of its shapes holds); lower npoints or use the "
                              f"dataset's larger variant", origin_of(config))


def check_dataset_others(entry: Mapping, split: str, datasets) -> None:
    """Unknown keys in a dataset entry's ``others``, reported against the file ``others`` was written in
    (the merged check would name the ``_base_`` file)."""
    others = entry.others
    if not isinstance(others, Mapping):
        raise ConfigError(f"dataset.{split}.others must be a mapping", origin_of(entry))
    name = others.get("NAME", entry._base_.get("NAME") if isinstance(entry._base_, Mapping) else None)
    try:
        cls = datasets.get(name)
    except KeyError:
        return  # the merged check names the bad NAME
    schema = getattr(cls, "config_schema", None)
    if schema is not None:
        check_keys(others, f"dataset.{split}.others",
                   optional=schema.required + schema.optional + tuple(schema.sections))


def validate_config(config: Mapping, job: str, models, datasets, world_size: int = 1) -> None:
    """Check a run config before anything is built: top-level keys for ``job`` (``pretrain``,
    ``finetune`` or ``test``), the model section against its class's schema (``models``: the
    MODELS registry), every dataset entry against its class's schema (``datasets``: DATASETS),
    the optimizer and the scheduler; then the values (:func:`check_values`: types, ranges, the
    model's kind against the job, ``total_bs`` against ``world_size``)."""
    check_top_level(config, required=JOB_REQUIRED_KEYS[job])
    model_cls = models.check(config.model, "model")
    for split, entry in (config.get("dataset") or {}).items():
        if not isinstance(entry, Mapping) or "_base_" not in entry or "others" not in entry:
            raise ConfigError(f"dataset.{split} needs '_base_' and 'others'", origin_of(config.dataset))
        check_dataset_others(entry, split, datasets)
        datasets.check(merge_into(entry._base_, entry.others), f"dataset.{split}")
    if "optimizer" in config:
        OPTIMIZER_SCHEMA.check(config.optimizer, "optimizer")
    if isinstance(config.get("scheduler"), Mapping):
        SCHEDULER_SCHEMA.check(config.scheduler, "scheduler")
    if isinstance(config.get("svm_validation"), Mapping):
        SVM_SCHEMA.check(config.svm_validation, "svm_validation")
        for split in ("train", "test"):
            entry = config.svm_validation.get(split)
            if isinstance(entry, Mapping):
                if "_base_" not in entry or "others" not in entry:
                    raise ConfigError(f"svm_validation.{split} needs '_base_' and 'others'", origin_of(entry))
                datasets.check(merge_into(entry._base_, entry.others), f"svm_validation.{split}")
    check_values(config, job, model_cls if isinstance(model_cls, type) else None, world_size)
    check_point_counts(config, job)
