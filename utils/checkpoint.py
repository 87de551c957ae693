"""Checkpoint files: atomic writes, tolerant reads, strict loads with readable reports."""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

STRIP_PREFIXES = ("module.", "base_model.")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model. The message names the file."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, permissions, ...); the previous file is intact.
    Also an OSError, so callers that caught the underlying error still catch it."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a truncated file. An
    OSError (disk full, permissions, ...) removes the temporary file and is raised as a
    :class:`CheckpointWriteError` (a CheckpointError and an OSError) whose one-line message says what failed, why, and that the previous
    file at ``path`` is intact (when there is one).
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path), dir=folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            why = e.strerror or str(e)
            kept = (f"the previous checkpoint at {path} is intact" if os.path.exists(path)
                    else f"no file was written at {path}")
            raise CheckpointWriteError(f"writing {path} failed: {why} (errno {e.errno}); {kept}") from e
        raise


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def plain_numbers(node: Any) -> Any:
    """Metrics for a checkpoint: dicts, lists and tuples rebuilt as plain dicts and lists, NumPy
    scalars and one-element tensors as Python numbers, so that ``torch.load`` reads them with
    ``weights_only=True``."""
    if isinstance(node, Mapping):
        return {k: plain_numbers(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain_numbers(v) for v in node]
    if isinstance(node, torch.Tensor) and node.numel() == 1:
        return node.item()
    if hasattr(node, "item") and type(node).__module__ == "numpy" and getattr(node, "shape", None) == ():
        return node.item()
    return node


SAFETENSORS_EXT = ".safetensors"


def config_json_path(path: str) -> str:
    """The JSON config written beside a ``.safetensors`` file: same folder, same stem, ``.json``."""
    return os.path.splitext(path)[0] + ".json"


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str, config: Optional[Mapping] = None,
                     metadata: Optional[Mapping[str, str]] = None) -> List[str]:
    """Write ``state_dict`` to a ``.safetensors`` file and, when ``config`` is given, the config as
    JSON beside it (:func:`config_json_path`); both atomically. Returns the written paths.

    Tensors are copied to contiguous CPU memory (safetensors refuses shared or strided storage);
    ``metadata`` (str -> str) goes into the safetensors header.
    """
    from safetensors.torch import save as safetensors_bytes

    if not str(path).endswith(SAFETENSORS_EXT):
        raise CheckpointError(f"'{path}': a safetensors file must end in '{SAFETENSORS_EXT}'")
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"cannot write '{path}': entries {bad[:10]} are not tensors (safetensors holds tensors only)")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    data = safetensors_bytes(tensors, metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)
    atomic_write(path, lambda f: f.write(data))
    written = [path]
    if config is not None:
        text = json.dumps(config, indent=2, sort_keys=False, default=str) + "\n"
        atomic_write(config_json_path(path), lambda f: f.write(text.encode("utf-8")))
        written.append(config_json_path(path))
    return written


def _safetensors_device(map_location: Any) -> str:
    if isinstance(map_location, (str, torch.device)):
        return str(map_location)
    return "cpu"  # callables and dicts of torch.load have no safetensors equivalent


def _load_safetensors(path: str, map_location: Any) -> Dict[str, Any]:
    from safetensors.torch import load_file

    try:
        state = load_file(path, device=_safetensors_device(map_location))
    except Exception as e:  # not a safetensors file, truncated header, ...
        raise CheckpointError(f"safetensors file '{path}' could not be read: {type(e).__name__}: {e}") from None
    ckpt: Dict[str, Any] = {"base_model": OrderedDict(state)}
    json_path = config_json_path(path)
    if os.path.isfile(json_path):
        try:
            with open(json_path, "r", encoding="utf-8") as f:
                ckpt["config"] = json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"config '{json_path}' beside '{path}' is not valid JSON: {e}") from None
    return ckpt


def load_checkpoint_file(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint dict; a missing or unreadable file raises CheckpointError naming it.

    ``.safetensors``: weights only, returned as ``{'base_model': state_dict}``, plus
    ``'config'`` (the parsed JSON) when a same-stem ``.json`` lies beside it.
    Other files: ``torch.load`` with ``weights_only=True`` (every checkpoint this code writes
    loads so); files holding other Python objects (checkpoints of earlier versions, whose RNG
    states held NumPy arrays, and of other code bases) are read with full unpickling instead --
    load only checkpoints you trust.
    """
    if path is None or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file '{path}' does not exist")
    if str(path).endswith(SAFETENSORS_EXT):
        return _load_safetensors(path, map_location)
    try:
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:  # holds objects other than tensors and plain types
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # corrupt zip, truncated pickle, ...
        raise CheckpointError(f"checkpoint file '{path}' could not be read: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"checkpoint file '{path}' holds a {type(ckpt).__name__}, expected a dict")
    return dict(ckpt)


def clean_state_dict(state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """Strip DataParallel/DDP ``module.`` and released ``base_model.`` prefixes (repeatedly)."""
    out = OrderedDict()
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        out[key] = value
    return out


def state_dict_of(ckpt: Mapping[str, Any], path: str = "<checkpoint>") -> "OrderedDict[str, Any]":
    """The model weights of a checkpoint dict, cleaned: ``base_model`` (ours and the released
    runners'), ``model_state_dict`` (the released segmentation script's), ``state_dict_ema`` (timm's),
    ``state_dict`` or ``model``; or the dict itself when it holds only tensors."""
    for key in ("base_model", "model_state_dict", "state_dict_ema", "state_dict", "model"):
        if key in ckpt and isinstance(ckpt[key], Mapping):
            return clean_state_dict(ckpt[key])
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return clean_state_dict(ckpt)
    raise CheckpointError(f"checkpoint '{path}' has no 'base_model' / 'model' / 'state_dict' entry (keys: {sorted(ckpt)[:10]})")


@dataclass
class LoadReport:
    """What a state-dict load did."""

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 20) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
                lines.append(f"{len(items)} {title} keys: {shown}")
        if self.mismatched:
            shown = ", ".join(f"{k} (checkpoint {a}, model {b})" for k, a, b in self.mismatched[:limit])
            lines.append(f"{len(self.mismatched)} keys with mismatched shapes: {shown}")
        return "; ".join(lines)


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                            source: str = "<checkpoint>", ignore_missing: Iterable[str] = ()) -> LoadReport:
    """Load ``state_dict`` into ``model``.

    Strict (default): any missing, unexpected or shape-mismatched key raises CheckpointError with
    the full list. Non-strict: loads what fits and returns the report. Missing keys that start
    with a prefix in ``ignore_missing`` (e.g. a freshly initialised head) are reported, not errors.
    """
    own = model.state_dict()
    report = LoadReport()
    ignore_missing = tuple(ignore_missing)
    fitting = OrderedDict()
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            fitting[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in state_dict]
    hard_missing = [k for k in report.missing if not k.startswith(ignore_missing)] if ignore_missing else report.missing
    if strict and (hard_missing or report.unexpected or report.mismatched):
        raise CheckpointError(f"checkpoint '{source}' does not fit {type(model).__name__}: {report.summary()}")
    model.load_state_dict(fitting, strict=False)
    return report
