"""`load-aware-scorer` (llm-d): 0.5 for an empty waiting queue, falling linearly to 0 at
`threshold` waiting requests (default 128) and staying 0 beyond. Unlike the min-max scorers its
score does not depend on the other candidates.
"""

from __future__ import annotations

from typing import Sequence

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams

__all__ = ["LoadAwareScorer"]


@register
class LoadAwareScorer(BasePlugin):
    """llm-d's load scorer: 0.5 when nothing waits, 0.5 * (1 - q / threshold) otherwise."""

    type_name = "load-aware-scorer"
    metric_reads = MetricReads(fresh=("waiting",))

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
