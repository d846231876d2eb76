"""`running-requests-size-scorer`: fewer running requests (from the last scrape) scores higher.

Normalised like `queue-scorer`: (max - r) / (max - min), all equal -> 1. No parameters.
"""

from __future__ import annotations

from typing import Sequence

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, inverted_min_max

__all__ = ["RunningRequestsSizeScorer"]


@register
class RunningRequestsSizeScorer(BasePlugin):
    """Fewer running requests scores higher (min-max normalised across candidates)."""

    type_name = "running-requests-size-scorer"
    metric_reads = MetricReads(fresh=("running",))

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        return inverted_min_max([ep.metrics.running for ep in endpoints])
