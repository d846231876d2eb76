"""Shared pieces of the built-in plugins: the Params base models, the plugin base class and
score normalisation."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import pydantic
from pydantic.alias_generators import to_camel

from ..endpoint import Endpoint
from ..errors import ConfigError
from ..scheduling.framework import DataKey, Scorer
from ..scheduling.metric_reads import MetricReads

__all__ = ["BasePlugin", "bound_plugin", "FamilyParams", "inverted_min_max", "kv_capacity_tokens",
           "PickerParams", "PluginParams"]


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


class FamilyParams(PluginParams):
    """The parameters of plugins that group prompts into families (prompts sharing a leading
    block, core/plugins/prefixhome.py) and weigh them against an endpoint's KV capacity."""

    hash_block_tokens: int = pydantic.Field(
        16, ge=1, le=4096, description="tokens per hashed block (prefix granularity)")
    family_key_blocks: int = pydantic.Field(
        8, ge=1, description="the leading block whose hash names a prompt family")
    max_prefix_blocks: int = pydantic.Field(
        512, ge=1, description="leading blocks hashed to measure a family's prefix")
    max_families: int = pydantic.Field(
        65_536, ge=1, description="families remembered (least recently seen dropped)")
    default_capacity_tokens: int = pydantic.Field(
        262_144, ge=1, description="KV capacity assumed until a scrape reports it")


def kv_capacity_tokens(ep: Endpoint, default: int) -> int:
    """The endpoint's KV capacity in tokens, from its scraped cache config (`default` until
    a scrape reports it)."""
    m = ep.metrics
    if m.num_blocks and m.block_size:
        return m.num_blocks * m.block_size
    return default


def kv_capacity_blocks(ep: Endpoint, block_tokens: int, default: int) -> int:
    """The endpoint's KV capacity in blocks of `block_tokens` tokens (a scorer's own unit),
    from its scraped cache config; `default` until a scrape reports it. The engine's blocks
    may be larger: vLLM's CPU backend uses 128 tokens, so 40 of its blocks are 320 of 16."""
    m = ep.metrics
    if not m.num_blocks:
        return default
    if not m.block_size:
        return m.num_blocks  # no block size reported: assume the scorer's own
    return max(1, m.num_blocks * m.block_size // block_tokens)


class BasePlugin:
    """Holds the plugin's configured name and validated parameters."""

    type_name: ClassVar[str]
    Params: ClassVar[type[PluginParams]] = PluginParams
    #: the cycle data it writes and reads (see `DataKey`); checked when a config loads
    produces: Sequence[DataKey[Any]] = ()
    consumes: Sequence[DataKey[Any]] = ()
    #: the scraped metric groups it reads (`MetricReads`), which the data layer parses and
    #: keeps fresh; None (undeclared) counts as reading all of them fresh
    metric_reads: ClassVar[MetricReads | None] = None

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
