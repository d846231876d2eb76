"""Which scraped metrics a pool's configuration reads, and which of them must be fresh.

A scrape costs the model server (vLLM renders its whole /metrics page, tens of kilobytes, in
the process that serves requests) and the gateway (one HTTP exchange and a parse). How often it
is worth paying depends on what the pool's plugins read from `EndpointMetrics`:

- *load* fields (`waiting`, `running`, `kv_usage`, the LoRA adapter lists) change with every
  request: a scorer that reads them needs them fresh, so the endpoint is scraped at the fast
  interval while it has work (`scrape_pacing.ScrapePacer`).
- *static* fields (`cache_config`: block size and block count; the prefix-cache counters read
  by the autoscaling gauge) hardly change: a scrape at the idle interval keeps them.
- a plugin that reads only the gateway's own bookkeeping (in-flight requests, the prefix
  index it builds from the prompts it routed) reads nothing from the page.

`PLUGIN_NEEDS` declares this per plugin type (keyed by the type name, as in an
EndpointPickerConfig); a type missing from it is assumed to read every field fresh, so a new
plugin is never starved of metrics. Admission (the saturation detector reads the queue and KV
usage, and calls metrics older than its threshold saturated) and the autoscaling gauge add
their own needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core.metricsparse import ALL_FIELDS
from ..core.metricsparse import MetricField as Field

__all__ = ["ADMISSION_NEEDS", "ALWAYS_PARSED", "AUTOSCALING_NEEDS", "PLUGIN_NEEDS", "MetricNeeds",
           "needs_of_plugins"]

#: parsed on every page whatever the plugins read: the queue gauge carries the served model
#: names (the wrong-model check); the three load gauges are exported on the gateway's /metrics
ALWAYS_PARSED: frozenset[Field] = frozenset(("waiting", "running", "kv_usage"))
_LOAD: frozenset[Field] = frozenset(("waiting", "running", "kv_usage", "lora"))


@dataclass(frozen=True, slots=True)
class MetricNeeds:
    """What a pool's configuration reads from scrapes: `fresh` ones within the staleness
    threshold while the endpoint has work, `parsed` ones at all (fresh included)."""

    fresh: frozenset[Field] = frozenset()
    parsed: frozenset[Field] = ALWAYS_PARSED

    def __or__(self, other: MetricNeeds) -> MetricNeeds:
        return MetricNeeds(self.fresh | other.fresh, self.parsed | other.parsed | other.fresh)

    @property
    def needs_fresh_load(self) -> bool:
        """True when something reads a load field and so needs the fast interval under load."""
        return bool(self.fresh & _LOAD)


def _fresh(*fields: Field) -> MetricNeeds:
    return MetricNeeds(frozenset(fields), ALWAYS_PARSED | frozenset(fields))


def _static(*fields: Field) -> MetricNeeds:
    return MetricNeeds(frozenset(), ALWAYS_PARSED | frozenset(fields))


_NOTHING = MetricNeeds()


def _predictive_cost(params: Any) -> MetricNeeds:
    """predictive-cost-scorer: KV capacity always; queue and KV usage only when weighted."""
    needs = _static("cache_config")
    if getattr(params, "waiting_weight", 1.0):
        needs |= _fresh("waiting")
    if getattr(params, "usage_weight", 1.0):
        needs |= _fresh("kv_usage")
    return needs


def _prefix_cache(params: Any) -> MetricNeeds:
    """prefix-cache-scorer: the cache config only to size its index (`autoTune`)."""
    return _static("cache_config") if getattr(params, "auto_tune", True) else _NOTHING


#: per plugin type: what it reads from `Endpoint.metrics` (a value, or a function of the
#: plugin's validated parameters). Read off each plugin's code; types not listed read all.
PLUGIN_NEEDS: dict[str, MetricNeeds | Callable[[Any], MetricNeeds]] = {
    "queue-scorer": _fresh("waiting"),
    "load-aware-scorer": _fresh("waiting"),
    "kv-cache-utilization-scorer": _fresh("kv_usage"),
    "running-requests-size-scorer": _fresh("running"),
    "lora-affinity-scorer": _fresh("lora", "waiting", "running"),
    "latency-slo-scorer": _fresh("waiting", "kv_usage"),
    "predictive-cost-scorer": _predictive_cost,
    "prefix-cache-scorer": _prefix_cache,
    "precise-prefix-cache-scorer": _static("cache_config"),
    "dynamo-kv-scorer": _static("cache_config"),
    "capacity-placement-scorer": _static("cache_config"),
    "kv-fit-filter": _static("cache_config"),
    # the gateway's own bookkeeping, the request or the labels only
    "approx-prefix-cache-producer": _NOTHING,
    "decode-filter": _NOTHING,
    "prefill-filter": _NOTHING,
    "in-flight-scorer": _NOTHING,
    "inflight-load-producer": _NOTHING,
    "label-selector-filter": _NOTHING,
    "max-score-picker": _NOTHING,
    "pd-profile-handler": _NOTHING,
    "prefix-cache-affinity-filter": _NOTHING,
    "random-picker": _NOTHING,
    "round-robin-picker": _NOTHING,
    "session-affinity-scorer": _NOTHING,
    "sglang-cache-aware-scorer": _NOTHING,
    "token-load-scorer": _NOTHING,
    "weighted-random-picker": _NOTHING,
}

#: the saturation detector and flow control (admission on): queue depth and KV usage
ADMISSION_NEEDS = _fresh("waiting", "kv_usage")
#: the autoscaling gauge: the pool's load and its prefix-cache hit rate
AUTOSCALING_NEEDS = _fresh("waiting", "running", "kv_usage") | _static("prefix_cache")
_EVERYTHING = MetricNeeds(ALL_FIELDS, ALL_FIELDS)


def needs_of_plugins(plugins: Iterable[Any],
                     table: Mapping[str, MetricNeeds | Callable[[Any], MetricNeeds]]
                     = PLUGIN_NEEDS) -> MetricNeeds:
    """The union of what `plugins` (configured plugin objects: `type_name`, `params`) read."""
    needs = _NOTHING
    for plugin in plugins:
        entry = table.get(getattr(plugin, "type_name", ""), _EVERYTHING)
        needs |= entry(getattr(plugin, "params", None)) if callable(entry) else entry
    return needs
