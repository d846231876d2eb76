"""`kv-cache-utilization-scorer`: more free KV cache scores higher: 1 - usage (0..1, from the
last scrape). No parameters.
"""

from __future__ import annotations

from typing import Sequence

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin

__all__ = ["KvCacheUtilizationScorer"]


@register
class KvCacheUtilizationScorer(BasePlugin):
    """More free KV cache scores higher: 1 - usage."""

    type_name = "kv-cache-utilization-scorer"
    metric_reads = MetricReads(fresh=("kv_usage",))

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        out = []
        for ep in endpoints:
            u = ep.metrics.kv_usage
            out.append(1.0 - (0.0 if u < 0.0 else 1.0 if u > 1.0 else u))
        return out
