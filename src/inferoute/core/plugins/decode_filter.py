"""`decode-filter`: keeps endpoints whose role is `decode` or `both`. No parameters."""

from __future__ import annotations

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin

__all__ = ["DecodeFilter"]


@register
class DecodeFilter(BasePlugin):
    """Keeps endpoints that can decode: role `decode` or `both`."""

    type_name = "decode-filter"
    metric_reads = MetricReads()

    def filter(self, ctx: CycleContext, request: InferenceRequest,
               endpoints: list[Endpoint]) -> list[Endpoint]:
        return [ep for ep in endpoints if ep.role != "prefill"]
