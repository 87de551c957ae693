"""Model registry (a config's ``model.NAME`` picks the class, released names) and the one way a
model is built from its config section: :func:`configurable`."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Dict, Literal, Mapping, Optional, Tuple

from utils.registry import Registry
from utils.schema import ConfigError, Schema, origin_of

MODELS = Registry("models")

# Constructor arguments that change how, not what, a model computes: a run's settings give them
# (utils.settings.RunSettings.model_switches), never its ``model`` section.
SWITCHES = ("fps_backend", "embed_compute", "logger")


def build_model_from_cfg(cfg, **switches):
    """Build the model named by ``cfg.NAME`` from ``cfg`` (its ``model`` section):
    ``cls.from_config(cfg, **switches)``. ``switches``: keyword arguments that change how, not what,
    it computes (``fps_backend``, ``embed_compute``), e.g. those of a run's settings
    (:meth:`utils.settings.RunSettings.model_switches`)."""
    return MODELS.build(cfg, **switches)


def _hints(fn) -> Dict[str, Any]:
    return typing.get_type_hints(fn)


def config_parameters(fn) -> Tuple[inspect.Parameter, ...]:
    """The keyword parameters of ``fn`` that a config section sets (``self`` and :data:`SWITCHES` left out)."""
    return tuple(p for p in inspect.signature(fn).parameters.values()
                 if p.name != "self" and p.name not in SWITCHES
                 and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def signature_schema(fn, sections: Optional[Mapping[str, Schema]] = None, name: bool = True) -> Schema:
    """The :class:`utils.schema.Schema` of a constructor: its config parameters, those without a
    default required (and ``NAME`` when ``name``); ``sections``: parameters whose value is a
    section with a schema of its own."""
    sections = dict(sections or {})
    params = [p for p in config_parameters(fn) if p.name not in sections]
    return Schema(required=(("NAME",) if name else ()) + tuple(p.name for p in params if p.default is p.empty),
                  optional=tuple(p.name for p in params if p.default is not p.empty), sections=sections)


def literal_choices(annotation: Any) -> Optional[Tuple[Any, ...]]:
    """The choices of a ``Literal[...]`` (or ``Optional[Literal[...]]``) annotation, else None."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is Literal:
                return typing.get_args(arg)
    return None


def check_choices(fn, values: Mapping[str, Any], where: str, source: Optional[str] = None) -> None:
    """A ConfigError naming ``where.key``, the value, the choices and the file for a value outside
    the ``Literal`` choices of its parameter of ``fn``."""
    hints = _hints(fn)
    for key, value in values.items():
        choices = literal_choices(hints.get(key))
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{where}.{key}: '{value}' is not one of {list(choices)}", source)


def config_kwargs(cls: type, config: Mapping, where: str = "model") -> Dict[str, Any]:
    """The constructor keyword arguments of ``cls`` from its config section ``config``: the section
    checked against ``cls.config_schema`` (an unknown key is a ConfigError naming it), its ``Literal``
    values against their choices; sub-sections converted by ``cls.config_sections`` (parameter ->
    dataclass or callable)."""
    schema = cls.config_schema
    if "NAME" not in config:  # a section given to the constructor directly
        schema = dataclasses.replace(schema, required=tuple(k for k in schema.required if k != "NAME"))
    schema.check(config, f"{where} ({cls.__name__})")
    kwargs = {k: v for k, v in config.items() if k != "NAME"}
    check_choices(cls.__init__, kwargs, where, origin_of(config))
    for key, make in getattr(cls, "config_sections", {}).items():
        if isinstance(kwargs.get(key), Mapping) and isinstance(make, type) and dataclasses.is_dataclass(make):
            check_choices(make.__init__, kwargs[key], f"{where}.{key}", origin_of(kwargs[key]))
            kwargs[key] = make(**kwargs[key])
    return kwargs


def configurable(cls: type) -> type:
    """Class decorator of every model: ``config_schema`` derived from the signature of its
    ``__init__`` (:func:`signature_schema`; ``config_sections`` maps a parameter to the dataclass of
    its sub-section, whose schema is derived from its fields), ``from_config(config, **switches)``
    (:func:`config_kwargs`; a section that is a Schema is checked and passed on as a mapping), and the released call ``Model(config)`` (a config section as the one
    positional argument) as a shorthand for ``from_config``."""
    init = cls.__init__
    sections = {key: make if isinstance(make, Schema) else signature_schema(make.__init__, name=False)
                for key, make in getattr(cls, "config_sections", {}).items()}
    cls.config_schema = signature_schema(init, sections)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if args:
            if len(args) != 1 or not isinstance(args[0], Mapping):
                raise TypeError(f"{cls.__name__}() takes keyword arguments or one config section (a mapping)")
            kwargs = {**config_kwargs(cls, args[0]), **kwargs}
        init(self, **kwargs)

    def from_config(klass, config: Mapping, **switches):
        """The model of a ``model`` section (``NAME`` and constructor arguments); ``switches``:
        ``fps_backend`` / ``embed_compute``."""
        kwargs = config_kwargs(klass, config)
        try:
            return klass(**kwargs, **switches)
        except ConfigError as error:  # a check inside the constructor: name the file it came from
            source = origin_of(config)
            if source and f"(in {source})" not in str(error):
                raise ConfigError(str(error), source) from None
            raise

    cls.__init__ = __init__
    cls.from_config = classmethod(from_config)
    return cls
