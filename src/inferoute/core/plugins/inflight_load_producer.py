"""`inflight-load-producer` (llm-d): the tokens of the requests in flight, per endpoint.

The plugins of llm-d's optimized-baseline router profile (its guides' default from llm-d v0.8
on: the affinity filter, then the token-load scorer) read one signal, the tokens of the requests
this gateway sent each endpoint, kept by an `inflight-load-producer` (gateway bookkeeping, never
stale). Its `accounting` is one of llm-d's two versions:

- `request` (the default; the producer of `llm-d-inference-scheduler`, before that repository
  became `llm-d-router`): a request counts its estimated prompt tokens plus 1.5 times as many
  output tokens, from dispatch to its end (the router's own per-endpoint count of prompt
  tokens in flight, scaled), so the count follows everything in flight;
- `prefill` (the later `llm-d-router` producer, without `addEstimatedOutputTokens`): a request
  counts the prompt tokens the chosen endpoint must compute (its prompt minus the leading tokens
  a prefix-cache scorer matched there in the cycle: it consumes their `MATCHED_TOKENS`) until
  its first response bytes (the prefill is over; `on_first_token`) or its end, so the count is
  the prefill queue (its own count, at most 65,536 requests: the oldest are forgotten).

`token-load-scorer` and `prefix-cache-affinity-filter` read it (`ReadsInFlightLoad`); it need not
be in a profile (it learns from every decision through its hooks).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, SchedulingResult
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams, bound_plugin
from .prefix_match import MATCHED_TOKENS, uncached_tokens

__all__ = ["InFlightLoadProducer", "InFlightTokens", "MAX_TRACKED", "ReadsInFlightLoad"]

#: requests remembered while in flight (the oldest are forgotten past this)
MAX_TRACKED = 65_536


class InFlightTokens:
    """Tokens per endpoint, each request's count kept until it is released."""

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.max_tracked = max_tracked
        self._by_endpoint: dict[str, int] = {}
        self._requests: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def get(self, endpoint: str) -> int:
        return self._by_endpoint.get(endpoint, 0)

    def add(self, request_id: str, endpoint: str, tokens: int) -> None:
        self.release(request_id)
        self._requests[request_id] = (endpoint, tokens)
        self._by_endpoint[endpoint] = self.get(endpoint) + tokens
        while len(self._requests) > self.max_tracked:
            self.release(next(iter(self._requests)))

    def move(self, request_id: str, endpoint: str) -> None:
        """A fallback endpoint served the request instead: its tokens go there."""
        entry = self._requests.get(request_id)
        if entry is not None and entry[0] != endpoint:
            self.add(request_id, endpoint, entry[1])

    def release(self, request_id: str) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is not None:
            endpoint, tokens = entry
            left = self.get(endpoint) - tokens
            if left > 0:
                self._by_endpoint[endpoint] = left
            else:
                self._by_endpoint.pop(endpoint, None)

    def forget_endpoint(self, endpoint: str) -> None:
        self._by_endpoint.pop(endpoint, None)
        for rid in [r for r, (ep, _) in self._requests.items() if ep == endpoint]:
            del self._requests[rid]

    def __len__(self) -> int:
        return len(self._requests)


@register
class InFlightLoadProducer(BasePlugin):
    """Tokens of this gateway's requests in flight, per endpoint (see the module docstring).

    `request` accounting scales the prompt tokens the router already counts per endpoint
    (`Endpoint.in_flight_tokens`, dispatch to finish); `prefill` keeps its own count, released
    at the first token."""

    type_name = "inflight-load-producer"
    metric_reads = MetricReads()

    class Params(PluginParams):
        accounting: Literal["request", "prefill"] = "request"
        output_ratio: float = pydantic.Field(
            1.5, ge=0.0, description="`request` accounting: output tokens per prompt token")

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        self.prefill = self.params.accounting == "prefill"
        #: `prefill` accounting reads the prefix tokens matched on the target
        self.consumes = (MATCHED_TOKENS,) if self.prefill else ()
        self.inflight = InFlightTokens()

    def tokens(self, ep: Endpoint) -> int:
        if self.prefill:
            return self.inflight.get(ep.name)
        return round(ep.in_flight_tokens * (1.0 + self.params.output_ratio))

    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        if self.prefill:
            target = result.target.name
            self.inflight.add(request.request_id, target, uncached_tokens(ctx, request, target))

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        self.inflight.move(request.request_id, endpoint.name)

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        self.inflight.release(request.request_id)

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        self.inflight.release(request.request_id)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self.inflight.forget_endpoint(endpoint.name)


class ReadsInFlightLoad(BasePlugin):
    """Base of the plugins that read an `inflight-load-producer`: binds the one named by their
    `inFlightLoadProducerName` parameter."""

    load: InFlightLoadProducer

    def bind(self, plugins: dict[str, Any]) -> None:
        self.load = bound_plugin(self, plugins, self.params.in_flight_load_producer_name,
                                 InFlightLoadProducer, "inFlightLoadProducerName")
