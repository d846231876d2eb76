"""What a scheduling plugin reads from the scraped `Endpoint.metrics`, declared on its class.

Scraping costs the model server and the gateway, so the data layer parses only the metric
groups a pool's plugins read, and scrapes fast under load only when one of them needs a load
field fresh (datalayer/metric_needs.py). Each plugin class says what it reads next to the code
that reads it, in the core's names for the groups (`MetricField`: `waiting`, `kv_usage`,
`cache_config` ...; core/metricsparse.py maps them to each engine's Prometheus families):

    metric_reads = MetricReads(fresh=("waiting",))          # queue-scorer
    metric_reads = MetricReads()                            # reads no metrics at all

A plugin that leaves `metric_reads` at None (a third-party one) is assumed to read every group
fresh: safe, never starved, only slower.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..metricsparse import MetricField

__all__ = ["MetricReads"]


@dataclass(frozen=True, slots=True, init=False)
class MetricReads:
    """The metric groups one plugin reads.

    `fresh`: read on every decision and stale within the staleness threshold (load fields:
    the queue, KV usage, running LoRA adapters). `static`: read, but a scrape at the idle
    interval is recent enough (the cache config). `only_when`: {group: parameter}, a group read
    only when the plugin's parameter of that name is truthy (a zero weight turns a term off).
    """

    fresh: frozenset[MetricField]
    static: frozenset[MetricField]
    only_when: tuple[tuple[MetricField, str], ...]

    def __init__(self, fresh: Iterable[MetricField] = (), static: Iterable[MetricField] = (),
                 only_when: Mapping[MetricField, str] | None = None) -> None:
        object.__setattr__(self, "fresh", frozenset(fresh))
        object.__setattr__(self, "static", frozenset(static) - self.fresh)
        object.__setattr__(self, "only_when", tuple(sorted((only_when or {}).items())))
        unread = {group for group, _ in self.only_when} - self.fresh - self.static
        if unread:
            raise ValueError(f"only_when names groups the plugin does not read: {sorted(unread)}")

    def with_params(self, params: Any) -> MetricReads:
        """What a plugin configured with `params` reads: the `only_when` groups whose parameter
        is falsy dropped (a parameter the params lack counts as set)."""
        off = {group for group, name in self.only_when if not getattr(params, name, True)}
        if not off:
            return self
        return MetricReads(self.fresh - off, self.static - off)
