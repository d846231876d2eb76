"""`in-flight-scorer`: the least-request policy.

The gateway's own count of requests (or prompt tokens, `by: tokens`) sent to each endpoint and
not yet finished, normalised like `queue-scorer`. It is updated on every dispatch and finish, so
it is fresher than any scrape.
"""

from __future__ import annotations

from typing import Literal, Sequence

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams, inverted_min_max

__all__ = ["InFlightScorer"]


@register
class InFlightScorer(BasePlugin):
    """Fewer requests (or prompt tokens) in flight from this gateway scores higher."""

    type_name = "in-flight-scorer"
    metric_reads = MetricReads()

    class Params(PluginParams):
        by: Literal["requests", "tokens"] = "requests"

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        if self.params.by == "tokens":
            return inverted_min_max([ep.in_flight_tokens for ep in endpoints])
        return inverted_min_max([ep.in_flight_requests for ep in endpoints])
