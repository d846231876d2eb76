"""`random-picker`: uniformly random order, scores ignored. Parameters: `maxNumOfEndpoints`."""

from __future__ import annotations

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, ScoredEndpoint
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PickerParams

__all__ = ["RandomPicker"]


@register
class RandomPicker(BasePlugin):
    """Uniformly random endpoints, scores ignored."""

    type_name = "random-picker"
    metric_reads = MetricReads()
    Params = PickerParams

    def pick(self, ctx: CycleContext, request: InferenceRequest,
             scored: list[ScoredEndpoint]) -> list[Endpoint]:
        k = min(self.params.max_num_of_endpoints, len(scored))
        return [s.endpoint for s in ctx.rng.sample(scored, k)]
