"""`max-score-picker`: highest total first.

Ties (equal to 1e-9) are broken at random with the scheduler's seeded RNG, so a fixed seed gives
a fixed order. Parameters: `maxNumOfEndpoints` (see `PickerParams`).
"""

from __future__ import annotations

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, ScoredEndpoint
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PickerParams

__all__ = ["MaxScorePicker", "TIE_EPSILON"]

TIE_EPSILON = 1e-9


@register
class MaxScorePicker(BasePlugin):
    """Highest score first, random tie-break."""

    type_name = "max-score-picker"
    metric_reads = MetricReads()
    Params = PickerParams

    def pick(self, ctx: CycleContext, request: InferenceRequest,
             scored: list[ScoredEndpoint]) -> list[Endpoint]:
        k = self.params.max_num_of_endpoints
        n = len(scored)
        if n == 0:
            return []
        if n == 1:
            return [scored[0].endpoint]
        rnd = ctx.rng.random
        # Quantise so float noise in weighted sums does not break ties; the random second key
        # orders equal scores.
        keyed = sorted(((-round(s.score / TIE_EPSILON), rnd(), i) for i, s in enumerate(scored)))
        return [scored[i].endpoint for _, _, i in keyed[:k]]
