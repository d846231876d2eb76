"""`capacity-placement-scorer`: keep each prompt family on as few replicas as its load needs.

When prompt families need more KV than the fleet has, a router that sends a family wherever
looks cheapest at that moment leaves copies of its prefix on several replicas; each copy evicts
some other family, and the fleet's hit rate falls to what its least lucky replica keeps. This
scorer places families instead of requests:

- a **family** is the prompts that share a leading block (`familyKeyBlocks`, core/plugins/
  prefixhome.py); its **prefix** is what its first two requests share (the longest common run
  of block hashes; the whole prompt until the second request), so a family of short shared
  system prompts weighs little and one of long documents much;
- each endpoint's **working set** is the prefix tokens of the families homed there, and its
  **capacity** `num_blocks x block_size` from its scrape (`vllm:cache_config_info`);
- a prompt of no known family scores 1 where the working set is the smallest share of the
  capacity, 0 elsewhere (ties all 1: the other scorers decide), and where it goes is the new
  family's **home**: families are partitioned evenly by the KV they need, as SGLang's
  smallest-tree rule does, and remembered after the servers evicted them, so a family comes
  back to one replica instead of leaving a copy on every replica it was ever sent to;
- a request of a homed family scores 1 at its homes, 0 elsewhere, unless **spilling pays**: its
  prefill would wait longer at the cheapest home than it costs elsewhere. The wait is the
  endpoint's pending prefill (prompt tokens sent there whose first token has not come back,
  minus the cached share of its families' prefixes: all of it while the working set fits the
  capacity, capacity / working set past it, LRU's share under uniform reuse); the cost
  elsewhere is that endpoint's pending prefill, the whole prompt, and the eviction a copy
  causes (the prefix tokens beyond what its working set leaves free). A copy is also made only
  onto an endpoint with less than this prompt pending: while every replica has a backlog,
  recomputing a prefix elsewhere adds work and removes no wait. The spill target becomes one
  more home: a hot family is replicated, a cold one stays on one replica (`spill: false`: a
  pure partition).

Nothing here is a tuned threshold: the spill test compares tokens of prefill, and the capacity
comes from each endpoint's own scrape (`defaultCapacityTokens` only until the first one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, SchedulingResult
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .blockhash import CHARS_PER_TOKEN, block_hashes
from .common import BasePlugin, FamilyParams, PluginParams, kv_capacity_tokens
from .prefixhome import common_prefix, family_key

__all__ = ["CapacityPlacementScorer"]

#: requests remembered from dispatch to first token (bounded: the oldest are dropped past this)
MAX_PENDING = 65_536


@dataclass(slots=True)
class _Family:
    #: block hashes of the first request, until the second one fixes the shared prefix
    first: list[int] | None
    #: tokens the family's requests share (the whole first prompt until the second request)
    prefix_tokens: int = 0
    #: endpoints that hold (or are meant to hold) the prefix, in the order they were added
    homes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    endpoint: str
    tokens: int
    family: _Family | None


@register
class CapacityPlacementScorer(BasePlugin):
    """A family's homes score 1; a new home only when spilling costs less prefill than waiting."""

    type_name = "capacity-placement-scorer"
    metric_reads = MetricReads(static=("cache_config",))

    class Params(FamilyParams):
        spill: bool = pydantic.Field(
            True, description="copy a family to another endpoint when that pays (false: "
                              "every family stays on the endpoint it was placed on)")

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        self._families: OrderedDict[int, _Family] = OrderedDict()
        #: per endpoint: prefix tokens of the families homed there
        self._working: dict[str, int] = {}
        #: per endpoint: prompt tokens sent there still waiting for their first token
        self._queued: dict[str, int] = {}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._key = f"placement:{self.name}"

    # -- state -------------------------------------------------------------------------------
    def capacity_tokens(self, ep: Endpoint) -> int:
        """The endpoint's KV capacity in tokens, from its scraped cache config."""
        return kv_capacity_tokens(ep, self.params.default_capacity_tokens)

    def _cached(self, ep: Endpoint, tokens: int) -> int:
        """Expected cached part of a `tokens` prefix homed at `ep`: all of it while the working
        set fits the capacity, else the share of the working set an LRU cache keeps."""
        ws = self.working_set(ep.name)
        cap = self.capacity_tokens(ep)
        return tokens if ws <= cap else tokens * cap // ws

    def working_set(self, name: str) -> int:
        """Prefix tokens of the families homed at endpoint `name`."""
        return self._working.get(name, 0)

    def _cycle(self, ctx: CycleContext, request: InferenceRequest) -> dict[str, Any]:
        data = ctx.data.get(self._key)
        if data is None:
            p = self.params
            hashes = block_hashes(request.prefix_text, request.target_model,
                                  p.hash_block_tokens * CHARS_PER_TOKEN, p.max_prefix_blocks)
            data = ctx.data[self._key] = {"hashes": hashes,
                                          "key": family_key(hashes, p.family_key_blocks),
                                          "spill": None}
        return data

    def _add_home(self, fam: _Family, name: str) -> None:
        if name not in fam.homes:
            fam.homes.append(name)
            self._working[name] = self._working.get(name, 0) + fam.prefix_tokens

    def _drop_home(self, fam: _Family, name: str) -> None:
        fam.homes.remove(name)
        self._working[name] = max(0, self._working.get(name, 0) - fam.prefix_tokens)

    def _set_prefix(self, fam: _Family, tokens: int) -> None:
        """Change the family's prefix, keeping its homes' working sets in step."""
        for home in fam.homes:
            self._working[home] = self._working.get(home, 0) + tokens - fam.prefix_tokens
        fam.prefix_tokens = tokens

    # -- scoring -----------------------------------------------------------------------------
    def spill_costs(self, request: InferenceRequest, fam: _Family,
                    endpoints: list[Endpoint]) -> list[int]:
        """Prefill tokens this request waits for and causes at each endpoint: its pending
        prefill, the prompt's uncached part, and away from the homes the family's prefix
        tokens that do not fit in what the endpoint's working set leaves free (the eviction a
        copy causes, paid again by the family it pushed out)."""
        prompt = request.prompt_tokens_estimate
        out = []
        for ep in endpoints:
            cost = self._queued.get(ep.name, 0)
            if ep.name in fam.homes:
                cost += max(0, prompt - self._cached(ep, fam.prefix_tokens))
            else:
                free = max(0, self.capacity_tokens(ep) - self.working_set(ep.name))
                cost += prompt + max(0, fam.prefix_tokens - free)
            out.append(cost)
        return out

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        data = self._cycle(ctx, request)
        fam = self._families.get(data["key"]) if data["key"] is not None else None
        homes = [] if fam is None else [i for i, ep in enumerate(endpoints)
                                        if ep.name in fam.homes]
        if fam is None or not homes:
            return self._place(endpoints)
        costs = self.spill_costs(request, fam, endpoints)
        best_home = min(costs[i] for i in homes)
        prompt = request.prompt_tokens_estimate
        # a copy pays only where it is cheaper than waiting at home and where this request's
        # prefill would otherwise leave the replica idle: while every replica has a backlog,
        # recomputing the prefix elsewhere is work added, not wait removed
        away = [i for i, ep in enumerate(endpoints)
                if ep.name not in fam.homes and self._queued.get(ep.name, 0) < prompt]
        spill = min(away, key=costs.__getitem__) if away and self.params.spill else None
        if spill is not None and costs[spill] < best_home:
            data["spill"] = endpoints[spill].name
            return [1.0 if i == spill else 0.0 for i in range(len(endpoints))]
        return [1.0 if i in homes else 0.0 for i in range(len(endpoints))]

    def _place(self, endpoints: list[Endpoint]) -> list[float]:
        """A prompt of no known family: 1 where the working set is the smallest share of the
        capacity (ties all 1, for the other scorers to decide), else 0."""
        shares = [self.working_set(ep.name) / self.capacity_tokens(ep) for ep in endpoints]
        low = min(shares, default=0.0)
        return [1.0 if share <= low else 0.0 for share in shares]

    # -- learning ----------------------------------------------------------------------------
    def _learn(self, data: dict[str, Any], target: str) -> _Family | None:
        key = data["key"]
        if key is None:
            return None
        fam = self._families.get(key)
        if fam is None:
            fam = self._families[key] = _Family(first=data["hashes"])
            self._set_prefix(fam, len(data["hashes"]) * self.params.hash_block_tokens)
            self._add_home(fam, target)
            while len(self._families) > self.params.max_families:
                _, old = self._families.popitem(last=False)
                self._set_prefix(old, 0)
            return fam
        self._families.move_to_end(key)
        if fam.first is not None:
            shared = common_prefix(fam.first, data["hashes"])
            fam.first = None
            self._set_prefix(fam, shared * self.params.hash_block_tokens)
        if data["spill"] == target or not fam.homes:
            self._add_home(fam, target)
        return fam

    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        data = self._cycle(ctx, request)
        known = self._families.get(data["key"]) if data["key"] is not None else None
        held = known is not None and result.target.name in known.homes
        fam = self._learn(data, result.target.name)
        self._enqueue(request, result.target, fam, held)

    def _enqueue(self, request: InferenceRequest, ep: Endpoint, fam: _Family | None,
                 held: bool) -> None:
        """Count the request's prefill as pending at `ep` (its family's prefix as cached
        there when `ep` was already a home)."""
        rid, name = request.request_id, ep.name
        self._drop(rid)
        cached = self._cached(ep, fam.prefix_tokens) if fam is not None and held else 0
        tokens = max(0, request.prompt_tokens_estimate - cached)
        self._pending[rid] = _Pending(name, tokens, fam)
        self._queued[name] = self._queued.get(name, 0) + tokens
        while len(self._pending) > MAX_PENDING:
            self._drop(next(iter(self._pending)))

    def _drop(self, rid: str) -> None:
        rec = self._pending.pop(rid, None)
        if rec is None:
            return
        self._queued[rec.endpoint] = max(0, self._queued.get(rec.endpoint, 0) - rec.tokens)

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        rec = self._pending.get(request.request_id)
        if rec is not None and rec.endpoint != endpoint.name:
            fam = rec.family
            self._enqueue(request, endpoint, fam, fam is not None and endpoint.name in fam.homes)

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        self._drop(request.request_id)

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        self._drop(request.request_id)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        name = endpoint.name
        for fam in self._families.values():
            if name in fam.homes:
                self._drop_home(fam, name)
        self._working.pop(name, None)
        self._queued.pop(name, None)
        for rid in [r for r, rec in self._pending.items() if rec.endpoint == name]:
            del self._pending[rid]

    def stats(self) -> dict[str, Any]:
        return {"families": len(self._families),
                "working_set_tokens": dict(self._working),
                "queued_prefill_tokens": dict(self._queued)}
