"""`prefill-filter`: keeps endpoints whose role is `prefill` or `both`. No parameters."""

from __future__ import annotations

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin

__all__ = ["PrefillFilter"]


@register
class PrefillFilter(BasePlugin):
    """Keeps endpoints that can prefill: role `prefill` or `both`."""

    type_name = "prefill-filter"
    metric_reads = MetricReads()

    def filter(self, ctx: CycleContext, request: InferenceRequest,
               endpoints: list[Endpoint]) -> list[Endpoint]:
        return [ep for ep in endpoints if ep.role != "decode"]
