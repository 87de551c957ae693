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

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Tuple

import yaml
from easydict import EasyDict

from extensions.pointops import FPS_BACKENDS
from models.layers import DEFAULT_EMBED_COMPUTE, EMBED_COMPUTE_MODES
from utils.logger import print_log
from utils.schema import ConfigError, Schema, _set_origin, check_keys, did_you_mean, merge_into, origin_of, to_plain
from utils.text import quoted

REPO_ROOT = Path(__file__).resolve().parent.parent


# Top-level keys a training config may have, with what they mean. Unknown keys are errors.
TOP_LEVEL_KEYS = {
    "optimizer": "{type: AdamW|Adam|SGD, kwargs: {...}}",
    "scheduler": "{type: CosLR|none, kwargs: {epochs, initial_epochs, lr_min, warmup_lr_init}}",
    "dataset": "{train, val, test, ...: {_base_: dataset yaml, others: {...}}}",
    "model": "{NAME: registered model, ...}",
    "npoints": "points per sample fed to the model",
    "total_bs": "global batch size (split across processes)",
    "step_per_update": "gradient accumulation steps",
    "max_epoch": "number of epochs",
    "grad_norm_clip": "clip gradients to this L2 norm (0 or absent: no clipping)",
    "amp": "mixed precision: off | bf16 | fp16 (true = bf16)",
    "ckpt_period": "also keep ckpt-epoch-XXX (XXX: the 0-based epoch) every this many epochs from ckpt_from "
                   "(0: never; pre-training default 10, as released)",
    "ckpt_from": "first epoch (0-based) of ckpt_period's copies (pre-training default 250, as released)",
    "fps_backend": "farthest point sampling on CUDA: auto | torch | triton | pointnet2_ops",
    "embed_compute": "patch-embedding arithmetic: fast (default) | exact (the released order of operations)",
    "svm_validation": "linear-SVM validation of pre-trained features during pre-training",
    "epoch_count": "released (default: epochs 0..max_epoch, as the released loops) | exact (max_epoch epochs)",
    "lr_schedule": "exact (default: epoch e at cosine(e)) | released (the released one-epoch lag)",
    "seg_root": "part segmentation (segmentation/main.py --root): the ShapeNetPart folder",
    "parts": "part segmentation of a folder (model.NAME: PartSegTransformer): {names, categories, category_parts}, "
             "set from the training folder when the run starts",
    "bn_recalibration": "BatchNorm statistics recomputed over training batches with the current weights before "
                        "they are used (validation, the last epoch, checkpoint copies): auto (default: while the "
                        "initial statistics are more than 1 % of a running variance) | on | off",
    "voting": "{times: 10, repeats: 299, above: 92.1, above_if_best: 91.0}: voting passes, --test repeats, "
              "fine-tuning thresholds",
}


# Top-level keys each job needs.
JOB_REQUIRED_KEYS = {
    "pretrain": ("model", "dataset", "optimizer", "max_epoch", "total_bs"),
    "finetune": ("model", "dataset", "optimizer", "max_epoch", "total_bs", "npoints"),
    "test": ("model", "dataset", "npoints"),
    "partseg": ("model", "optimizer", "max_epoch", "total_bs", "npoints", "seg_root"),
    "partseg_test": ("model", "npoints", "seg_root"),
}


OPTIMIZER_SCHEMA = Schema(required=("type", "kwargs"), optional=("part",))
OPTIMIZER_TYPES = ("AdamW", "Adam", "SGD")  # engine.builder.build_opti_sche
SCHEDULER_TYPES = ("CosLR", "none", None)
# CosLR, the only schedule the released configs use; kwargs.epochs defaults to max_epoch (see resolve_schedule_length).
SCHEDULER_SCHEMA = Schema(required=("type",), sections={
    "kwargs": Schema(optional=("epochs", "initial_epochs", "lr_min", "warmup_lr_init"))})
SVM_SCHEMA = Schema(optional=("enabled", "train", "test", "C", "freq"))
# The released linear-SVM protocol's data (ModelNet40SVM: modelnet40_ply_hdf5_2048, 1024 points) and
# LinearSVC C (sklearn's default, which the released LinearSVC() used).
SVM_DEFAULT_DATASET = "cfgs/dataset_configs/ModelNet40SVM.yaml"
SVM_DEFAULT_NPOINTS = 1024
SVM_DEFAULT_C = 1.0
# ``voting`` (top-level key of fine-tuning configs): the released figures (tools/runner_finetune.py:
# validate_vote / test_vote times=10, run_net's thresholds 92.1 and 91, test's range(1, 300)).
VOTING_DEFAULTS = {"times": 10, "repeats": 299, "above": 92.1, "above_if_best": 91.0}
VOTING_SCHEMA = Schema(optional=tuple(VOTING_DEFAULTS))
# Top-level sections with a schema of their own (model and dataset sections: their registries).
SECTION_SCHEMAS = {"optimizer": OPTIMIZER_SCHEMA, "scheduler": SCHEDULER_SCHEMA, "svm_validation": SVM_SCHEMA,
                   "voting": VOTING_SCHEMA}


# ----------------------------------------------------------------------------------- loading
def resolve_base_path(path: str, including_file: str) -> Path:
    """``_base_`` paths are relative to the working directory in the released configs; we also
    accept them relative to the repository root and to the including file."""
    candidates = [Path(path), REPO_ROOT / path, Path(including_file).parent / path]
    for cand in candidates:
        try:
            if cand.is_file():
                return cand
        except OSError:  # a name too long for the file system, and the like: not a file here
            continue
    raise ConfigError(f"_base_ file '{path}' not found (looked in the working directory, {REPO_ROOT} and "
                      f"{Path(including_file).parent})", including_file)


MAX_YAML_NODES = 100_000  # nodes of one YAML file with its aliases expanded (the released configs: < 200)
MAX_BASE_DEPTH = 32  # nested _base_ includes


def safe_yaml_load(stream, source: str) -> Any:
    """``yaml.safe_load(stream)``, refusing what a YAML file can make explode: more than
    :data:`MAX_YAML_NODES` nodes once its aliases are expanded (an alias bomb: a few hundred bytes
    of nested ``*alias`` lists that expand to billions of entries), an alias used inside its own
    anchor, nesting deeper than the parser's stack. The document is composed (a graph in which an
    alias is one shared node), counted, then built. A ConfigError naming ``source``."""
    loader = yaml.SafeLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        nodes = _expanded_nodes(node, MAX_YAML_NODES, source)
        if nodes > MAX_YAML_NODES:
            raise ConfigError(f"the YAML expands to more than {MAX_YAML_NODES:,} values once its aliases (*name) are "
                              f"expanded (an alias bomb?); a config holds a few hundred", source)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply", source) from None
    finally:
        loader.dispose()


def _expanded_nodes(root: yaml.Node, limit: int, source: str) -> int:
    """The nodes of ``root`` with every alias expanded (shared nodes counted each time they are
    used), counting stops above ``limit``. An alias inside its own anchor is a ConfigError."""
    done: dict = {}
    active: set = set()

    def count(node: yaml.Node) -> int:
        key = id(node)
        if key in done:
            return done[key]
        if key in active:
            raise ConfigError(f"the YAML uses an alias inside its own anchor (line {node.start_mark.line + 1}): a "
                              f"value that contains itself", source)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            total += count(child)
            if total > limit:
                break
        active.discard(key)
        done[key] = total
        return total

    return count(root)


def yaml_error_line(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line: the problem and its line / column, then the context (PyYAML's own
    text spans several lines, with the file name and a snippet of the text repeated)."""
    def at(mark, name_file: bool = False) -> str:
        if mark is None:
            return ""
        named = name_file and getattr(mark, "name", None) not in (None, "", "<unicode string>")
        where = f' in "{mark.name}",' if named else " at"  # PyYAML's own wording for the error's position
        return f"{where} line {mark.line + 1}, column {mark.column + 1}"

    problem = getattr(error, "problem", None)
    if not problem:
        return " ".join(str(error).split())
    text = f"{problem}{at(getattr(error, 'problem_mark', None), name_file=True)}"
    context = getattr(error, "context", None)
    if context:
        text += f" ({context}{at(getattr(error, 'context_mark', None))})"
    return " ".join(text.split())


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    import io

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # whole file at once: the error's offset is the file's byte offset
    except UnicodeDecodeError as e:  # a binary file, a Latin-1 or UTF-16 config
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"config file is not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset {e.start} "
                          f"(line {line}) cannot be decoded ({e.reason}); save it as UTF-8", str(path)) from None
    stream = io.StringIO(text)
    stream.name = str(path)  # YAML error messages name the file
    try:
        data = safe_yaml_load(stream, str(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file is not valid YAML: {yaml_error_line(e)}", str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top of the config, got {type(data).__name__}", str(path))
    return data


def merge_new_config(config: EasyDict, new_config: Mapping, source: str, including: Tuple[str, ...] = ()) -> EasyDict:
    """Merge ``new_config`` (loaded from ``source``) into ``config``, expanding ``_base_`` entries.
    ``including``: the files whose ``_base_`` led here (a file that includes itself, directly or
    not, is a ConfigError naming the cycle)."""
    including = including or (os.path.realpath(source),)
    for key, val in new_config.items():
        if not isinstance(key, str):  # e.g. `kwargs: {0.0005, weight_decay: 0.05}`: a value without its key
            raise ConfigError(f"key {quoted(key)} is a {type(key).__name__}; config keys are names (a value written "
                              f"without its key?)", source)
        if not isinstance(val, dict):
            if key == "_base_":
                base_path = resolve_base_path(str(val), source)
                real = os.path.realpath(base_path)
                if real in including or len(including) >= MAX_BASE_DEPTH:
                    chain = " -> ".join(os.path.basename(p) for p in including + (real,))
                    why = "includes itself" if real in including else f"nests more than {MAX_BASE_DEPTH} _base_ files"
                    raise ConfigError(f"_base_ '{val}' {why}: {chain}", source)
                base = EasyDict()
                merge_new_config(base, _load_yaml(base_path), str(base_path), including + (real,))
                _set_origin(base, str(base_path))
                config[key] = base
            else:
                config[key] = val
            continue
        if key not in config or not isinstance(config[key], dict):
            config[key] = EasyDict()
        merge_new_config(config[key], val, source, including)
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


# (key, integer, low, low_open): the top-level numbers.
TOP_LEVEL_NUMBERS = (("max_epoch", True, 0, False), ("total_bs", True, 0, True), ("step_per_update", True, 1, False),
                     ("grad_norm_clip", False, 0, False), ("npoints", True, 1, False), ("ckpt_period", True, 0, False),
                     ("ckpt_from", True, 0, False))
DATASET_BOOLS = ("USE_NORMALS",)
# ``N_POINTS: auto`` (the smallest file's count, resolved when the run starts): datasets that read a folder of files.
AUTO_POINTS = "auto"
AUTO_POINTS_DATASETS = ("PointCloudFolder",)
# Top-level keys that take one of a few words: key -> the allowed words, the default first. The one
# list of each: check_values checks the config with it, the flags of utils/parser.py offer it, and
# utils/settings.py resolves the settings with it. The ops define their own words (FPS_BACKENDS,
# EMBED_COMPUTE_MODES), taken from there.
CHOICE_KEYS = {"epoch_count": ("released", "exact"), "lr_schedule": ("exact", "released"),
               "embed_compute": (DEFAULT_EMBED_COMPUTE,) + tuple(m for m in EMBED_COMPUTE_MODES if m != DEFAULT_EMBED_COMPUTE),
               "fps_backend": FPS_BACKENDS, "amp": ("off", "bf16", "fp16"),
               "bn_recalibration": ("auto", "on", "off")}
# Keys whose words YAML 1.1 reads as booleans (amp: true = bf16; bn_recalibration: on / off).
BOOLEAN_WORDS = {"amp": {True: "bf16", False: "off"}, "bn_recalibration": {True: "on", False: "off"}}
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
    for key, integer, low, low_open in TOP_LEVEL_NUMBERS:
        check_number(config, key, key, integer=integer, low=low, low_open=low_open,
                     allow_none=key in ("grad_norm_clip", "ckpt_period"))
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
DATA_ROOT_ENV = "DATA_ROOT"


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


# --------------------------------------------------------------------------- run configs
RUN_CONFIG = "config.yaml"


def run_config_of(ckpt_path: str) -> Optional[str]:
    """The config saved with a checkpoint: ``config.yaml`` in its run directory, or the ``.json``
    beside a ``.safetensors`` export. None when there is neither."""
    candidates = [os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), RUN_CONFIG)]
    if str(ckpt_path).endswith(".safetensors"):
        candidates.insert(0, os.path.splitext(ckpt_path)[0] + ".json")
    return next((c for c in candidates if os.path.isfile(c)), None)


def load_config(path: str, opts: Iterable[str] = (), data_root: Optional[str] = None, models=None, datasets=None,
                logger=None, schedule: bool = False) -> EasyDict:
    """A command's config: ``path`` (with ``_base_`` files), then ``--opts`` (see :func:`apply_opts`),
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
    expand_svm_section(config)
    root, source = resolve_data_root(data_root)
    apply_data_root(config, root, source, logger=logger)
    return config


def svm_default_entry(subset: str) -> EasyDict:
    """A ``svm_validation.train`` / ``.test`` entry of the released protocol (``_base_`` unloaded)."""
    return EasyDict({"_base_": SVM_DEFAULT_DATASET, "others": {"subset": subset, "npoints": SVM_DEFAULT_NPOINTS}})


def expand_svm_section(config: Mapping) -> None:
    """Fill a config's ``svm_validation`` in once, at load time: the released protocol's entries
    where ``train`` / ``test`` are absent, every ``_base_`` path replaced by its file's contents (so
    the data root applies to them and validation never reads the YAML again)."""
    svm = config.get("svm_validation")
    if not isinstance(svm, Mapping):
        return
    source = origin_of(svm) or origin_of(config) or "."
    for split in ("train", "test"):
        if svm.get(split) is None:
            svm[split] = svm_default_entry(split)
            _set_origin(svm[split], source)
        entry = svm[split]
        if isinstance(entry, Mapping) and isinstance(entry.get("_base_"), str):
            entry["_base_"] = cfg_from_yaml_file(resolve_base_path(entry["_base_"], source))


# ------------------------------------------------------------------------------------- resume
# Keys of the model section that may change when a run is resumed: they change what the next steps
# do, not the shape of any parameter or optimizer state. Any other model key is refused.
RESUMABLE_MODEL_KEYS = ("transformer_config.mask_ratio", "transformer_config.mask_type",
                        "transformer_config.drop_path_rate", "drop_path_rate", "label_smoothing", "loss", "init",
                        "image_branch.weight", "image_branch.temperature", "image_branch.trainable")


def config_changes(old: Any, new: Any, prefix: str = "") -> list:
    """``[(dotted key, old value, new value), ...]`` where two configs differ (missing: None)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += config_changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    old, new = to_plain(old), to_plain(new)
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def check_resume_changes(changes: list, source: str) -> None:
    """Refuse a resumed run's changes that cannot apply mid-run: the model's shape (any ``model.``
    key but :data:`RESUMABLE_MODEL_KEYS`) and ``optimizer.type``, naming the key."""
    for key, old, new in changes:
        fixed = (key.startswith("model.") and key[len("model."):] not in RESUMABLE_MODEL_KEYS) or key == "optimizer.type"
        if fixed:
            raise ConfigError(f"--resume cannot change '{key}' ({quoted(old)} -> {quoted(new)}): the checkpoint's weights and "
                              f"optimizer state were made for {quoted(old)}; start a new run (another --exp_name, or "
                              f"--ckpts / --start_ckpts for its weights) to change it", source)


def save_run_config(folder: str, config: Mapping, keep_previous: bool = False, logger=None) -> str:
    """Write ``config`` to ``<folder>/config.yaml`` atomically; with ``keep_previous`` an existing one is
    first renamed ``config.resume-<N>.yaml`` (N = 1, 2, ...). Returns the path."""
    from utils.checkpoint import atomic_write

    path = os.path.join(folder, RUN_CONFIG)
    if keep_previous and os.path.exists(path):
        n = 1
        while os.path.exists(os.path.join(folder, f"config.resume-{n}.yaml")):
            n += 1
        os.replace(path, os.path.join(folder, f"config.resume-{n}.yaml"))
        print_log(f"Config: the previous config.yaml is kept as config.resume-{n}.yaml", logger=logger)
    text = yaml.safe_dump(to_plain(config), sort_keys=False, allow_unicode=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    print_log(f"Config written to {path}", logger=logger)
    return path
