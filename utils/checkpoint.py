"""Checkpoint files: atomic writes, tolerant reads, strict loads with readable reports."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from utils.cli import InputError

STRIP_PREFIXES = ("module.", "base_model.")


class CheckpointError(InputError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model. The message names the file."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint's pickle calls or builds a Python object outside the safe-load allowlist (tensors,
    plain types, :data:`NUMPY_SAFE_GLOBALS`): refused unless the user trusts the file."""


class NoWeightsError(CheckpointError):
    """A checkpoint dict holds no state dict (:func:`state_dict_of`)."""


class RemapError(CheckpointError):
    """A ``checkpoint_filter_fn`` cannot map a state dict to its model's layout. The message says
    why, after the words "checkpoint 'FILE'", which :func:`load_weights` puts before it."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, permissions, ...); the previous file is intact.
    Also an OSError, so callers that caught the underlying error still catch it."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


TMP_PREFIX = ".tmp-"  # atomic_write's temporary files: TMP_PREFIX + target name + mkstemp's 8 random characters
TMP_NAME = re.compile(r"^" + re.escape(TMP_PREFIX) + r".+[a-z0-9_]{8}$")
# A RuntimeError of torch's zip writer (torch.save), e.g. "[enforce fail at inline_container.cc:672] . unexpected
# pos 704 vs 598" when the disk fills up: a failed write, as an OSError would be.
TORCH_WRITE_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|unexpected pos|file write failed", re.I)
NEARLY_FULL_BYTES = 64 * 2 ** 20  # less free space than this when a write fails: "no space left on device"


def _free_bytes(folder: str) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _is_write_failure(e: BaseException, free: Optional[int]) -> bool:
    """An OSError, or a RuntimeError from torch's writer (or any RuntimeError when the disk is full)."""
    if isinstance(e, InputError):
        return False
    if isinstance(e, OSError):
        return True
    return isinstance(e, RuntimeError) and (bool(TORCH_WRITE_FAILURE.search(str(e)))
                                            or (free is not None and free < NEARLY_FULL_BYTES))


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a truncated file (a kill
    may leave the temporary ``.tmp-<name>XXXXXXXX``; :func:`remove_orphan_temporaries` removes it).
    A failed write -- an OSError (disk full, permissions, ...) or a RuntimeError of torch's writer
    (``torch.save`` on a full disk raises "[enforce fail at inline_container.cc:...] unexpected pos
    ...") -- removes the temporary file and is raised as a :class:`CheckpointWriteError` (a
    CheckpointError and an OSError) whose one-line message says what failed, why ("no space left
    on device" when the folder's file system is (nearly) full, else the error's first line), and
    that the previous file at ``path`` is intact (when there is one).
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path), dir=folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        free = _free_bytes(folder) if isinstance(e, (OSError, RuntimeError)) else None  # before the removal
        if tmp is not None and os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass
        if _is_write_failure(e, free):
            kept = (f"the previous checkpoint at {path} is intact" if os.path.exists(path)
                    else f"no file was written at {path}")
            if isinstance(e, OSError):
                why = f"{e.strerror or str(e)} (errno {e.errno})"
            else:
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                why = lines[0] if lines else type(e).__name__
            if free is not None and free < NEARLY_FULL_BYTES and "space" not in why.lower():
                why = f"no space left on device ({free / 2 ** 20:.1f} MiB free in {folder}; {why})"
            raise CheckpointWriteError(f"writing {path} failed: {why}; {kept}") from e
        raise


def remove_orphan_temporaries(folder: str, logger=None, min_age_s: float = 60.0) -> List[str]:
    """Remove the temporary files :func:`atomic_write` left in ``folder`` when a process was killed
    during a save (``.tmp-<name>XXXXXXXX``, not modified for ``min_age_s`` seconds, so a save in
    progress is left alone); one log line when any were removed. Returns the removed paths.

    Call it once the folder's run lock is held (one writer per run directory)."""
    from utils.logger import print_log

    removed: List[str] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return removed
    now = time.time()
    for name in names:
        full = os.path.join(folder, name)
        if not TMP_NAME.match(name):
            continue
        try:
            st = os.lstat(full)
            if not os.path.isfile(full) or os.path.islink(full) or now - st.st_mtime < min_age_s:
                continue
            os.remove(full)
        except OSError:
            continue
        removed.append(full)
    if removed:
        shown = ", ".join(os.path.basename(p) for p in removed[:5]) + (f", ... ({len(removed) - 5} more)"
                                                                           if len(removed) > 5 else "")
        print_log(f"Removed {len(removed)} temporary file(s) left by an interrupted save in {folder}: {shown}",
                  logger=logger)
    return removed


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
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
    except (ValueError, OSError):  # a header without (readable) metadata: weights only
        header = {}
    if header.get("class_names"):
        try:
            ckpt["class_names"] = json.loads(header["class_names"])
        except ValueError as e:
            raise CheckpointError(f"safetensors file '{path}': its 'class_names' entry is not JSON ({e}); expected "
                                  f"a JSON list of strings") from None
    json_path = config_json_path(path)
    if os.path.isfile(json_path):
        try:
            with open(json_path, "r", encoding="utf-8") as f:
                ckpt["config"] = json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"config '{json_path}' beside '{path}' is not valid JSON: {e}") from None
    return ckpt


# The NumPy globals a safe load allows (besides torch's own tensors and plain Python types): exactly what
# the pickles of NumPy RNG states (np.random.get_state(): a uint32 array), NumPy scalars (np.float64 /
# np.int64 / ... metrics) and numeric arrays need. Pickles name the functions by module path:
# ``numpy._core.multiarray`` under NumPy 2, ``numpy.core.multiarray`` in files written under NumPy 1 (both
# names map to the same function). The dtype classes are not named in pickles, but torch's safe
# unpickler builds (sets the state of) only allowlisted types, and np.dtype('f8') is a Float64DType.
NUMPY_SAFE_GLOBALS = (
    "numpy._core.multiarray._reconstruct",  # ndarray.__reduce__
    "numpy.core.multiarray._reconstruct",   # the same, as written under NumPy 1
    "numpy._core.multiarray.scalar",        # NumPy scalar.__reduce__
    "numpy.core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.BoolDType",
    "numpy.dtypes.Int8DType", "numpy.dtypes.Int16DType", "numpy.dtypes.Int32DType", "numpy.dtypes.Int64DType",
    "numpy.dtypes.UInt8DType", "numpy.dtypes.UInt16DType", "numpy.dtypes.UInt32DType", "numpy.dtypes.UInt64DType",
    "numpy.dtypes.Float16DType", "numpy.dtypes.Float32DType", "numpy.dtypes.Float64DType",
)
TRUST_HINT = "pass --trust_checkpoint if you trust this file"
_WARNED_PATHS: set = set()  # files whose full-unpickling warning was printed (once per process and file)


def _resolve_global(name: str) -> Any:
    """The object behind a dotted name of :data:`NUMPY_SAFE_GLOBALS` (``numpy.core.*`` read from
    ``numpy._core``, without importing the deprecated alias)."""
    import importlib

    module, _, attr = name.rpartition(".")
    if module.startswith("numpy.core."):
        module = "numpy._core." + module[len("numpy.core."):]
    return getattr(importlib.import_module(module), attr)


def numpy_safe_globals() -> List[Tuple[Any, str]]:
    """``(object, dotted name)`` pairs of :data:`NUMPY_SAFE_GLOBALS` for ``torch.serialization.safe_globals``."""
    pairs = []
    for name in NUMPY_SAFE_GLOBALS:
        try:
            pairs.append((_resolve_global(name), name))
        except (ImportError, AttributeError):  # another NumPy version: that name cannot occur
            continue
    return pairs


_REFUSED_GLOBAL = (  # torch's weights-only unpickler's refusals (torch/_weights_only_unpickler.py)
    re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)"),  # not allowed / blocked module
    re.compile(r"but got <class '([^']+)'>"),                               # NEWOBJ / BUILD of a class
    re.compile(r"unrecognized function (.+?)(?: which belongs to .*)?$", re.M),  # REDUCE
)
SAFE_LOAD_FAILED = "Weights only load failed"  # how torch.load starts the message of every such refusal
# the safe unpickler's words for bytes that are no pickle at all (a damaged file, not a refusal)
NOT_A_PICKLE = re.compile(r"Unsupported operand|String is too long|unsupported persistent id|persistent_load id")


def refused_global(message: str) -> Tuple[Optional[str], Optional[str]]:
    """``(global, reason)`` of a refusal by torch's weights-only unpickler, read from the
    UnpicklingError's message: the global it would have called or built (``posix.system``,
    ``builtins.eval`` shown as ``eval``, a class) when the message names one, else None and the
    reason torch gave; ``(None, None)`` when the message is not such a refusal (a damaged file:
    no pickle, or not one torch wrote)."""
    for pattern in _REFUSED_GLOBAL:
        m = pattern.search(message)
        if m:
            return m.group(1).strip().rstrip("."), None
    if SAFE_LOAD_FAILED not in message or NOT_A_PICKLE.search(message):
        return None, None
    body = message.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in message else \
        message.split("\n", 1)[-1]
    lines = [ln.strip() for ln in body.splitlines()
             if ln.strip() and not ln.strip().startswith(("Check the documentation", "Please file an issue"))]
    return None, (lines[0][:200] if lines else "an object outside the allowlist")


def load_checkpoint_file(path: str, map_location: Any = "cpu", trust: bool = False) -> Dict[str, Any]:
    """Read a checkpoint dict; a missing or unreadable file raises CheckpointError naming it.

    ``.safetensors``: weights only, returned as ``{'base_model': state_dict}``, plus
    ``'config'`` (the parsed JSON) when a same-stem ``.json`` lies beside it.
    Other files: ``torch.load(weights_only=True)`` -- tensors and plain Python types -- with the
    NumPy objects of older and third-party checkpoints allowed (:data:`NUMPY_SAFE_GLOBALS`: RNG
    states, NumPy scalars, numeric arrays). Anything else (a pickle that would call ``os.system``,
    build an arbitrary class, ...) is refused with :class:`UntrustedCheckpointError` naming the
    file and the first refused global, before any of it runs. With ``trust=True``
    (``--trust_checkpoint``) such a file is then loaded with full unpickling, after one warning line
    naming it (once per file and process): only for files you trust. (A file that loads safely
    loads safely, trusted or not.)
    """
    if path is None or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file '{path}' does not exist")
    if str(path).endswith(SAFETENSORS_EXT):
        return _load_safetensors(path, map_location)
    try:
        try:
            present = set(torch.serialization.get_safe_globals())  # the user's own: left in place on exit
            with torch.serialization.safe_globals([g for g in numpy_safe_globals() if g not in present]):
                ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            name, reason = refused_global(str(e))
            if name is None and reason is None:  # a damaged pickle
                raise CheckpointError(f"checkpoint file '{path}' could not be read: UnpicklingError: "
                                      f"{next((ln.strip() for ln in str(e).splitlines() if ln.strip()), '')}") from None
            what = f"unpickling it would call or build {name}" if name else reason
            if not trust:
                raise UntrustedCheckpointError(
                    f"checkpoint file '{path}' is refused by the safe load: {what} (only tensors, plain Python types "
                    f"and numeric NumPy arrays / scalars load safely); {TRUST_HINT}") from None
            if os.path.realpath(path) not in _WARNED_PATHS:
                from utils.logger import print_log

                _WARNED_PATHS.add(os.path.realpath(path))
                print_log(f"WARNING: loading checkpoint {path} with full unpickling (--trust_checkpoint; {what}): "
                          f"it can run any code it holds; do this only for files you trust")
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except CheckpointError:
        raise
    except Exception as e:  # corrupt zip, truncated pickle, ...
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        raise CheckpointError(f"checkpoint file '{path}' could not be read: {type(e).__name__}: {first}") from None
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
    raise NoWeightsError(f"checkpoint '{path}' has no 'base_model' / 'model' / 'state_dict' entry (keys: {sorted(ckpt)[:10]})")


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


# The reconstruction heads' outputs are 3 * group_size wide (the points of a patch).
PATCH_OUTPUT_HEADS = ("pre_head.", "increase_dim.")


def _config_key(key: str, model_name: str, pretraining: bool, ckpt_shape: tuple = (), model_shape: tuple = ()) -> str:
    """The config key (or segmentation flag) that sets the shape of parameter ``key`` ('-': unknown)."""
    if model_name not in POINT_MODELS:
        return "-"
    if key.startswith(PATCH_OUTPUT_HEADS) and ckpt_shape[:1] != model_shape[:1]:
        return "model.group_size"
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
    # set by load_weights: the file (or name) read, the checkpoint dict read (epoch, metrics, config:
    # not shown), how many tensors its state dict held, and the remap's note (what it left out)
    source: str = "<checkpoint>"
    checkpoint: Mapping[str, Any] = field(default_factory=dict, repr=False)
    checkpoint_tensors: int = 0
    note: str = ""

    @property
    def unused(self) -> int:
        """Tensors of the checkpoint that were not loaded (left out by the remap, or unexpected)."""
        return self.checkpoint_tensors - len(self.loaded)

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
            hint = _config_key(pattern, self.model_name, self.pretraining, ckpt_shape, model_shape)
            table.append((pattern + (f" (x{count})" if count > 1 else ""), str(tuple(ckpt_shape)),
                          str(tuple(model_shape)), hint))
            if hint != "-" and ckpt_shape and model_shape and ckpt_shape[0] != model_shape[0]:
                votes = sizes.setdefault(hint, {})
                size = ckpt_shape[0] // 3 if hint == "model.group_size" else ckpt_shape[0]  # 3 coordinates per point
                votes[size] = votes.get(size, 0) + count
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
                if stack.startswith(("image_branch.", "inv_head.")):  # the image encoder's blocks: its timm model
                    where = "model.image_branch.model / model.image_branch.model_kwargs"
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


class Remapped(NamedTuple):
    """What a ``checkpoint_filter_fn`` may return instead of a bare state dict: the state dict in the
    model's own layout, the prefixes of the model's keys it leaves as initialised (``new``: a head
    the checkpoint cannot fill) and a note for the log (what it left out)."""

    state_dict: Mapping[str, torch.Tensor]
    new: Tuple[str, ...] = ()
    note: str = ""


# ``filter_fn(state_dict, model)``: a cleaned state dict -> the model's layout (a Mapping or a Remapped),
# timm's ``checkpoint_filter_fn`` convention.
FilterFn = Callable[[Mapping[str, torch.Tensor], nn.Module], Any]
AUTO = "auto"


def bare_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model


def load_weights(model: nn.Module, source: Any, *, strict: bool = True, remap: Any = None, trust: bool = False,
                 name: Optional[str] = None) -> LoadReport:
    """Put a checkpoint's weights into ``model``: the one weight loader of every job, tool and model.

    ``source``: a checkpoint file (read by :func:`load_checkpoint_file`, the one reader; ``trust`` as
    there), a checkpoint dict already read, or a state dict. Its weights (:func:`state_dict_of`:
    ``base_model`` / ``model`` / ``state_dict`` ..., ``module.`` / ``base_model.`` prefixes stripped)
    pass through ``remap(state_dict, model)``, which maps another layout to the model's own (timm's
    ``checkpoint_filter_fn`` convention; it returns a state dict or a :class:`Remapped`): None (the
    default) loads the whole model as saved, ``"auto"`` takes the model's own
    ``checkpoint_filter_fn`` (e.g. a classifier's: the encoder of a pre-training checkpoint), or
    any such function. Then :func:`load_state_dict_checked` (``strict``; keys under the remap's
    ``new`` prefixes may be missing). ``name``: how errors name a source that is no path.

    Returns the :class:`LoadReport`, which keeps the checkpoint dict read (epoch, metrics, config).
    """
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        ckpt = load_checkpoint_file(name, trust=trust)
    elif isinstance(source, Mapping):
        name = name or "<checkpoint>"
        ckpt = dict(source)
    else:
        raise TypeError(f"load_weights: source must be a path or a mapping, got {type(source).__name__}")
    state = state_dict_of(ckpt, name)
    model = bare_model(model)
    if isinstance(remap, str):
        if remap != AUTO or not hasattr(model, "checkpoint_filter_fn"):
            raise ValueError(f"load_weights: remap='{remap}' needs a model with a checkpoint_filter_fn "
                             f"({type(model).__name__} has none)")
        remap = model.checkpoint_filter_fn
    try:
        remapped = remap(state, model) if remap is not None else state
    except RemapError as e:
        raise CheckpointError(f"checkpoint '{name}' {e}") from None
    if not isinstance(remapped, Remapped):
        remapped = Remapped(remapped)
    report = load_state_dict_checked(model, remapped.state_dict, strict=strict, source=name,
                                     ignore_missing=remapped.new)
    report.source, report.checkpoint, report.checkpoint_tensors, report.note = name, ckpt, len(state), remapped.note
    return report


# ------------------------------------------------------------------------------ run checkpoints
# The keys of a training run's checkpoint, the same for every job (engine.engine.save_checkpoint).
CHECKPOINT_FORMAT = 2


def write_checkpoint(path: str, *, model: nn.Module, optimizer=None, scheduler=None, scaler=None, epoch: int = -1,
                     next_step: int = 0, metrics: Optional[Mapping] = None, best_metrics: Optional[Mapping] = None,
                     rng_states: Optional[List[dict]] = None, epoch_rng_states: Optional[List[dict]] = None,
                     config: Optional[Mapping] = None, class_names: Optional[List[str]] = None,
                     job: Optional[str] = None, seed: Optional[int] = None) -> str:
    """The one checkpoint writer of every job: ``torch.save`` of the dict below, atomically
    (:func:`atomic_save`). Tensors and plain Python values only, so :func:`load_checkpoint_file`
    reads it with ``weights_only=True``.

    Keys: ``base_model`` (the model's state dict, no ``module.`` prefix), ``optimizer``,
    ``scheduler``, ``scaler`` (state dicts or None), ``epoch`` (last epoch trained to its end, -1:
    none), ``next_step`` (batches of the next epoch already trained: a stop mid-epoch), ``metrics``
    and ``best_metrics`` (plain numbers), ``rng_state`` (rank 0's :func:`utils.misc.rng_state`) and
    ``rng_states`` (every process's, by rank), ``epoch_rng_states`` (with ``next_step``: every
    process's at the start of that epoch), ``config`` (the run's resolved config), ``class_names``
    (the training set's, when it names them), ``job``, ``seed`` and ``format``."""
    ckpt = {
        "base_model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "next_step": int(next_step),
        "metrics": plain_numbers(dict(metrics or {})),
        "best_metrics": plain_numbers(dict(best_metrics or {})),
        "rng_state": rng_states[0] if rng_states else None,
        "rng_states": list(rng_states) if rng_states else None,
        "epoch_rng_states": list(epoch_rng_states) if epoch_rng_states else None,
        "config": plain_numbers(config) if config is not None else None,
        "class_names": [str(c) for c in class_names] if class_names is not None else None,
        "job": job,
        "seed": seed,
        "format": CHECKPOINT_FORMAT,
    }
    atomic_save(ckpt, path)
    return path



def checkpoint_class_names(ckpt: Mapping[str, Any], path: str, cls_dim: Optional[int] = None) -> Optional[List[str]]:
    """The checkpoint's ``class_names`` (also a ``.safetensors`` export's header entry), checked: a
    list of distinct non-empty strings, ``cls_dim`` of them when given
    (:func:`utils.text.check_class_names`); None when it names none. Anything else is a one-line
    :class:`CheckpointError` naming the file and the key."""
    from utils.text import ClassNamesError, check_class_names

    names = ckpt.get("class_names")
    if names is None:
        return None
    try:
        return check_class_names(names, cls_dim)
    except ClassNamesError as e:
        raise CheckpointError(f"checkpoint '{path}': 'class_names' {e}") from None
