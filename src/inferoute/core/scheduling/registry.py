"""The plugin registry: maps EndpointPickerConfig `type` strings to plugin classes.

A plugin class declares `type_name` and may declare `Params`, a pydantic model validating its
`parameters`; it is constructed as `cls(name, params)` (or `cls(name)` without Params).
Plugin modules register themselves on import with `@register`; `load_builtins` imports the
`inferoute.core.plugins` package, which imports all of its modules.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, TypeVar

import pydantic

from ..errors import ConfigError

__all__ = ["create_plugin", "get_plugin_class", "load_builtins", "plugin_types", "register",
           "StrictParams"]

T = TypeVar("T", bound=type)

_REGISTRY: dict[str, type] = {}

_loaded = False


def register(cls: T) -> T:
    """Class decorator: make `cls` available under `cls.type_name`."""
    type_name = getattr(cls, "type_name", None)
    if not isinstance(type_name, str) or not type_name:
        raise TypeError(f"{cls.__name__} must define a type_name string")
    if type_name in _REGISTRY and _REGISTRY[type_name] is not cls:
        raise TypeError(f"plugin type {type_name!r} registered twice")
    _REGISTRY[type_name] = cls
    return cls


def load_builtins() -> None:
    """Register the built-in plugins: importing their package imports every module in it."""
    global _loaded
    if not _loaded:
        importlib.import_module("inferoute.core.plugins")
        _loaded = True


def plugin_types() -> list[str]:
    load_builtins()
    return sorted(_REGISTRY)


def create_plugin(type_name: str, name: str, parameters: dict[str, Any] | None) -> Any:
    """Instantiate a plugin, turning validation failures into ConfigError naming the plugin."""
    load_builtins()
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise ConfigError(f"plugin {name!r}: unknown type {type_name!r}; known types: "
                          + ", ".join(sorted(_REGISTRY)))
    params_model: type[pydantic.BaseModel] | None = getattr(cls, "Params", None)
    if params_model is None:
        if parameters:
            raise ConfigError(f"plugin {name!r} ({type_name}) takes no parameters")
        return cls(name)
    try:
        params = params_model.model_validate(parameters or {})
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'parameters'}: {err['msg']}"
            for err in exc.errors())
        raise ConfigError(f"plugin {name!r} ({type_name}): invalid parameters: {problems}") from None
    return cls(name, params)


def get_plugin_class(type_name: str) -> type | None:
    load_builtins()
    return _REGISTRY.get(type_name)


StrictParams: Callable[..., Any] = pydantic.ConfigDict
"""Plugins' Params models use `model_config = StrictParams(extra="forbid")` so typos fail."""
