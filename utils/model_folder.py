"""The shareable model folder (the Hugging Face convention) and Hub model ids.

A model folder holds three files:

- ``config.json``: what building and using the model needs (:func:`check_folder_config`):
  ``model_type`` (``inter-mae``), ``format_version``, ``architectures`` (the model ``NAME``), ``task``
  (``classification``, ``pretraining``, ``encoder``, ``segmentation``), ``class_names``,
  ``preprocessing`` (``N_POINTS``, ``npoints``, ``sample_seed``, ``normalization``, ``sampling``),
  ``config`` (the run's resolved config), ``metrics``, ``best_metrics``, ``epoch``, ``version``;
- ``model.safetensors``: the weights, named as in the run's checkpoint (``base_model``);
- ``README.md``: the model card (``engine/export.py`` writes all three).

:func:`utils.checkpoint.load_checkpoint_file` reads a folder like a checkpoint file (weights only,
never a pickle), so every ``--ckpts`` takes one. :func:`resolve_model_path` turns a Hub model id
(``ORG/NAME``, ``ORG/NAME@REVISION`` or ``hf-hub:ORG/NAME``) into a local folder through
``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, revisions; no code is ever downloaded).
The same ``config.json`` content rides in an exported ONNX file's metadata (``engine/onnx_runtime.py``).
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from utils.cli import InputError
from utils.limits import check_count
from utils.text import ClassNamesError, check_class_names, quoted

MODEL_TYPE = "inter-mae"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
TASKS = ("classification", "pretraining", "encoder", "segmentation")
NORMALIZATION = "unit_sphere"  # datasets.common.pc_normalize: centred, scaled into the unit sphere
SAMPLING = "fps"               # extensions.pointops.fps from point 0 (engine.finetune.fps_to)
MAX_CONFIG_BYTES = 8 << 20     # a config.json is a few KB; a larger one is not read
HUB_PREFIX = "hf-hub:"         # timm's and open_clip's prefix of a Hub model id
# ORG/NAME as the Hub spells repository ids (huggingface_hub.utils.validate_repo_id), optional @REVISION
_REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96})(?:@(?P<rev>[\w./-]{1,256}))?$")
_FILE_EXTS = (".pth", ".pt", ".tar", ".safetensors", ".onnx", ".json", ".ckpt", ".bin")


class ModelFolderError(InputError, ValueError):
    """A model folder, its ``config.json`` or a Hub model id cannot be used; the message names it."""


def is_model_folder(path: Any) -> bool:
    """Whether ``path`` is a folder holding a ``config.json`` (a model folder to read, or a broken one)."""
    return path is not None and os.path.isdir(str(path)) and os.path.isfile(os.path.join(str(path), CONFIG_NAME))


# ------------------------------------------------------------------------------ preprocessing
def _entry_of(run_cfg: Mapping) -> Mapping:
    """The merged ``_base_`` + ``others`` of the test (else val, else train) dataset entry."""
    datasets = run_cfg.get("dataset") or {}
    for split in ("test", "val", "train"):
        node = datasets.get(split) if isinstance(datasets, Mapping) else None
        if isinstance(node, Mapping):
            base = node.get("_base_") if isinstance(node.get("_base_"), Mapping) else {}
            others = node.get("others") if isinstance(node.get("others"), Mapping) else {}
            return {**base, **others}
    return {}


def preprocessing_of(run_cfg: Mapping, default_n_points: int = 2048, auto_points: int = 0) -> Dict[str, Any]:
    """What prediction does to a file before the model, from a run config: ``N_POINTS`` read per
    file (the test, else val, else train dataset entry; ``auto`` gives ``max(auto_points, npoints)``),
    ``npoints`` after FPS (top-level ``npoints``, default 1024), ``sample_seed``, and the fixed
    ``normalization`` / ``sampling``. The rule of ``engine.predict.Predictor.from_checkpoint``."""
    entry = _entry_of(run_cfg)
    npoints = int(run_cfg.get("npoints") or 1024)
    auto = str(entry.get("N_POINTS")).strip().lower() == "auto"
    n_points = max(auto_points, npoints) if auto else int(entry.get("N_POINTS") or max(default_n_points, npoints))
    return {"N_POINTS": n_points, "npoints": npoints, "sample_seed": int(entry.get("sample_seed") or 0),
            "normalization": NORMALIZATION, "sampling": SAMPLING}


# ------------------------------------------------------------------------------ config.json
def _need(node: Mapping, key: str, kinds: tuple, source: str, what: str) -> Any:
    value = node.get(key)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise ModelFolderError(f"{source}: '{key}' is {type(value).__name__} {quoted(value, 60)}; expected {what}")
    return value


def check_folder_config(data: Any, source: str) -> Dict[str, Any]:
    """``data`` (a parsed ``config.json`` or ONNX metadata) checked: types and words of every key
    the loaders read, the class names, the preprocessing numbers (positive integers; ``npoints``
    at most ``N_POINTS``). The model config itself is checked like a checkpoint's where the model
    is built (``engine.model_check``). One-line :class:`ModelFolderError` naming ``source``."""
    if not isinstance(data, Mapping):
        raise ModelFolderError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if data.get("model_type") != MODEL_TYPE:
        raise ModelFolderError(f"{source}: 'model_type' is {quoted(data.get('model_type'), 60)}; expected "
                               f"'{MODEL_TYPE}' (a model folder written by tools/export_weights.py --hf)")
    version = _need(data, "format_version", (int,), source, "an integer")
    if not 1 <= version <= FORMAT_VERSION:
        raise ModelFolderError(f"{source}: 'format_version' {version} is not one this code reads "
                               f"(1..{FORMAT_VERSION}); update the project")
    task = data.get("task")
    if task not in TASKS:
        raise ModelFolderError(f"{source}: 'task' is {quoted(task, 60)}; expected one of {list(TASKS)}")
    config = _need(data, "config", (dict,), source, "the run's config (a JSON object)")
    _need(config, "model", (dict,), f"{source}: 'config'", "the model section (a JSON object)")
    names = data.get("class_names")
    if names is not None:
        try:
            check_class_names(names)
        except ClassNamesError as e:
            raise ModelFolderError(f"{source}: 'class_names' {e}") from None
    if task == "classification" and not names:
        raise ModelFolderError(f"{source}: a classification model needs 'class_names' (a list of strings)")
    prep = _need(data, "preprocessing", (dict,), source, "a JSON object")
    for key in ("N_POINTS", "npoints", "sample_seed"):
        value = _need(prep, key, (int,), f"{source}: 'preprocessing'", "an integer")
        if value < (0 if key == "sample_seed" else 1):
            raise ModelFolderError(f"{source}: 'preprocessing.{key}' is {value}; expected a "
                                   f"{'non-negative' if key == 'sample_seed' else 'positive'} integer")
    for key in ("N_POINTS", "npoints"):  # what every file read allocates (an ONNX file's metadata too)
        check_count(prep[key], "points", f"{source}: 'preprocessing.{key}'")
    if prep["npoints"] > prep["N_POINTS"]:
        raise ModelFolderError(f"{source}: 'preprocessing.npoints' {prep['npoints']} is larger than "
                               f"'preprocessing.N_POINTS' {prep['N_POINTS']}")
    for key, word in (("normalization", NORMALIZATION), ("sampling", SAMPLING)):
        if prep.get(key) != word:
            raise ModelFolderError(f"{source}: 'preprocessing.{key}' is {quoted(prep.get(key), 60)}; "
                                   f"expected '{word}' (the only one this code does)")
    for key in ("metrics", "best_metrics"):
        node = data.get(key)
        if node is not None and not (isinstance(node, dict) and all(
                isinstance(v, (int, float, str, list, dict, type(None))) for v in node.values())):
            raise ModelFolderError(f"{source}: '{key}' is {quoted(node, 60)}; expected a JSON object of figures")
    command = data.get("command")
    if command is not None and not (isinstance(command, list) and all(isinstance(c, str) for c in command)):
        raise ModelFolderError(f"{source}: 'command' is {quoted(command, 60)}; expected a list of command lines")
    if data.get("data") is not None and not isinstance(data.get("data"), dict):
        raise ModelFolderError(f"{source}: 'data' is {quoted(data.get('data'), 60)}; expected a JSON object")
    return dict(data)


def _finite_json(text: str, source: str) -> Any:
    def refuse(word: str):
        raise ModelFolderError(f"{source}: '{word}' is not JSON (a number must be finite)")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise ModelFolderError(f"{source} is not valid JSON: nested too deeply") from None
    except ValueError as e:
        if isinstance(e, ModelFolderError):
            raise
        raise ModelFolderError(f"{source} is not valid JSON: {e}") from None


def parse_folder_config(text: str, source: str) -> Dict[str, Any]:
    """A ``config.json`` text parsed (finite numbers only) and checked (:func:`check_folder_config`)."""
    return check_folder_config(_finite_json(text, source), source)


def read_folder_config(folder: str) -> Dict[str, Any]:
    """The checked ``config.json`` of a model folder (at most :data:`MAX_CONFIG_BYTES`)."""
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ModelFolderError(f"'{folder}' is a folder without {CONFIG_NAME}; expected a checkpoint file or a model "
                               f"folder ({', '.join(FOLDER_FILES)}: tools/export_weights.py --hf)")
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise ModelFolderError(f"'{path}' is {size} bytes; a model folder's {CONFIG_NAME} is at most "
                               f"{MAX_CONFIG_BYTES} bytes")
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"'{path}' could not be read: {type(e).__name__}: {e}") from None
    return parse_folder_config(text, path)


def folder_weights(folder: str) -> str:
    """The ``model.safetensors`` of a model folder (a folder without one is an error)."""
    path = os.path.join(folder, WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise ModelFolderError(f"model folder '{folder}' holds no {WEIGHTS_NAME} (expected {', '.join(FOLDER_FILES)})")
    return path


def checkpoint_entries(data: Mapping[str, Any]) -> Dict[str, Any]:
    """The entries of a checkpoint dict that a folder's checked config gives: ``config``,
    ``class_names``, ``metrics``, ``best_metrics``, ``epoch``, ``job`` (the weights come from
    ``model.safetensors``)."""
    return {"config": data["config"], "class_names": data.get("class_names"), "metrics": data.get("metrics") or {},
            "best_metrics": data.get("best_metrics") or {}, "epoch": data.get("epoch", -1),
            "job": {"classification": "finetune", "pretraining": "pretrain"}.get(data["task"], data["task"]),
            "preprocessing": data["preprocessing"], "command": data.get("command") or [], "data": data.get("data") or {}}


def check_preprocessing(data: Mapping[str, Any], run_cfg: Mapping, source: str, auto_points: int = 0) -> None:
    """The ``preprocessing`` entry must be what the run config gives (:func:`preprocessing_of`);
    the loaders use the run config, so an edited entry that says otherwise is refused."""
    try:
        want = preprocessing_of(run_cfg, auto_points=auto_points)
    except (TypeError, ValueError) as e:  # N_POINTS: "many", npoints: [1], ...
        raise ModelFolderError(f"{source}: the point counts of its 'config' (npoints, the dataset's N_POINTS, "
                               f"sample_seed) are not integers: {e}") from None
    have = data.get("preprocessing") or {}
    auto = str(_entry_of(run_cfg).get("N_POINTS")).strip().lower() == "auto"  # the exporter's choice, >= npoints
    diff = [k for k in ("N_POINTS", "npoints", "sample_seed") if have.get(k) != want[k] and not (auto and k == "N_POINTS")]
    if diff:
        k = diff[0]
        raise ModelFolderError(f"{source}: 'preprocessing.{k}' is {have.get(k)} but its 'config' gives {want[k]}; "
                               f"the two must agree")


# ---------------------------------------------------------------------------- Hub model ids
def parse_hub_id(name: str) -> Optional[Tuple[str, Optional[str]]]:
    """``(repo_id, revision)`` when ``name`` is a Hub model id: ``hf-hub:ORG/NAME[@REV]``, or a bare
    ``ORG/NAME[@REV]`` that is no local path and has no checkpoint-file extension; else None."""
    text = str(name)
    explicit = text.startswith(HUB_PREFIX)
    if explicit:
        text = text[len(HUB_PREFIX):]
    elif os.path.exists(text) or text.lower().endswith(_FILE_EXTS):
        return None
    m = _REPO_ID.match(text)
    if not m:
        if explicit:
            raise ModelFolderError(f"'{name}' is not a Hub model id; expected {HUB_PREFIX}ORG/NAME or "
                                   f"{HUB_PREFIX}ORG/NAME@REVISION")
        return None
    return m.group("repo"), m.group("rev")


def resolve_model_path(name: Any, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> str:
    """A local path for ``name``: itself when it exists (file or folder) or is no Hub model id,
    else the Hub model's folder in the ``huggingface_hub`` cache (``snapshot_download`` of the
    three folder files only; offline with ``HF_HUB_OFFLINE=1``, then from the cache alone).
    ``revision`` (a branch, tag or commit) overrides an ``@REV`` in ``name``."""
    if name is None:
        return name
    parsed = parse_hub_id(str(name))
    if parsed is None:
        return str(name)
    repo_id, rev = parsed
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - a dependency of timm
        raise ModelFolderError(f"'{name}' is no local file or folder; loading it from the Hugging Face Hub needs "
                               f"huggingface_hub (pip install huggingface_hub)") from None
    try:
        folder = snapshot_download(repo_id, revision=revision or rev, cache_dir=cache_dir,
                                   allow_patterns=list(FOLDER_FILES))
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OSError, ValueError) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ModelFolderError(f"'{name}' is no local file or folder, and as a Hugging Face Hub model "
                               f"(repo '{repo_id}', revision '{revision or rev or 'main'}') it could not be "
                               f"loaded: {type(e).__name__}: {first[:300]}") from None
    return folder


def plain_json(value: Any) -> Any:
    """``value`` with tuples as lists and non-finite floats as None (JSON without NaN / Infinity)."""
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["MODEL_TYPE", "FORMAT_VERSION", "CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "FOLDER_FILES", "TASKS",
           "ModelFolderError", "is_model_folder", "preprocessing_of", "check_folder_config", "parse_folder_config",
           "read_folder_config", "folder_weights", "checkpoint_entries", "check_preprocessing", "parse_hub_id",
           "resolve_model_path", "plain_json"]
