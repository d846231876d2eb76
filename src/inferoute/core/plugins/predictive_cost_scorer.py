"""`predictive-cost-scorer`: inferoute's default: the endpoint where this request costs least.

For every candidate endpoint the scorer predicts, in KV blocks of `blockSizeTokens` tokens:

- **uncached prefill** `u`: the prompt's blocks minus the leading blocks the endpoint probably
  still holds. The prefix index is sized by the endpoint's *real* KV capacity (`num_blocks` x
  `block_size` from its scrape, in this scorer's blocks; `defaultCapacityBlocks` before the
  first one) and fed not only the prompts sent
  there but also placeholder blocks for the output they will generate, so its LRU forgets
  prefixes about when the server evicts them;
- **KV demand** `D`: the blocks the requests in flight there will hold at their peak: their
  prompt blocks, each shared block counted once (a refcount per block), plus `max_tokens` of
  output each. It comes from the gateway's own dispatch/finish bookkeeping, so it is never
  stale; `D'` is the same with this request added;
- **queued prefill** `Q`: prompt tokens sent there and probably not yet prefilled, drained at
  `prefillTokensPerSecond` (a fluid queue): what this request would wait behind. It never
  exceeds the uncached prompt tokens of the requests there that have not sent their first
  token yet (the gateway sees it), so an endpoint faster than the assumed rate does not pile
  up a queue it has long served: one that did looked busier than a replica that had just
  joined, which then took far more than its share (the flood of docs/benchmark.md);
- **decode work** `W`: the blocks the requests in flight there read at every decode step at
  their peak, a shared prompt block once per request (`W'` with this request).

    cost = a x D' + (1 - a) x W' + (prefillWeight + h) x u x (1 + g x k) + queueWeight x Q
           + overflowWeight x max(0, D' - capacity)
           + waitingWeight x waiting (last scrape) x this request's blocks
           + usageWeight x KV blocks in use (last scrape)

`h` is 0 at the prompt family's home (core/plugins/prefixhome.py: rendezvous rank 0 of a
leading block's hash) and `homeWeight` x (1 + rank / (n - 1)) / 2 elsewhere, so a family that
no endpoint holds any more goes back to its home rather than to whichever endpoint is least
loaded, and a hot family spills to the same few replicas (off by default: on two KV-overflow
scenarios of docs/benchmark.md it changed throughput by -1.6% and +0.1%).

With `queuedPrefillGrowth` g > 0 (0 in the plugin, 0.25 in the packaged `inferoute`
config) the uncached term is multiplied by
`1 + g x max(0, k - f)`, k the requests at the endpoint still waiting for their first token
and f `queuedPrefillGrowthAfter` (0 in the plugin, 2 in that config): the requests a replica
has in prefill even without a backlog. k - f is by Little's law about as many as will queue
behind this one while it waits, so in an overload, where every prefill block delays all of
them, a cached prefix counts for more than a shorter queue. On the real Mooncake conversation
trace overloaded 2x, g = 0.25 roughly halved the mean TTFT. With f = 0 it also weighed the
one or two requests every replica has in prefill at the seed's saturation, where a miss at a
busy family's home then outweighed its spill, and lost 0.2-6.0% of throughput on six seeds of
the seed's run (docs/benchmark.md).

A long prompt's prefill outlasts the fluid queue: attention makes each token dearer the
further into the context it sits, so a 48k-token prompt of the Qwen3-32B profile takes about
twice the tokens / `prefillTokensPerSecond` it is drained at. With `prefillAttentionTokens` P
(0 in the plugin, 20,000 in the packaged `inferoute`) the queue is at
least what the longest prefill still waiting for its first token there owes since it was sent,
a token at position x counted `(P + x) / (P + prefillRateContext)`: the rate holds at
`prefillRateContext` (8,192 in those configs, above the ~7k-token prompts the rate was
chosen on), so only a prefill whose tokens sit past that position on average (a cold prompt
over 16k tokens) can raise the queue; below it the fluid queue never owes less. On the real
Mooncake traces at their own pace this kept short prompts off replicas still prefilling a long
one (docs/benchmark.md, "Short prompts behind long prefills").

`a`, the share of KV demand in the balance term, is 1 by default. With `pressureLow` <
`pressureHigh` it follows the candidates' mean `D / capacity`: 0 (balance decode work) at or
below `pressureLow`, 1 (balance KV demand) from `pressureHigh`, linear between. On the seed's
run with a KV cache that never fills, 0.5 / 1.0 gained 2% (every decision then balances work);
with the real cache it lost 3% and 4% on the `mixed` workload. The loss goes with prompt
families copied to a second replica while the load was low, which stay split when it is high;
its cause is not settled (docs/benchmark.md).

Balancing `D'` keeps every replica's KV demand level, so no replica preempts or stalls much
earlier than the others (a preempted or stalled replica sets the tail of a run), while
`prefillWeight x u` charges for recomputing a prefix another endpoint already holds, so a prompt
family sticks to its replica unless that replica is clearly busier. Past an endpoint's KV
capacity a block of demand weighs `1 + overflowWeight` (4 by default): there it will be paid for
by preemption and recompute, so an over-committed replica lets a family spill to a less loaded
one at a quarter of the demand gap it takes below capacity (on the seed's run, weights 0-2 never
changed a decision, 3 and 4 gained ~0.6% at saturation, 7 lost 0.6%). The scraped signals are
off by default (`waitingWeight: 0`, `usageWeight: 0`): with 50 ms scrapes, reacting to them made
requests herd onto whichever replica looked emptiest (on the seed's run, usageWeight 1 and 3
lost 2% and 11% of throughput at saturation; waitingWeight 4 lost a third on a two-stage
excerpt of it). The score is the min-max inverted cost (cheapest endpoint 1). Defaults were
chosen on the virtual benchmark (docs/benchmark.md).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import pydantic
from xxhash import xxh64_intdigest

from ..blockmatch import clear_owner, nested_prefix_depths
from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, SchedulingResult
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .blockhash import CHARS_PER_TOKEN, request_keys
from .common import BasePlugin, PluginParams, inverted_min_max, kv_capacity_blocks
from .prefixhome import family_key, home_ranks
from .prefix_match import MATCHED_TOKENS, matched_tokens
from .prefixindex import PrefixIndex

__all__ = ["PredictiveCostScorer"]

#: requests remembered while in flight (bounded: the oldest are dropped past this)
MAX_TRACKED = 65_536
_MASK64 = (1 << 64) - 1


@dataclass(slots=True)
class _InFlight:
    endpoint: str
    hashes: list[int]
    out_blocks: int
    work: int
    #: prompt blocks past `maxPrefixBlocks` (not hashed, never shared)
    tail: int = 0
    #: uncached prompt tokens while the request waits for its first token (0 after it)
    prefill: int = 0
    #: it waits for its first token
    prefilling: bool = True


@dataclass(slots=True)
class _EndpointState:
    #: prompt blocks of the requests in flight, with how many of them use each
    blocks: dict[int, int] = field(default_factory=dict)
    #: output blocks the requests in flight will hold at their end
    out_blocks: int = 0
    #: blocks every request in flight attends to at its end, shared ones once per request
    work: int = 0
    #: prompt blocks past `maxPrefixBlocks` of the requests in flight
    tail: int = 0
    queue: float = 0.0
    queue_at: float = 0.0
    #: uncached prompt tokens of the requests in flight without a first token yet: the most
    #: the fluid queue can hold
    pending: int = 0
    #: requests there waiting for their first token
    prefilling: int = 0
    #: with `prefillAttentionTokens`, per request waiting for its first token whose prefill
    #: weighs more than its tokens: that weight + rate x its dispatch time (what it still owes
    #: at `now` is this - rate x now)
    owed: dict[str, float] = field(default_factory=dict)
    #: the same as a max-heap of (-key, request id); entries no longer in `owed` are dropped
    #: when they reach the top, and the heap is rebuilt when they outnumber the live ones
    owed_heap: list[tuple[float, str]] = field(default_factory=list)

    def owe(self, rid: str, key: float) -> None:
        self.owed[rid] = key
        heap = self.owed_heap
        if len(heap) > 2 * len(self.owed) + 64:
            heap[:] = [(-k, r) for r, k in self.owed.items()]
            heapq.heapify(heap)
        else:
            heapq.heappush(heap, (-key, rid))

    def most_owed(self) -> float | None:
        """The largest key in `owed` (None when empty), in O(log n) amortized."""
        heap, owed = self.owed_heap, self.owed
        while heap and owed.get(heap[0][1]) != -heap[0][0]:
            heapq.heappop(heap)
        return -heap[0][0] if heap else None

    @property
    def demand(self) -> int:
        """Peak KV blocks of the requests in flight (shared prompt blocks counted once)."""
        return len(self.blocks) + self.out_blocks + self.tail

    def queued(self, now: float, rate: float) -> float:
        """Prefill tokens still queued at `now`: the fluid drain since the last update, at
        most what still waits for a first token."""
        left = min(self.queue - rate * max(0.0, now - self.queue_at), self.pending)
        return max(0.0, left)

    def prefilled(self, now: float, rate: float, tokens: int) -> None:
        """A request's `tokens` of prefill are over (its first token, or its end)."""
        self.queue = self.queued(now, rate)
        self.queue_at = now
        self.pending = max(0, self.pending - tokens)
        self.queue = min(self.queue, self.pending)


@register
class PredictiveCostScorer(BasePlugin):
    """Lowest predicted KV demand + prefill cost wins (see module docstring)."""

    type_name = "predictive-cost-scorer"
    metric_reads = MetricReads(
        fresh=("waiting", "kv_usage"), static=("cache_config",),
        only_when={"waiting": "waiting_weight", "kv_usage": "usage_weight"})
    #: the prompt tokens each endpoint probably holds (for `latency-slo-scorer` and others)
    produces = (MATCHED_TOKENS,)

    class Params(PluginParams):
        block_size_tokens: int = pydantic.Field(16, ge=1, le=4096)
        max_prefix_blocks: int = pydantic.Field(
            512, ge=1, description="leading blocks of a prompt hashed and matched (8,192 "
                                   "tokens): keeps a decision's cost flat in the prompt's "
                                   "length; the blocks past it count as demand, unshared")
        default_capacity_blocks: int = pydantic.Field(
            16_384, ge=1, description="KV capacity assumed until a scrape reports num_blocks")
        default_max_tokens: int = pydantic.Field(
            256, ge=1, description="output tokens assumed when a request sets no max_tokens")
        pressure_low: float = pydantic.Field(
            0.0, ge=0.0, description="KV pressure (mean demand / capacity) at and below which "
                                     "the balance term is all decode work")
        pressure_high: float = pydantic.Field(
            0.0, ge=0.0, description="KV pressure at and above which it is all KV demand "
                                     "(both 0, the default: always KV demand)")
        prefill_weight: float = pydantic.Field(12.0, ge=0.0)
        queue_weight: float = pydantic.Field(10.0, ge=0.0)
        overflow_weight: float = pydantic.Field(
            3.0, ge=0.0, description="extra weight per block of demand past the KV capacity")
        usage_weight: float = pydantic.Field(
            0.0, ge=0.0, description="per KV block in use at the endpoint (last scrape)")
        waiting_weight: float = pydantic.Field(
            0.0, ge=0.0, description="per request waiting at the endpoint (last scrape), in "
                                     "multiples of this request's blocks")
        prefill_tokens_per_second: float = pydantic.Field(12_000.0, gt=0.0)
        home_weight: float = pydantic.Field(
            0.0, ge=0.0, description="extra weight per uncached block away from the prompt "
                                     "family's home (rendezvous rank 0): half of it at rank 1, "
                                     "rising to all of it at the last rank")
        home_key_blocks: int = pydantic.Field(
            8, ge=1, description="the leading block whose hash names a prompt family")
        queued_prefill_growth: float = pydantic.Field(
            0.0, ge=0.0, description="the uncached-block weight grows by this much per request "
                                     "waiting for its first token at the endpoint past "
                                     "`queuedPrefillGrowthAfter` (off: 0)")
        prefill_attention_tokens: int = pydantic.Field(
            0, ge=0, description="context at which a prefill token's attention costs as much "
                                 "as the rest of it: the queue is at least what the longest "
                                 "prefill there still owes, tokens further in counted dearer "
                                 "(off: 0)")
        prefill_rate_context: int = pydantic.Field(
            0, ge=0, description="the prompt position at which `prefillTokensPerSecond` "
                                 "holds (tokens before it count less, after it more)")
        queued_prefill_growth_after: int = pydantic.Field(
            0, ge=0, description="requests waiting for a first token that do not grow the "
                                 "uncached-block weight: those a replica has in prefill "
                                 "even without a backlog")

        @pydantic.model_validator(mode="after")
        def _pressure_order(self) -> "PredictiveCostScorer.Params":
            if self.pressure_low > self.pressure_high:
                raise ValueError("pressureLow must not exceed pressureHigh")
            return self

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        p = self.params
        self.block_chars = p.block_size_tokens * CHARS_PER_TOKEN
        self.index = PrefixIndex()
        self._state: dict[str, _EndpointState] = {}
        #: prompt block -> bitmask of the endpoint slots with a request in flight holding it
        #: (each endpoint's in-flight blocks form whole prefixes: one bisection matches all)
        self._flying_owners: dict[int, int] = {}
        self._slots: dict[str, int] = {}
        self._flying: OrderedDict[str, _InFlight] = OrderedDict()
        self._key = f"predictive:{self.name}"

    # -- helpers -----------------------------------------------------------------------------
    def _st(self, name: str) -> _EndpointState:
        st = self._state.get(name)
        if st is None:
            st = self._state[name] = _EndpointState()
            free = set(range(len(self._slots) + 1)) - set(self._slots.values())
            self._slots[name] = min(free)
        return st

    def _held_in_flight(self, hashes: Sequence[int], names: list[str]) -> list[int]:
        """Per endpoint, how many leading `hashes` requests in flight there hold."""
        by_slot = {self._slots[n]: i for i, n in enumerate(names)}
        active = 0
        for slot in by_slot:
            active |= 1 << slot
        owners = self._flying_owners
        return nested_prefix_depths(hashes, lambda h: owners.get(h, 0), active, by_slot,
                                    [0] * len(names))

    def _capacity(self, ep: Endpoint) -> int:
        """The endpoint's KV capacity in this scorer's blocks."""
        p = self.params
        return kv_capacity_blocks(ep, p.block_size_tokens, p.default_capacity_blocks)

    def _cycle(self, ctx: CycleContext, request: InferenceRequest) -> dict[str, Any]:
        data = ctx.data.get(self._key)
        if data is None:
            p = self.params
            hashes = request_keys(request, self.block_chars, p.max_prefix_blocks)
            bs = p.block_size_tokens
            prompt_blocks = max(len(hashes), -(-request.prompt_tokens_estimate // bs))
            out_blocks = -(-(request.max_tokens or p.default_max_tokens) // bs)
            tail = prompt_blocks - len(hashes) if len(hashes) >= p.max_prefix_blocks else 0
            data = ctx.data[self._key] = {"hashes": hashes, "prompt_blocks": prompt_blocks,
                                          "out_blocks": out_blocks, "tail": tail,
                                          "matched": {}}
        return data

    # -- scoring -----------------------------------------------------------------------------
    def costs(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> list[float]:
        """The predicted cost (in KV blocks) of sending `request` to each endpoint."""
        p = self.params
        data = self._cycle(ctx, request)
        hashes = data["hashes"]
        names = [ep.name for ep in endpoints]
        known = self._state.get
        states = [known(name) or self._st(name) for name in names]
        bs = p.block_size_tokens
        caps = [self._capacity(ep) for ep in endpoints]
        alpha = self._demand_share(states, caps)
        # the home weight is off by default: skip its pass then
        away: Iterable[float] = (self._away(hashes, names) if p.home_weight and len(names) > 1
                                 else repeat(0.0))
        flying = self._held_in_flight(hashes, names)
        matched_here = data["matched"]
        tokens = matched_tokens(ctx)
        prompt_blocks, out_blocks = data["prompt_blocks"], data["out_blocks"]
        own = prompt_blocks + out_blocks
        prefill_w, queue_w, overflow_w = p.prefill_weight, p.queue_weight, p.overflow_weight
        growth, free = p.queued_prefill_growth, p.queued_prefill_growth_after
        waiting_w, usage_w = p.waiting_weight, p.usage_weight
        # the fluid prefill queue, drained at `rate` tokens/s since its last update, in blocks
        now, rate = ctx.now, p.prefill_tokens_per_second
        out = []
        for ep, name, m, st, cap, far, held in zip(endpoints, names,
                                                   self.index.match(hashes, names), states,
                                                   caps, away, flying):
            matched_here[name] = m
            tokens[name] = m * bs
            demand = len(st.blocks) + st.out_blocks + st.tail + prompt_blocks - held + out_blocks
            queued = min(st.queue - rate * max(0.0, now - st.queue_at), st.pending)
            owes = st.most_owed() if st.owed else None
            if owes is not None:
                queued = max(queued, owes - rate * now)
            cost = (alpha * demand + (1.0 - alpha) * (st.work + own)
                    + (prefill_w + far) * max(0, prompt_blocks - m)
                    * (1.0 + growth * max(0, st.prefilling - free) if growth else 1.0)
                    + (queue_w * (queued / bs) if queued > 0.0 else 0.0))
            if waiting_w:
                cost += waiting_w * ep.metrics.waiting * own
            if usage_w:
                cost += usage_w * ep.metrics.kv_usage * cap
            if demand > cap:
                cost += overflow_w * (demand - cap)
            out.append(cost)
        return out

    def _away(self, hashes: list[int], names: list[str]) -> list[float]:
        """Per endpoint, the extra weight of an uncached block there: 0 at the family's home,
        `homeWeight` x (1 + rank / (n - 1)) / 2 at rank >= 1."""
        w = self.params.home_weight
        key = family_key(hashes, self.params.home_key_blocks) if w and len(names) > 1 else None
        if key is None:
            return [0.0] * len(names)
        last = len(names) - 1
        return [w * (1.0 + r / last) / 2.0 if r else 0.0 for r in home_ranks(key, names)]

    def _demand_share(self, states: list[_EndpointState], caps: list[int]) -> float:
        """How much of the balance term is KV demand (the rest is decode work): 0 while the
        candidates' mean demand / capacity is at most `pressureLow`, 1 from `pressureHigh`."""
        if not states:
            return 1.0
        lo, hi = self.params.pressure_low, self.params.pressure_high
        if hi <= 0.0:  # the default: always KV demand
            return 1.0
        pressure = sum(st.demand / cap for st, cap in zip(states, caps)) / len(states)
        if pressure >= hi:
            return 1.0
        if pressure <= lo:
            return 0.0
        return (pressure - lo) / (hi - lo)

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
        prefill = float(uncached * p.block_size_tokens)
        st = self._st(name)
        held = st.blocks
        hashes = data["hashes"].tolist()
        owners, bit = self._flying_owners, 1 << self._slots[name]
        for h in hashes:
            n = held.get(h, 0)
            if not n:
                owners[h] = owners.get(h, 0) | bit
            held[h] = n + 1
        st.out_blocks += data["out_blocks"]
        st.tail += data["tail"]
        st.work += data["prompt_blocks"] + data["out_blocks"]
        st.queue = st.queued(ctx_now, p.prefill_tokens_per_second) + prefill
        st.queue_at = ctx_now
        st.pending += int(prefill)
        st.prefilling += 1
        if p.prefill_attention_tokens and prefill:
            weighted = self._attention_weighted(m * p.block_size_tokens, prefill)
            if weighted > prefill:  # otherwise the fluid queue never owes less than it
                st.owe(request.request_id, weighted + p.prefill_tokens_per_second * ctx_now)
        self._flying[request.request_id] = _InFlight(name, hashes, data["out_blocks"],
                                                     data["prompt_blocks"] + data["out_blocks"],
                                                     data["tail"], int(prefill))
        while len(self._flying) > MAX_TRACKED:
            rid, old = self._flying.popitem(last=False)
            self._release(rid, old, ctx_now)
        cap = self._capacity(ep)
        if hashes:
            self.index.insert(name, hashes, cap)
        # placeholder blocks for the output: they age the LRU like the server's generated KV
        seed = xxh64_intdigest(request.request_id.encode())
        self.index.insert(name, [xxh64_intdigest(b"out", (seed + i) & _MASK64)
                                 for i in range(data["out_blocks"])], cap)

    def _attention_weighted(self, start: int, tokens: float) -> float:
        """Prefill tokens at positions `start` .. `start + tokens`, each at position x counted
        (P + x) / (P + prefillRateContext)."""
        p = self.params
        att = p.prefill_attention_tokens
        end = start + tokens
        return (tokens * att + (end * end - start * start) / 2) / (att + p.prefill_rate_context)

    def _prefilled(self, rid: str, rec: _InFlight, now: float) -> None:
        st = self._state.get(rec.endpoint)
        if st is not None and rec.prefill:
            st.prefilled(now, self.params.prefill_tokens_per_second, rec.prefill)
        if st is not None and rec.prefilling:
            st.prefilling = max(0, st.prefilling - 1)
            if st.owed:
                st.owed.pop(rid, None)
                if not st.owed:
                    st.owed_heap.clear()
        rec.prefill = 0
        rec.prefilling = False

    def _release(self, rid: str, rec: _InFlight, now: float) -> None:
        self._prefilled(rid, rec, now)
        st = self._state.get(rec.endpoint)
        if st is None:
            return
        held = st.blocks
        gone = []
        for h in rec.hashes:
            n = held.get(h, 0) - 1
            if n > 0:
                held[h] = n
            elif held.pop(h, None) is not None:
                gone.append(h)
        clear_owner(self._flying_owners, gone, 1 << self._slots[rec.endpoint])
        st.out_blocks = max(0, st.out_blocks - rec.out_blocks)
        st.tail = max(0, st.tail - rec.tail)
        st.work = max(0, st.work - rec.work)

    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        self._account(ctx.now, request, result.target, self._cycle(ctx, request))

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        rec = self._flying.get(request.request_id)
        if rec is None or rec.endpoint == endpoint.name:
            return
        # a fallback served it: move the accounting (the index keeps the wrong guess; it ages out)
        self._release(request.request_id, self._flying.pop(request.request_id), now)
        ctx = CycleContext(now=now, rng=None, data={})  # type: ignore[arg-type]
        self._account(now, request, endpoint, self._cycle(ctx, request))

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        rec = self._flying.get(request.request_id)
        if rec is not None:
            self._prefilled(request.request_id, rec, now)

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        rec = self._flying.pop(request.request_id, None)
        if rec is not None:
            self._release(request.request_id, rec, now)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self.index.remove_endpoint(endpoint.name)
        st = self._state.pop(endpoint.name, None)
        if st is not None:
            clear_owner(self._flying_owners, st.blocks, 1 << self._slots.pop(endpoint.name))
        for rid in [r for r, rec in self._flying.items() if rec.endpoint == endpoint.name]:
            del self._flying[rid]

    def stats(self) -> dict[str, Any]:
        return {name: {"demand_blocks": st.demand} for name, st in self._state.items()}
