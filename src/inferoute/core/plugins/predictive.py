"""`predictive-cost-scorer`: inferoute's default: the endpoint where this request costs least.

For every candidate endpoint the scorer predicts, in KV blocks of `blockSizeTokens` tokens:

- **uncached prefill** `u`: the prompt's blocks minus the leading blocks the endpoint probably
  still holds. The prefix index is sized by the endpoint's *real* KV capacity (`num_blocks` from
  its scrape) and fed not only the prompts sent there but also placeholder blocks for the
  output they will generate, so its LRU forgets prefixes about when the server evicts them;
- **KV demand** `D`: blocks the requests in flight there will hold at their peak (their uncached
  prompt blocks plus `max_tokens` of output), from the gateway's own dispatch/finish
  bookkeeping, hence never stale. Shared prefix blocks are counted once, by the request that
  brought them;
- **queued prefill** `Q`: prompt tokens sent there and probably not yet prefilled, drained at
  `prefillTokensPerSecond` (a fluid queue): what this request would wait behind.

    cost = D + u + prefillWeight x u + queueWeight x Q

`D + u` is the endpoint's KV demand if the request goes there: balancing it keeps every replica
below its capacity as long as the fleet allows (preemptions and KV-full waits are what ruin
throughput), while the `prefillWeight x u` term pays for recomputing a prefix another endpoint
already holds, so requests stick to their prefix unless that replica is much busier. When the
projected demand exceeds the endpoint's capacity, the excess counts `overflowWeight` times more.
The score is the min-max inverted cost (cheapest endpoint 1).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import pydantic
from xxhash import xxh64_intdigest

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, SchedulingResult
from ..scheduling.registry import register
from .blockhash import CHARS_PER_TOKEN, block_hashes
from .common import BasePlugin, PluginParams, inverted_min_max
from .prefixindex import PrefixIndex

#: requests remembered while in flight (bounded: the oldest are dropped past this)
MAX_TRACKED = 65_536
_MASK64 = (1 << 64) - 1


@dataclass(slots=True)
class _InFlight:
    endpoint: str
    demand: float
    prefill_tokens: float


@dataclass(slots=True)
class _EndpointState:
    demand: float = 0.0
    queue: float = 0.0
    queue_at: float = 0.0

    def queued(self, now: float, rate: float) -> float:
        """Prefill tokens still queued at `now` (fluid drain since the last update)."""
        left = self.queue - rate * max(0.0, now - self.queue_at)
        return left if left > 0.0 else 0.0


@register
class PredictiveCostScorer(BasePlugin):
    """Lowest predicted KV demand + prefill cost wins (see module docstring)."""

    type_name = "predictive-cost-scorer"

    class Params(PluginParams):
        block_size_tokens: int = pydantic.Field(16, ge=1, le=4096)
        max_prefix_blocks: int = pydantic.Field(16_384, ge=1)
        default_capacity_blocks: int = pydantic.Field(
            16_384, ge=1, description="KV capacity assumed until a scrape reports num_blocks")
        default_max_tokens: int = pydantic.Field(
            256, ge=1, description="output tokens assumed when a request sets no max_tokens")
        prefill_weight: float = pydantic.Field(1.0, ge=0.0)
        queue_weight: float = pydantic.Field(1.0, ge=0.0)
        overflow_weight: float = pydantic.Field(1.0, ge=0.0)
        prefill_tokens_per_second: float = pydantic.Field(12_000.0, gt=0.0)

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        p = self.params
        self.block_chars = p.block_size_tokens * CHARS_PER_TOKEN
        self.index = PrefixIndex()
        self._state: dict[str, _EndpointState] = {}
        self._flying: OrderedDict[str, _InFlight] = OrderedDict()
        self._key = f"predictive:{self.name}"

    # -- helpers -----------------------------------------------------------------------------
    def _st(self, name: str) -> _EndpointState:
        st = self._state.get(name)
        if st is None:
            st = self._state[name] = _EndpointState()
        return st

    def _capacity(self, ep: Endpoint) -> int:
        return ep.metrics.num_blocks or self.params.default_capacity_blocks

    def _cycle(self, ctx: CycleContext, request: InferenceRequest) -> dict[str, Any]:
        data = ctx.data.get(self._key)
        if data is None:
            p = self.params
            hashes = block_hashes(request.prefix_text, request.target_model, self.block_chars,
                                  p.max_prefix_blocks)
            bs = p.block_size_tokens
            prompt_blocks = max(len(hashes), -(-request.prompt_tokens_estimate // bs))
            out_blocks = -(-(request.max_tokens or p.default_max_tokens) // bs)
            data = ctx.data[self._key] = {"hashes": hashes, "prompt_blocks": prompt_blocks,
                                          "out_blocks": out_blocks, "matched": {}}
        return data

    # -- scoring -----------------------------------------------------------------------------
    def costs(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> list[float]:
        """The predicted cost (in KV blocks) of sending `request` to each endpoint."""
        p = self.params
        data = self._cycle(ctx, request)
        names = [ep.name for ep in endpoints]
        matched = self.index.match(data["hashes"], names)
        bs = p.block_size_tokens
        out = []
        for ep, name, m in zip(endpoints, names, matched):
            data["matched"][name] = m
            st = self._st(name)
            uncached = max(0, data["prompt_blocks"] - m)
            demand = st.demand + uncached + data["out_blocks"]
            queued = st.queued(ctx.now, p.prefill_tokens_per_second) / bs
            cost = demand + p.prefill_weight * uncached + p.queue_weight * queued
            over = demand - self._capacity(ep)
            if over > 0:
                cost += p.overflow_weight * over
            out.append(cost)
        return out

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        return inverted_min_max(self.costs(ctx, request, endpoints))

    # -- learning ----------------------------------------------------------------------------
    def _account(self, ctx_now: float, request: InferenceRequest, ep: Endpoint,
                 data: dict[str, Any]) -> None:
        p = self.params
        name = ep.name
        m = data["matched"].get(name)
        if m is None:
            m = self.index.match(data["hashes"], [name])[0]
        uncached = max(0, data["prompt_blocks"] - m)
        demand = uncached + data["out_blocks"]
        prefill = float(uncached * p.block_size_tokens)
        st = self._st(name)
        st.demand += demand
        st.queue = st.queued(ctx_now, p.prefill_tokens_per_second) + prefill
        st.queue_at = ctx_now
        self._flying[request.request_id] = _InFlight(name, demand, prefill)
        while len(self._flying) > MAX_TRACKED:
            _, old = self._flying.popitem(last=False)
            self._release(old)
        cap = self._capacity(ep)
        hashes = data["hashes"]
        if hashes:
            self.index.insert(name, hashes, cap)
        # placeholder blocks for the output: they age the LRU like the server's generated KV
        seed = xxh64_intdigest(request.request_id.encode())
        self.index.insert(name, [xxh64_intdigest(b"out", (seed + i) & _MASK64)
                                 for i in range(data["out_blocks"])], cap)

    def _release(self, rec: _InFlight) -> None:
        st = self._state.get(rec.endpoint)
        if st is not None:
            st.demand = max(0.0, st.demand - rec.demand)

    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        self._account(ctx.now, request, result.target, self._cycle(ctx, request))

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        rec = self._flying.get(request.request_id)
        if rec is None or rec.endpoint == endpoint.name:
            return
        # a fallback served it: move the accounting (the index keeps the wrong guess; it ages out)
        self._release(self._flying.pop(request.request_id))
        ctx = CycleContext(now=now, rng=None, data={})  # type: ignore[arg-type]
        self._account(now, request, endpoint, self._cycle(ctx, request))

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        rec = self._flying.pop(request.request_id, None)
        if rec is not None:
            self._release(rec)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self.index.remove_endpoint(endpoint.name)
        self._state.pop(endpoint.name, None)
        for rid in [r for r, rec in self._flying.items() if rec.endpoint == endpoint.name]:
            del self._flying[rid]

    def stats(self) -> dict[str, Any]:
        return {name: {"demand_blocks": st.demand} for name, st in self._state.items()}
