"""`round-robin-picker`: the plain Kubernetes Service baseline.

Rotates over the candidates ordered by name, one step per request, ignoring scores; fallbacks
are the next in rotation. Parameters: `maxNumOfEndpoints`.
"""

from __future__ import annotations

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, ScoredEndpoint
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PickerParams, PluginParams

__all__ = ["RoundRobinPicker"]


@register
class RoundRobinPicker(BasePlugin):
    """Next endpoint in name order for each request; scores ignored."""

    type_name = "round-robin-picker"
    metric_reads = MetricReads()
    Params = PickerParams

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        self._next = 0

    def pick(self, ctx: CycleContext, request: InferenceRequest,
             scored: list[ScoredEndpoint]) -> list[Endpoint]:
        n = len(scored)
        if n == 0:
            return []
        ordered = sorted((s.endpoint for s in scored), key=lambda ep: ep.name)
        start = self._next % n
        self._next = start + 1
        k = min(self.params.max_num_of_endpoints, n)
        return [ordered[(start + j) % n] for j in range(k)]
