"""Config schemas and config errors, with no YAML loading: what models and datasets import.

:class:`Schema` lists a section's keys; :class:`ConfigError` names the key, the value and the file
it came from (every config node remembers its file, :func:`origin_of`). Loading of whole run configs
lives in :mod:`utils.config`, their validation in :mod:`utils.validate`.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from easydict import EasyDict

from utils.cli import InputError


class ConfigError(InputError, ValueError):
    """A config key is missing, unknown or has a bad value. The message names key and file."""

    def __init__(self, message: str, source: Optional[str] = None):
        super().__init__(f"{message} (in {source})" if source else message)


@dataclass(frozen=True)
class Schema:
    """The keys of one config section: ``required``, ``optional`` and ``sections`` (keys whose
    value is a mapping with a schema of its own; checked when present)."""

    required: Tuple[str, ...] = ()
    optional: Tuple[str, ...] = ()
    sections: Dict[str, "Schema"] = field(default_factory=dict)

    def keys(self) -> Tuple[str, ...]:
        """Every key the section may hold."""
        return self.required + self.optional + tuple(self.sections)

    def check(self, node: Mapping, where: str) -> None:
        """Raise ConfigError naming ``where.key`` and the file for an unknown or missing key."""
        check_keys(node, where, required=self.required, optional=self.optional + tuple(self.sections))
        for key, schema in self.sections.items():
            if isinstance(node.get(key), Mapping):
                schema.check(node[key], f"{where}.{key}")


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


def did_you_mean(key: Any, known: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``known`` to ``key``, or an empty string."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(node: Mapping, where: str, required: Iterable[str] = (), optional: Iterable[str] = ()) -> None:
    """Fail on unknown or missing keys of one config section. ``where`` names the section."""
    source = origin_of(node)
    allowed = set(required) | set(optional)
    for key in node:
        if key not in allowed:
            raise ConfigError(f"unknown key '{where}.{key}'{did_you_mean(key, allowed)}; allowed: {sorted(allowed)}",
                              source)
    for key in required:
        if key not in node:
            raise ConfigError(f"missing key '{where}.{key}'", source)


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
