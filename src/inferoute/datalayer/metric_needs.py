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

Each plugin class declares what it reads in the core's names (`metric_reads`, a
`core.scheduling.metric_reads.MetricReads`, written next to the code that reads); a plugin that
declares nothing (a third-party one) is assumed to read every field fresh, so it is never
starved of metrics. Admission (the saturation detector reads the queue and KV usage, and calls
metrics older than its threshold saturated) and the autoscaling gauge add their own needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..core.metricsparse import ALL_FIELDS
from ..core.metricsparse import MetricField as Field
from ..core.scheduling.metric_reads import MetricReads

__all__ = ["ADMISSION_NEEDS", "ALWAYS_PARSED", "AUTOSCALING_NEEDS", "MetricNeeds", "needs_of",
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


_NOTHING = MetricNeeds()
_EVERYTHING = MetricNeeds(ALL_FIELDS, ALL_FIELDS)


def needs_of(reads: MetricReads | None, params: Any = None) -> MetricNeeds:
    """What a plugin declaring `reads` and configured with `params` needs scraped; None (it
    declares nothing) reads everything fresh."""
    if reads is None:
        return _EVERYTHING
    reads = reads.with_params(params)
    return MetricNeeds(reads.fresh, ALWAYS_PARSED | reads.fresh | reads.static)


def needs_of_plugins(plugins: Iterable[Any]) -> MetricNeeds:
    """The union of what `plugins` (configured plugin objects: `metric_reads`, `params`) read."""
    needs = _NOTHING
    for plugin in plugins:
        needs |= needs_of(getattr(plugin, "metric_reads", None), getattr(plugin, "params", None))
    return needs


#: the saturation detector and flow control (admission on): queue depth and KV usage
ADMISSION_NEEDS = needs_of(MetricReads(fresh=("waiting", "kv_usage")))
#: the autoscaling gauge: the pool's load and its prefix-cache hit rate
AUTOSCALING_NEEDS = needs_of(MetricReads(fresh=("waiting", "running", "kv_usage"),
                                         static=("prefix_cache",)))
