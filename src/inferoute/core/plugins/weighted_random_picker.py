"""`weighted-random-picker`: random order weighted by score.

A-Res: key = u^(1/score), so an endpoint is first with probability proportional to its score;
zero scores come last, and if every score is zero the draw is uniform. Parameters:
`maxNumOfEndpoints`.
"""

from __future__ import annotations

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, ScoredEndpoint
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PickerParams

__all__ = ["WeightedRandomPicker"]


@register
class WeightedRandomPicker(BasePlugin):
    """Random endpoints, each drawn with probability proportional to its score (A-Res)."""

    type_name = "weighted-random-picker"
    metric_reads = MetricReads()
    Params = PickerParams

    def pick(self, ctx: CycleContext, request: InferenceRequest,
             scored: list[ScoredEndpoint]) -> list[Endpoint]:
        rnd = ctx.rng.random
        keyed: list[tuple[int, float, int]] = []
        for i, s in enumerate(scored):
            u = rnd()
            if s.score > 0:
                # u ** (1/w) in (0, 1]; larger keys first. Zero-weight ones sort after.
                keyed.append((0, -(u ** (1.0 / s.score)), i))
            else:
                keyed.append((1, -u, i))
        keyed.sort()
        return [scored[i].endpoint for _, _, i in keyed[: self.params.max_num_of_endpoints]]
