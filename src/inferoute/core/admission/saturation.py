"""Saturation detection: is there an endpoint left with good capacity?

An endpoint has *good capacity* when its metrics are fresh (scraped within
`metricsStalenessThreshold`), its waiting queue is at most `queueDepthThreshold` and its KV-cache
usage is at most `kvCacheUtilThreshold`, or over it with nothing waiting there (strictly above a
threshold is saturated, as in the reference endpoint picker). The pool is saturated when no
candidate endpoint has good capacity, and an empty pool is saturated too.

Why KV usage counts only with a queue (`kvCacheRule: queued`, the default): a model server
with continuous batching runs its batch until its KV cache is nearly full, takes a new request
into it as soon as the blocks it needs are free, and otherwise queues it. High usage with
nothing waiting is a full batch that still takes what it is sent at once; the waiting queue
says when it stops. Held back at the threshold, a pool of such replicas ran its batches at
most 80% full whenever requests waited in the gateway: long conversations (seed 0,
`multi_turn_chat`) lost 3.8% of their throughput to it (docs/benchmark.md, "Admission's own
cost"). `kvCacheRule: always` is the reference's rule: usage over the threshold alone
saturates.

`room` turns the same metrics into a dispatch budget, so the flow controller does not release
its whole queue on the first fresh scrape. An endpoint can take its free batch slots (when its
batch size is known: the flow controller learns it once it has seen the endpoint full) plus
`queueDepthThreshold + 1` requests past them, less what waits there: before the next scrape it
is then at most just past the threshold. While requests wait in the gateway (`backlog`) and
the batch size is known, only one past the free slots: anything more would wait inside the
model server in arrival order, where a critical request arriving next must wait behind it;
kept in the gateway it waits in priority order (the flow controller's point). The one request
past the slots also finds out whether the batch is larger than seen so far. A request the
budget releases is kept off the endpoints known to be full, and off those without a free
batch slot while another has one (`Ticket.room_on`): the last scrape may show one emptier than
the endpoint whose slot just freed, and the scheduler alone would send it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..endpoint import Endpoint
from ..scheduling.config import SaturationSpec

__all__ = ["EndpointState", "SaturationDetector"]


@dataclass(slots=True, frozen=True)
class EndpointState:
    """Why an endpoint is or is not saturated (for logs, metrics and tests)."""

    saturated: bool
    reason: str  # "ok", "stale", "queue", "kv-cache"


class SaturationDetector:
    """Applies `SaturationSpec` thresholds to endpoint metrics at a given time.

    `stale_in_flight_limit` (off by default, as in the reference) lets an endpoint whose metrics
    are stale still count as having capacity while the gateway's own in-flight count on it is
    below the limit: a scrape outage then degrades to a concurrency limit instead of queueing
    every request.
    """

    def __init__(self, spec: SaturationSpec | None = None, *,
                 stale_in_flight_limit: int | None = None) -> None:
        self.spec = spec or SaturationSpec()
        if stale_in_flight_limit is not None and stale_in_flight_limit < 1:
            raise ValueError("stale_in_flight_limit must be >= 1")
        self.stale_in_flight_limit = stale_in_flight_limit

    def endpoint_state(self, ep: Endpoint, now: float) -> EndpointState:
        """Saturation of one endpoint and the reason."""
        reason = self._reason(ep, now)
        return EndpointState(reason != "ok", reason)

    def _reason(self, ep: Endpoint, now: float) -> str:
        spec = self.spec
        m = ep.metrics
        at = m.scraped_at
        if at is None or now - at > spec.metrics_staleness_threshold:
            limit = self.stale_in_flight_limit
            if limit is not None and ep.in_flight_requests < limit:
                return "ok"
            return "stale"
        if m.waiting > spec.queue_depth_threshold:
            return "queue"
        if m.kv_usage > spec.kv_cache_util_threshold and (
                m.waiting > 0 or spec.kv_cache_rule == "always"):
            return "kv-cache"
        return "ok"

    def is_endpoint_saturated(self, ep: Endpoint, now: float) -> bool:
        return self._reason(ep, now) != "ok"

    def is_saturated(self, candidates: Iterable[Endpoint], now: float) -> bool:
        """True when no candidate has good capacity (an empty list is saturated)."""
        reason = self._reason
        for ep in candidates:
            if reason(ep, now) == "ok":
                return False
        return True

    def room(self, ep: Endpoint, now: float, *, backlog: bool = False,
             slots: int | None = None, occupied: int | None = None) -> int | None:
        """How many more requests `ep` can take as of its last scrape (None: not a good
        endpoint; negative: requests wait there beyond it); `slots`: its batch size, if known;
        `occupied`: its requests running or waiting, if better known than by its last scrape;
        `backlog`: requests wait in the gateway (see the module docstring).

        A stale endpoint admitted through `stale_in_flight_limit` has its remaining in-flight
        slots (the gateway's own counts: always current).
        """
        if self._reason(ep, now) != "ok":
            return None
        if ep.is_stale(now, self.spec.metrics_staleness_threshold):
            return max(0, (self.stale_in_flight_limit or 0) - ep.in_flight_requests)
        m = ep.metrics
        if slots is None:
            return self.spec.queue_depth_threshold + 1 - m.waiting
        past = 1 if backlog else self.spec.queue_depth_threshold + 1
        return slots + past - (m.running + m.waiting if occupied is None else occupied)

    def headroom(self, candidates: Iterable[Endpoint], now: float) -> int:
        """How many more requests the good endpoints can take before their next scrape (batch
        sizes unknown, nothing waiting in the gateway)."""
        return sum(max(0, r) for ep in candidates if (r := self.room(ep, now)) is not None)

    def oldest_fresh_scrape(self, candidates: Iterable[Endpoint], now: float) -> float | None:
        """The oldest scrape time among good endpoints with fresh metrics, or None."""
        oldest: float | None = None
        for ep in candidates:
            at = ep.metrics.scraped_at
            if at is None or ep.is_stale(now, self.spec.metrics_staleness_threshold):
                continue
            if self._reason(ep, now) != "ok":
                continue
            oldest = at if oldest is None else min(oldest, at)
        return oldest
