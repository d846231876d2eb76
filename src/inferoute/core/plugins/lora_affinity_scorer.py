"""`lora-affinity-scorer`: prefer endpoints that can serve the request's LoRA adapter soonest.

Uses the scraped `vllm:lora_requests_info` (running adapters, waiting adapters, max_lora):

- 1.0 the adapter is running on the endpoint (loaded, no swap needed);
- 0.8 it is not loaded but the endpoint has a free adapter slot (loads without evicting);
- 0.6 it is queued to load there (waiting) and no slot is free;
- 0.0 otherwise (loading it would evict another adapter), or no LoRA info was scraped.

Requests without a LoRA adapter score 1 everywhere (the scorer does not bias them).
No parameters.
"""

from __future__ import annotations

from typing import Sequence

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.registry import register
from .common import BasePlugin

__all__ = ["lora_affinity", "LoraAffinityScorer"]

ACTIVE, FREE_SLOT, WAITING, NONE = 1.0, 0.8, 0.6, 0.0


def lora_affinity(adapter: str, ep: Endpoint) -> float:
    """The affinity score of one endpoint for `adapter`."""
    m = ep.metrics
    if adapter in m.running_loras:
        return ACTIVE
    loaded = len(set(m.running_loras) | set(m.waiting_loras))
    if m.max_lora is not None and loaded < m.max_lora:
        return FREE_SLOT
    if adapter in m.waiting_loras:
        return WAITING
    return NONE


@register
class LoraAffinityScorer(BasePlugin):
    """Adapter already active 1.0, free slot 0.8, adapter waiting 0.6, else 0."""

    type_name = "lora-affinity-scorer"

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        adapter = request.lora_adapter
        if not adapter:
            return [1.0] * len(endpoints)
        return [lora_affinity(adapter, ep) for ep in endpoints]
