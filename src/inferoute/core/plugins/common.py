"""Shared pieces of the built-in plugins: the Params base models, the plugin base class and
score normalisation."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import pydantic
from pydantic.alias_generators import to_camel

from ..errors import ConfigError
from ..scheduling.framework import DataKey, Scorer

__all__ = ["BasePlugin", "bound_plugin", "inverted_min_max", "PickerParams", "PluginParams"]


class PluginParams(pydantic.BaseModel):
    """Base of every plugin's `Params`: camelCase keys as in EndpointPickerConfig, typos rejected.

    Fields are declared in snake_case (`max_num_of_endpoints`) and read from YAML in camelCase
    (`maxNumOfEndpoints`); the snake_case name is accepted too.
    """

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True,
                                       alias_generator=to_camel, frozen=True)


class PickerParams(PluginParams):
    """Every picker's parameters. The first endpoint it returns is the target; the rest are
    fallbacks the proxy retries on when the target fails before the first byte.
    `maxNumOfEndpoints` (default 2: the target and one fallback; 1 disables fallbacks; the
    reference picker's default is 1 because Envoy does the retrying there)."""

    max_num_of_endpoints: int = pydantic.Field(
        2, ge=1, le=64, description="target plus fallbacks returned, best first")


class BasePlugin:
    """Holds the plugin's configured name and validated parameters."""

    type_name: ClassVar[str]
    Params: ClassVar[type[PluginParams]] = PluginParams
    #: the cycle data it writes and reads (see `DataKey`); checked when a config loads
    produces: Sequence[DataKey[Any]] = ()
    consumes: Sequence[DataKey[Any]] = ()

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        self.name = name or self.type_name
        self.params: Any = params if params is not None else self.Params()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def inverted_min_max(values: Sequence[float]) -> list[float]:
    """(max - v) / (max - min) per value: the least loaded scores 1, the most loaded 0.

    When all values are equal every endpoint scores 1 (nothing to prefer).
    """
    if not values:
        return []
    lo = min(values)
    hi = max(values)
    if hi == lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


def bound_plugin(owner: BasePlugin, plugins: dict[str, Any], ref: str, kind: type,
                 what: str) -> Any:
    """The configured plugin named `ref`, which must be a `kind`; a ConfigError otherwise."""
    plugin = plugins.get(ref)
    if not isinstance(plugin, kind):
        wanted = "scorer" if kind is Scorer else getattr(kind, "type_name", kind.__name__)
        raise ConfigError(f"{owner.type_name} {owner.name!r}: {what} {ref!r} names no configured "
                          f"{wanted}")
    return plugin
