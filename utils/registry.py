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

    @property
    def module_dict(self) -> Dict[str, type]:
        return dict(self._modules)

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

    def build(self, cfg: Any, default_args: Optional[dict] = None) -> Any:
        """Build ``cfg.NAME`` with the config itself as the only argument.

        ``default_args`` (e.g. a dataset's ``others``) are merged into a copy of ``cfg`` first;
        their values win, as in the released ``build_dataset_from_cfg(cfg._base_, cfg.others)``.
        """
        from utils.config import ConfigError, merge_into, origin_of

        if not isinstance(cfg, dict) or "NAME" not in cfg:
            raise ConfigError(f"{self.name} config needs a 'NAME' key", origin_of(cfg))
        if default_args:
            cfg = merge_into(cfg, default_args)
        try:
            cls = self.get(cfg["NAME"])
        except KeyError as e:
            raise ConfigError(str(e.args[0]), origin_of(cfg)) from None
        return cls(cfg)
