"""Load-aware scorers: prefer endpoints with less work queued, running or in flight.

- `queue-scorer`: waiting-queue length from the last scrape, (max - q) / (max - min) across
  the candidates; all equal -> 1. No parameters.
- `running-requests-size-scorer`: the same normalisation on the number of running requests.
  No parameters.
- `kv-cache-utilization-scorer`: 1 - KV-cache usage (0..1) from the last scrape. No parameters.
- `load-aware-scorer` (llm-d): 0.5 for an empty waiting queue, falling linearly to 0 at
  `threshold` waiting requests (default 128) and staying 0 beyond. Unlike the min-max scorers
  its score does not depend on the other candidates.
- `in-flight-scorer`: the gateway's own count of requests (or prompt tokens, `by: tokens`) sent to
  each endpoint and not yet finished, normalised like `queue-scorer`. It is updated on every
  dispatch and finish, so it is fresher than any scrape: the least-request policy.
"""

from __future__ import annotations

from typing import Literal, Sequence

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams, inverted_min_max


@register
class QueueScorer(BasePlugin):
    """Shorter waiting queue scores higher (min-max normalised across candidates)."""

    type_name = "queue-scorer"

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        return inverted_min_max([ep.metrics.waiting for ep in endpoints])


@register
class RunningRequestsSizeScorer(BasePlugin):
    """Fewer running requests scores higher (min-max normalised across candidates)."""

    type_name = "running-requests-size-scorer"

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        return inverted_min_max([ep.metrics.running for ep in endpoints])


@register
class KvCacheUtilizationScorer(BasePlugin):
    """More free KV cache scores higher: 1 - usage."""

    type_name = "kv-cache-utilization-scorer"

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        out = []
        for ep in endpoints:
            u = ep.metrics.kv_usage
            out.append(1.0 - (0.0 if u < 0.0 else 1.0 if u > 1.0 else u))
        return out


@register
class LoadAwareScorer(BasePlugin):
    """llm-d's load scorer: 0.5 when nothing waits, 0.5 * (1 - q / threshold) otherwise."""

    type_name = "load-aware-scorer"

    class Params(PluginParams):
        threshold: int = pydantic.Field(128, gt=0,
                                        description="waiting requests at which the score is 0")

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        t = float(self.params.threshold)
        out = []
        for ep in endpoints:
            q = ep.metrics.waiting
            out.append(0.5 if q <= 0 else 0.5 * (1.0 - min(q, t) / t))
        return out


@register
class InFlightScorer(BasePlugin):
    """Fewer requests (or prompt tokens) in flight from this gateway scores higher."""

    type_name = "in-flight-scorer"

    class Params(PluginParams):
        by: Literal["requests", "tokens"] = "requests"

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        if self.params.by == "tokens":
            return inverted_min_max([ep.in_flight_tokens for ep in endpoints])
        return inverted_min_max([ep.in_flight_requests for ep in endpoints])
