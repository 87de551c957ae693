"""A small name -> class registry, as in Point-BERT / Point-MAE (``MODELS``, ``DATASETS``)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional


class Registry:
    """Maps the ``NAME`` of a config entry to the class that builds it."""

    def __init__(self, name: str):
        self.name = name
        self._modules: Dict[str, type] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._modules

    def __repr__(self) -> str:
        return f"Registry(name={self.name}, items={sorted(self._modules)})"

    def get(self, key: str) -> type:
        if key not in self._modules:
            raise KeyError(f"'{key}' is not a registered {self.name} name; known: {sorted(self._modules)}")
        return self._modules[key]

    def register_module(self, name: Optional[str] = None, module: Optional[type] = None, force: bool = False) -> Callable:
        def _register(cls: type) -> type:
            key = name or cls.__name__
            if key in self._modules and not force and self._modules[key] is not cls:
                raise KeyError(f"{key} is already registered in {self.name}")
            self._modules[key] = cls
            return cls

        if module is not None:
            return _register(module)
        return _register

    def check(self, cfg: Any, where: str) -> type:
        """Check ``cfg`` against the ``config_schema`` of the class its ``NAME`` picks; returns the class."""
        from utils.schema import ConfigError, origin_of

        if not isinstance(cfg, dict) or "NAME" not in cfg:
            raise ConfigError(f"{where}: a {self.name} config needs a 'NAME' key", origin_of(cfg))
        try:
            cls = self.get(cfg["NAME"])
        except KeyError as e:
            raise ConfigError(f"{where}.NAME: {e.args[0]}", origin_of(cfg)) from None
        schema = getattr(cls, "config_schema", None)
        if schema is not None:
            schema.check(cfg, f"{where} ({cfg['NAME']})")
        return cls

    def build(self, cfg: Any, default_args: Optional[dict] = None, **kwargs) -> Any:
        """Check ``cfg`` (see :meth:`check`) and build ``cfg.NAME`` from it: ``cls.from_config(cfg,
        **kwargs)`` when the class has that constructor, else ``cls(cfg, **kwargs)``.

        ``default_args`` (e.g. a dataset's ``others``) are merged into a copy of ``cfg`` first;
        their values win, as in the released ``build_dataset_from_cfg(cfg._base_, cfg.others)``.
        ``kwargs``: keyword arguments for the constructor (a model's compute switches).
        """
        from utils.schema import merge_into

        if default_args:
            cfg = merge_into(cfg, default_args)
        cls = self.check(cfg, self.name.rstrip("s"))
        make = getattr(cls, "from_config", None)
        return make(cfg, **kwargs) if make is not None else cls(cfg, **kwargs)
