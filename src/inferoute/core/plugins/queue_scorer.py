"""`queue-scorer`: a shorter waiting queue (from the last scrape) scores higher.

(max - q) / (max - min) across the candidates; all equal -> 1. No parameters.
"""

from __future__ import annotations

from typing import Sequence

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, inverted_min_max

__all__ = ["QueueScorer"]


@register
class QueueScorer(BasePlugin):
    """Shorter waiting queue scores higher (min-max normalised across candidates)."""

    type_name = "queue-scorer"
    metric_reads = MetricReads(fresh=("waiting",))

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        return inverted_min_max([ep.metrics.waiting for ep in endpoints])
