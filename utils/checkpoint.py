"""Checkpoint files: atomic writes, tolerant reads, strict loads with readable reports."""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from utils.cli import InputError

STRIP_PREFIXES = ("module.", "base_model.")


class CheckpointError(InputError, RuntimeError):
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


def write_json(path: str, data: Mapping[str, Any]) -> str:
    """``data`` (plain numbers, NumPy scalars and one-element tensors allowed) as indented JSON at
    ``path``, through :func:`atomic_write`. Returns ``path``."""
    text = json.dumps(plain_numbers(data), indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


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


# Which config key sets the width of a mis-shaped tensor, by the key's start (checked in order).
SHAPE_HINTS = (
    ("cls_head_finetune.8.", "cls_dim"),
    ("encoder.", "encoder_dims"),
    ("MAE_decoder.", "decoder_embed_dim"), ("decoder_pos_embed.", "decoder_embed_dim"),
    ("decoder_embed.", "decoder_embed_dim"), ("mask_token", "decoder_embed_dim"), ("increase_dim.", "decoder_embed_dim"),
    ("image_branch.", "image_branch.model / image_branch.model_kwargs"), ("inv_head.", "image_branch.model"),
)
BLOCK_INDEX = re.compile(r"(blocks\.)(\d+)(\.)")


# The point models whose sizes the hints name (other models, e.g. a timm image encoder: no hint).
POINT_MODELS = ("Inter_MAE", "Point_MAE", "PointTransformer", "PartSegTransformer", "PointEncoder", "MaskTransformer")


def _config_key(key: str, model_name: str, pretraining: bool) -> str:
    """The config key (or segmentation flag) that sets the shape of parameter ``key`` ('-': unknown)."""
    if model_name not in POINT_MODELS:
        return "-"
    bare = key[len("MAE_encoder."):] if key.startswith("MAE_encoder.") else key
    name = next((hint for prefix, hint in SHAPE_HINTS if bare.startswith(prefix)), "trans_dim")
    if model_name == "PartSegTransformer":
        return "--trans_dim"
    if name.startswith(("image_branch", "cls_dim")) or not pretraining:
        return f"model.{name}"
    return f"model.transformer_config.{name}"


def _block_counts(keys: Iterable[str]) -> Dict[str, int]:
    """``{'blocks.blocks': number of blocks, 'MAE_decoder.blocks': ...}`` of a list of keys."""
    counts: Dict[str, int] = {}
    for key in keys:
        m = BLOCK_INDEX.search(key)
        if m:
            stack = key[: m.start()] + m.group(1).rstrip(".")
            counts[stack] = max(counts.get(stack, 0), int(m.group(2)) + 1)
    return counts


def _compact(keys: Iterable[str]) -> List[str]:
    """Keys with those of one block collapsed: ``blocks.blocks.2.* (11 tensors)``."""
    groups: "OrderedDict[str, int]" = OrderedDict()
    for key in keys:
        m = BLOCK_INDEX.search(key)
        name = key[: m.end()] + "*" if m else key
        groups[name] = groups.get(name, 0) + 1
    return [f"{name} ({n} tensors)" if n > 1 else name for name, n in groups.items()]


@dataclass
class LoadReport:
    """What a state-dict load did. ``new``: missing keys that were expected (a new head)."""

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    new: List[str] = field(default_factory=list)
    model_name: str = "model"
    pretraining: bool = False

    @property
    def hard_missing(self) -> List[str]:
        return [k for k in self.missing if k not in set(self.new)]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 20, failed: bool = False) -> str:
        lines = [f"{len(self.loaded)} tensors fit" if failed else f"loaded {len(self.loaded)} tensors"]
        if self.new:
            lines.append(f"new (as expected): {', '.join(sorted({k.split('.')[0] for k in self.new}))} "
                         f"({len(self.new)} tensors)")
        for title, items in (("missing", self.hard_missing), ("unexpected", self.unexpected)):
            if items:
                groups = _compact(items)
                shown = ", ".join(groups[:limit]) + (f", ... ({len(groups) - limit} more)" if len(groups) > limit else "")
                lines.append(f"{len(items)} {title} keys: {shown}")
        if self.mismatched:
            lines.append(f"{len(self.mismatched)} tensors with other shapes:\n{self.shape_table()}")
        return "; ".join(lines)

    def shape_table(self) -> str:
        """The mis-shaped tensors as a table (key, checkpoint shape, model shape, config key to
        change; the blocks of a stack on one row), then one line naming the config keys with the
        checkpoint's sizes."""
        rows: "OrderedDict[Tuple[str, tuple, tuple], int]" = OrderedDict()
        for key, ckpt_shape, model_shape in self.mismatched:
            pattern = BLOCK_INDEX.sub(r"\1*\3", key)
            rows[(pattern, ckpt_shape, model_shape)] = rows.get((pattern, ckpt_shape, model_shape), 0) + 1
        table = [("key", "checkpoint", "model", "config key to change")]
        sizes: Dict[str, Dict[int, int]] = {}
        for (pattern, ckpt_shape, model_shape), count in rows.items():
            hint = _config_key(pattern, self.model_name, self.pretraining)
            table.append((pattern + (f" (x{count})" if count > 1 else ""), str(tuple(ckpt_shape)),
                          str(tuple(model_shape)), hint))
            if hint != "-" and ckpt_shape and model_shape and ckpt_shape[0] != model_shape[0]:
                votes = sizes.setdefault(hint, {})
                votes[ckpt_shape[0]] = votes.get(ckpt_shape[0], 0) + count
        widths = [max(len(r[c]) for r in table) for c in range(4)]
        lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        if sizes:
            guess = ", ".join(f"{hint} {max(votes, key=votes.get)}" for hint, votes in sizes.items())
            lines.append(f"  the checkpoint was trained with other sizes (probably {guess}): set them in the config, "
                         f"or use the config the checkpoint was trained with")
        return "\n".join(lines)

    def depth_hint(self) -> str:
        """One sentence when the checkpoint and the model have different numbers of blocks."""
        ckpt = _block_counts(self.loaded + [k for k, _, _ in self.mismatched] + self.unexpected)
        model = _block_counts(self.loaded + [k for k, _, _ in self.mismatched] + self.missing)
        parts = []
        for stack in sorted(set(ckpt) | set(model)):
            if ckpt.get(stack, 0) != model.get(stack, 0) and self.model_name in POINT_MODELS:
                key = "decoder_depth" if "decoder" in stack.lower() else "depth"
                where = ("--depth" if self.model_name == "PartSegTransformer" else
                         f"model.{'transformer_config.' if self.pretraining else ''}{key}")
                parts.append(f"{stack}: the checkpoint has {ckpt.get(stack, 0)} blocks, the model "
                             f"{model.get(stack, 0)} (set {where})")
        return "; ".join(parts)


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                            source: str = "<checkpoint>", ignore_missing: Iterable[str] = ()) -> LoadReport:
    """Load ``state_dict`` into ``model``.

    Strict (default): any missing or unexpected key raises CheckpointError with the list. Non-strict:
    loads what fits and returns the report. A tensor of another shape is always an error, with a
    table of the mis-shaped tensors and the config keys to change (:meth:`LoadReport.shape_table`).
    Missing keys that start with a prefix in ``ignore_missing`` (e.g. a freshly initialised head)
    are reported as ``new``, not errors.
    """
    own = model.state_dict()
    report = LoadReport(model_name=type(model).__name__, pretraining=hasattr(model, "MAE_encoder"))
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
    report.new = [k for k in report.missing if k.startswith(ignore_missing)] if ignore_missing else []
    depth = report.depth_hint()
    if report.mismatched or (strict and (report.hard_missing or report.unexpected)):
        # a tensor of another shape never loads, --partial_load or not: it means another model size
        raise CheckpointError(f"checkpoint '{source}' does not fit {type(model).__name__}: {report.summary(failed=True)}"
                              + (f"\n  {depth}" if depth else ""))
    model.load_state_dict(fitting, strict=False)
    return report
