"""What the gateway and the picker report about the all-stale fallback (see
`core.selection.CandidateSelector`): `inferoute_stale_metrics_fallback_total{pool}` counts the
requests it routed, and a pool entering or leaving it is logged once."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter

from ..core.selection import StaleEvent

log = logging.getLogger("inferoute.datalayer")

__all__ = ["StaleFallbackReport"]


class StaleFallbackReport:
    """The selector's `on_stale` callback: a counter and a log line per transition."""

    def __init__(self, registry: CollectorRegistry, who: str) -> None:
        self.who = who
        self.counter = Counter(
            "inferoute_stale_metrics_fallback_total",
            f"Requests routed on the {who}'s own in-flight counts because every endpoint's "
            "metrics were stale.", ("pool",), registry=registry)

    def __call__(self, pool: str, event: StaleEvent) -> None:
        if event == "routed":
            self.counter.labels(pool).inc()
        elif event == "start":
            log.warning("pool '%s': every endpoint's metrics are stale; routing on this "
                        "%s's own in-flight counts until a scrape succeeds", pool, self.who)
        else:
            log.info("pool '%s': fresh metrics again; routing on them", pool)
