"""YAML configs: loading (``_base_`` merging), the run config saved with a run, and saving.

Layout as released (Point-BERT / Point-MAE): a dataset entry is
``{_base_: cfgs/dataset_configs/X.yaml, others: {subset: train, npoints: 1024}}``; loading replaces
the ``_base_`` path by the contents of that file. Every node remembers the file it came from, so a
missing or unknown key is reported with the key and the file.

A command loads its config with :func:`utils.overrides.load_config` (``--opts``, data root,
schedule length) and checks it with :func:`utils.validate.validate_config`; the settings table
(:mod:`utils.settings_table`) describes the top-level keys.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import yaml
from easydict import EasyDict

from utils.logger import print_log
from utils.schema import ConfigError, _set_origin, origin_of, to_plain
from utils.text import quoted

REPO_ROOT = Path(__file__).resolve().parent.parent


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


# --------------------------------------------------------------------------- run configs
RUN_CONFIG = "config.yaml"


def run_config_of(ckpt_path: str) -> Optional[str]:
    """The config saved with a checkpoint: ``config.yaml`` in its run directory, or the ``.json``
    beside a ``.safetensors`` export. None when there is neither."""
    candidates = [os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), RUN_CONFIG)]
    if str(ckpt_path).endswith(".safetensors"):
        candidates.insert(0, os.path.splitext(ckpt_path)[0] + ".json")
    return next((c for c in candidates if os.path.isfile(c)), None)



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
