"""`lora-affinity-scorer`: prefer endpoints that can serve the request's LoRA adapter soonest.

Uses the scraped `vllm:lora_requests_info` (running adapters, waiting adapters, max_lora):

- 1.0 the adapter is running on the endpoint (loaded, no swap needed);
- 0.8 it is not loaded but the endpoint has a free adapter slot (loads without evicting);
- 0.6 it is queued to load there (waiting) and no slot is free;
- 0.0 otherwise (loading it would evict another adapter), or no LoRA info was scraped.

vLLM refreshes `lora_requests_info` only with the scheduler statistics of an engine step, so an
idle replica goes on listing the adapter of a request that has finished. The scorer therefore
trusts the running (waiting) list of a scrape only when the same scrape counts running
(waiting) requests, and counts an adapter as running wherever this gateway itself has a
request for it in flight (fresher than any scrape; bounded bookkeeping, fed by the
`on_served` / `on_finished` hooks).

Requests without a LoRA adapter score 1 everywhere (the scorer does not bias them).
No parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ..endpoint import Endpoint, EndpointMetrics
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin

__all__ = ["LoraAffinityScorer", "lora_affinity", "reported_loras"]

ACTIVE, FREE_SLOT, WAITING, NONE = 1.0, 0.8, 0.6, 0.0
#: requests the scorer remembers as in flight (a shell that never reports a finish must not
#: grow it without end: the oldest are forgotten first)
MAX_TRACKED = 65_536


def reported_loras(m: EndpointMetrics) -> tuple[frozenset[str], frozenset[str]]:
    """(running, waiting) adapters of one scrape, each list only when the same scrape counts
    requests in that state (an idle replica's list is left over from its last step)."""
    running = frozenset(m.running_loras) if m.running > 0 else frozenset()
    waiting = frozenset(m.waiting_loras) if m.waiting > 0 else frozenset()
    return running, waiting


def lora_affinity(adapter: str, ep: Endpoint, in_flight: frozenset[str] = frozenset()) -> float:
    """The affinity score of one endpoint for `adapter`; `in_flight`: the adapters this
    gateway has requests in flight for on `ep`."""
    m = ep.metrics
    running, waiting = reported_loras(m)
    running |= in_flight
    if adapter in running:
        return ACTIVE
    if m.max_lora is not None and len(running | waiting) < m.max_lora:
        return FREE_SLOT
    if adapter in waiting:
        return WAITING
    return NONE


@register
class LoraAffinityScorer(BasePlugin):
    """Adapter already active 1.0, free slot 0.8, adapter waiting 0.6, else 0."""

    type_name = "lora-affinity-scorer"
    metric_reads = MetricReads(fresh=("lora", "waiting", "running"))

    def __init__(self, name: str | None = None, params: Any = None) -> None:
        super().__init__(name, params)
        #: request id -> (endpoint name, adapter) of adapter requests in flight
        self._flights: OrderedDict[str, tuple[str, str]] = OrderedDict()
        #: (endpoint name, adapter) -> requests in flight
        self._counts: dict[tuple[str, str], int] = {}

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        adapter = request.lora_adapter
        if not adapter:
            return [1.0] * len(endpoints)
        mine: dict[str, set[str]] = {}
        for name, a in self._counts:
            mine.setdefault(name, set()).add(a)
        none: frozenset[str] = frozenset()
        return [lora_affinity(adapter, ep, frozenset(mine[ep.name]) if ep.name in mine else none)
                for ep in endpoints]

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        if not request.lora_adapter:
            return
        self._forget(request.request_id)   # a fallback: the request moved
        key = (endpoint.name, request.lora_adapter)
        self._flights[request.request_id] = key
        self._counts[key] = self._counts.get(key, 0) + 1
        while len(self._flights) > MAX_TRACKED:
            self._forget(next(iter(self._flights)))

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        self._forget(request.request_id)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        for rid in [r for r, (name, _) in self._flights.items() if name == endpoint.name]:
            self._forget(rid)

    def _forget(self, request_id: str) -> None:
        key = self._flights.pop(request_id, None)
        if key is None:
            return
        n = self._counts[key] - 1
        if n:
            self._counts[key] = n
        else:
            del self._counts[key]
