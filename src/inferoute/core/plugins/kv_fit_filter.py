"""`kv-fit-filter`: send a request only where its KV need fits; release waiting ones by family.

Why (docs/benchmark.md, "Where the KV cache runs out"): where prompt families need more KV
than the fleet has, a saturated replica's running requests hold 90-92% of its blocks, each
of another family, so what is left between requests is about one family's prefix and every
other request recomputes its own. Placement cannot fix that (a perfect partition hits 1-4
points more); the running set's composition can: a replica whose running requests share few
prefixes holds more of them at once and recomputes less. With admission's queue in front of
the replicas, this plugin decides which waiting request goes next and where.

What it knows, from the gateway's own bookkeeping (the scheduler's hooks), never stale:

- a **family** is the prompts sharing a leading block (`familyKeyBlocks`); its **prefix** is
  what its first two requests share (the whole prompt until the second one);
- per endpoint, its **KV need**: the prefix of every family it has in flight, once, plus
  each request's own tokens (its prompt past the prefix, and `outputShare` x `max_tokens`);
  its **capacity** is `num_blocks x block_size` from its scrape (`defaultCapacityTokens`
  until then);
- per endpoint, its requests **pending**: sent, no first token back yet (its prefill queue);
- per endpoint, the families that finished there last, newest first, as many as their
  prefixes fit in capacity - need: what its LRU cache still holds of them.

As a **release rule** (core/admission/release.py; admission asks it before releasing while
it is `active`, that is while it is `holding`, below): for each endpoint, fewest pending
requests first (then least need), the oldest waiting request of a family in flight or cached
there, else the oldest request of the family whose waiting requests have waited longest in
total, is released to it if its need fits there (an endpoint with nothing in flight takes
anything); None when nothing fits anywhere, and the
requests wait in the gateway, where they can still be chosen by family, rather than in a
replica's first-come-first-served queue. Opening a family costs its prefix's prefill
whatever the number of its requests that then share it, so the family whose requests have
waited longest in total goes first: more requests per prefill, and the longer waits first;
a lone request's weight is its own wait, which grows until it goes (ordering by the count of
waiting requests alone would let it wait behind any pair). Where admission's queue is not in
arrival order (earliest deadline first with mixed targets) its first request goes instead, as
the queue orders it. A released request's
endpoint is reserved for it (its need charged at once). An arrival goes at once (`place`)
when nothing waits and it fits somewhere; the scorers then choose among those endpoints.

As a **filter**: keeps the endpoint reserved for the request; without a reservation the
endpoints where its need fits, else all of them (a filter never refuses a request: without
admission configured, it only steers).

**Only while the caches thrash.** Holding requests back pays where prompt families overflow
the fleet's KV (they are recomputed over and over) and costs where they fit: there the
replicas would have run the held requests in a larger batch (on the seed's `shared_prefix`
and on `multi_turn_chat` an always-on hold lost 6-7%). So the rule measures what it fixes:
for every request of a family seen before, the share of the family's prefix the server
recomputed, averaged over the last `recomputeWindow` such requests or so (an exponential
average, started as the plain mean of the first ones, so the first evidence counts at once;
core/plugins/recompute_share.py): from the `cached_tokens` its usage reports when it ends,
and from the server's `prefix_cache_hits` counter against the prefixes of the returning
requests whose first tokens it sent. While that share is below `recomputeToHold`
(0.1) the rule is not active: admission admits and releases the pool as one without a rule
(its dispatch budget, saturation detector, reserve and queue order, when configured) and the
filter keeps every endpoint, so the scorers route as they would without it; from it on, the
rule holds and releases by family as above. The requests admission sends while it is not
active are charged where they are served (`on_served`), so the need is right when it holds
again; what waited in admission's queue under either regime is released by the other. Measured
in virtual time (docs/benchmark.md): without the hold the share stays 0.0 on
`multi_turn_chat`; with it, on an overflowing load, it settles at 0.2-0.3 (the hold halves
it, not more), so the rule stays on there. Until the first sample (no family has returned
yet, or the server exports no hit counter and reports no cached tokens) the rule does not
hold: with no prompt families (unrelated prompts) there is nothing to recompute, and holding
by the KV need alone would change what a load without families gets (`recomputeToHold` 0
holds always). The gateway asks for usage on the requests its admission runs (as for this
rule) and hides it from clients that did not; vLLM puts cached tokens in it only with
`--enable-prompt-tokens-details`, and exports its hit counters always, so behind a default
vLLM the counters measure the share.

`outputShare` (0.5) is the share of a request's `max_tokens` counted in its need: a running
request holds half its output on average over its life, so a replica runs the batch its KV
holds on average and preempts a little when its running requests grow together; 1 counts
every request at its peak (it never preempts, and runs smaller batches). Both, and a cap on
the prefill queue per endpoint that was dropped, are measured in docs/benchmark.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .blockhash import CHARS_PER_TOKEN, request_keys
from .common import BasePlugin, FamilyParams, PluginParams, kv_capacity_tokens
from .prefixhome import common_prefix, family_key
from .recompute_share import RecomputeShare, RunningMean

__all__ = ["KvFitFilter"]

#: per endpoint: finished families remembered (the cache holds fewer; see `_cached`)
MAX_RECENT = 256


@dataclass(slots=True)
class _Need:
    """A request's KV need: its family, the family's prefix, and its own tokens."""

    key: int | None
    prefix: int
    own: int
    #: the family had a request before this one (its prefix could have been cached)
    returning: bool = False
    #: the prompt's tokens as the gateway estimates them (characters / 4)
    prompt: int = 0


@dataclass(slots=True)
class _Held:
    """A request reserved for, or in flight on, an endpoint."""

    endpoint: str
    need: _Need
    #: the family's prefix was charged with this request (the family's first in flight there)
    charged: int
    reserved_at: float
    pending: bool = True
    served: bool = False


@dataclass(slots=True)
class _Endpoint:
    need: int = 0
    pending: int = 0
    #: family key -> [requests in flight, prefix tokens charged]
    families: dict[int, list[int]] = field(default_factory=dict)
    #: families that finished here, oldest first: key -> prefix tokens
    recent: OrderedDict[int, int] = field(default_factory=OrderedDict)


def _cacheable(need: _Need, block_size: int | None, tokens_per_estimate: float) -> int:
    """The tokens of the request's family prefix its server could have cached: 0 for a new
    family; else the prefix in the server's tokens (the estimate x `tokens_per_estimate`,
    the server's prompt tokens over the gateway's estimate of them, at most 1) cut to whole
    engine blocks (`block_size` from the scrape: vLLM-CPU's blocks hold 128 tokens, so a
    perfectly cached 1,000-token prefix reports 896 cached tokens, a 10% "recompute" that
    alone would keep the rule holding). Counted in the estimate, a prefix of text with more than four
    characters a token read as partly recomputed when it was all cached."""
    if not need.returning:
        return 0
    prefix = int(need.prefix * tokens_per_estimate)
    return prefix - prefix % block_size if block_size else prefix


@register
class KvFitFilter(BasePlugin):
    """Keeps the endpoint a request's KV need was reserved on (or fits); a release rule."""

    type_name = "kv-fit-filter"
    metric_reads = MetricReads(static=("cache_config", "prefix_cache"))

    class Params(FamilyParams):
        output_share: float = pydantic.Field(
            0.5, ge=0.0, le=1.0, description="share of max_tokens counted in a request's need")
        default_max_tokens: int = pydantic.Field(
            1024, ge=1, description="output tokens assumed when a request sets no max_tokens")
        max_requests: int = pydantic.Field(
            65_536, ge=1, description="requests tracked at once (the oldest dropped past it)")
        reservation_seconds: float = pydantic.Field(
            30.0, gt=0, description="a reservation never sent is dropped after this long")
        recompute_to_hold: float = pydantic.Field(
            0.1, ge=0.0, le=1.0, description="hold requests while the servers recompute at "
                                             "least this share of returning families' "
                                             "prefixes (0: always; never before a "
                                             "returning family is measured)")
        recompute_window: int = pydantic.Field(
            256, ge=1, description="returning-family requests the recompute share averages")

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        #: family key -> the first request's hashes (prefix not known yet) or the prefix tokens
        self._families: OrderedDict[int, list[int] | int] = OrderedDict()
        self._endpoints: dict[str, _Endpoint] = {}
        self._held: OrderedDict[str, _Held] = OrderedDict()
        #: the recompute share of returning families' prefixes, from usage and hit counters
        self._share = RecomputeShare(self.params.recompute_window)
        #: the server's prompt tokens per token the gateway estimates (usage's prompt
        #: tokens over the estimate, at most 1), averaged like the share
        self._tokens_per_estimate = RunningMean(self.params.recompute_window, start=1.0)

    # -- the request's need ------------------------------------------------------------------
    def need_of(self, request: InferenceRequest) -> _Need:
        """The request's family, its prefix and its own tokens (learns the family's prefix)."""
        cached = request.attributes.get(self.name)
        if isinstance(cached, _Need):
            return cached
        p = self.params
        keys = request_keys(request, p.hash_block_tokens * CHARS_PER_TOKEN, p.max_prefix_blocks)
        key = family_key(keys, p.family_key_blocks)
        prefix = 0
        returning = False
        if key is not None:
            fam = self._families.get(key)
            returning = fam is not None
            if fam is None:
                hashes = keys.tolist()
                self._families[key] = hashes
                prefix = len(hashes) * p.hash_block_tokens
                while len(self._families) > p.max_families:
                    self._families.popitem(last=False)
            elif isinstance(fam, list):
                prefix = common_prefix(fam, keys.tolist()) * p.hash_block_tokens
                self._families[key] = prefix
            else:
                prefix = fam
            self._families.move_to_end(key)
        prompt = request.prompt_tokens_estimate
        prefix = min(prefix, prompt)
        out = request.max_tokens if request.max_tokens else p.default_max_tokens
        need = _Need(key, prefix, prompt - prefix + int(p.output_share * out), returning,
                     prompt)
        request.attributes[self.name] = need
        return need

    def capacity(self, ep: Endpoint) -> int:
        """The endpoint's KV capacity in tokens, from its scraped cache config."""
        return kv_capacity_tokens(ep, self.params.default_capacity_tokens)

    def _state(self, name: str) -> _Endpoint:
        st = self._endpoints.get(name)
        if st is None:
            st = self._endpoints[name] = _Endpoint()
        return st

    def cost(self, need: _Need, ep: Endpoint) -> int:
        """Tokens of KV `ep` would add for the request: its own, and its family's prefix
        unless the family is in flight there already."""
        st = self._state(ep.name)
        shared = need.key is not None and need.key in st.families
        return need.own + (0 if shared else need.prefix)

    def fits(self, need: _Need, ep: Endpoint) -> bool:
        """The request's need fits in what `ep`'s requests in flight leave of its capacity
        (an endpoint with nothing in flight takes any one request)."""
        st = self._state(ep.name)
        return st.need == 0 or st.need + self.cost(need, ep) <= self.capacity(ep)

    def _cached(self, ep: Endpoint) -> Iterator[int]:
        """Families finished at `ep` that its cache still holds: newest first, while their
        prefixes fit in what its requests in flight leave free."""
        st = self._state(ep.name)
        free = self.capacity(ep) - st.need
        for key in reversed(st.recent):
            if key in st.families:
                continue
            free -= st.recent[key]
            if free < 0:
                return
            yield key

    def _affine(self, ep: Endpoint) -> Iterator[int]:
        """Families whose requests run cheaper at `ep`: in flight there, then cached there."""
        yield from self._state(ep.name).families
        yield from self._cached(ep)

    # -- the release rule --------------------------------------------------------------------
    @property
    def holding(self) -> bool:
        """Whether requests wait for room: the caches are measured to thrash (or the rule
        is set to hold always: `recomputeToHold` 0)."""
        threshold = self.params.recompute_to_hold
        if threshold <= 0.0:
            return True
        return self._share.measured and self._share.value >= threshold

    @property
    def active(self) -> bool:
        """The release rule's switch (core/admission/release.py): admission asks `place` and
        `choose` only while it holds."""
        return self.holding

    def _observe(self, need: _Need, usage: dict[str, Any] | None,
                 block_size: int | None) -> None:
        """Fold a finished request's recomputed share of its family's prefix into the
        average, when it returned to a known family and its server reported cached tokens;
        learn the server's tokens per estimated token from its prompt tokens."""
        real = usage.get("prompt_tokens") if usage else None
        scale = self._tokens_per_estimate.value
        if isinstance(real, int) and not isinstance(real, bool) and real > 0 and need.prompt > 0:
            # this request's own, never above 1: where the server counts more tokens than the
            # estimate (a chat template's, code) a larger prefix would read a cached one as
            # partly recomputed; counted short, a recompute reads a little low instead
            scale = min(1.0, real / need.prompt)
            self._tokens_per_estimate.add(scale)
        prefix = _cacheable(need, block_size, scale)
        if prefix <= 0:
            return
        details = usage.get("prompt_tokens_details") if usage else None
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if not isinstance(cached, int) or isinstance(cached, bool) or cached < 0:
            return
        self._share.usage(prefix, cached)

    def _by_load(self, candidates: list[Endpoint], now: float) -> list[Endpoint]:
        """The candidates, fewest requests pending first (then least need)."""
        self._expire(now)
        return sorted(candidates, key=lambda ep: (self._state(ep.name).pending,
                                                  self._state(ep.name).need))

    def place(self, request: InferenceRequest, candidates: list[Endpoint],
              now: float) -> Endpoint | None:
        """An endpoint `request` fits now (it goes, and the scheduler picks among the
        endpoints it fits), or None: it waits. Asked only while `active`."""
        need = self.need_of(request)
        return next((ep for ep in self._by_load(candidates, now) if self.fits(need, ep)), None)

    def choose(self, waiting: Sequence[InferenceRequest], candidates: list[Endpoint],
               now: float) -> int | None:
        """The index of the waiting request (oldest first) to release now, reserved on its
        endpoint; None while nothing fits (see the module docstring). Asked only while
        `active`."""
        if not waiting:
            return None
        needs = [self.need_of(r) for r in waiting]
        oldest: dict[int, int] = {}
        for i, need in enumerate(needs):
            if need.key is not None and need.key not in oldest:
                oldest[need.key] = i
        opened = self._longest_waited(waiting, needs, oldest, now)
        for ep in self._by_load(candidates, now):
            pick = min((oldest[k] for k in self._affine(ep) if k in oldest), default=opened)
            if self.fits(needs[pick], ep):
                self._hold(waiting[pick], needs[pick], ep, now)
                return pick
        return None

    @staticmethod
    def _longest_waited(waiting: Sequence[InferenceRequest], needs: list[_Need],
                        oldest: dict[int, int], now: float) -> int:
        """The index of the oldest request of the family whose waiting requests have waited
        longest in total (a request without a family counts alone; ties: the oldest); the
        first request when the queue's order is not arrival order (deadlines reorder it)."""
        if any(later.arrival_time < earlier.arrival_time
               for earlier, later in zip(waiting, waiting[1:])):
            return 0
        total: dict[int, float] = {}
        for r, need in zip(waiting, needs):
            if need.key is not None:
                total[need.key] = total.get(need.key, 0.0) + now - r.arrival_time
        best, best_wait = 0, -1.0
        for i, (r, need) in enumerate(zip(waiting, needs)):
            if need.key is None:
                wait = now - r.arrival_time
            elif oldest[need.key] == i:
                wait = total[need.key]
            else:
                continue
            if wait > best_wait:
                best, best_wait = i, wait
        return best

    # -- bookkeeping ---------------------------------------------------------------------------
    def _hold(self, request: InferenceRequest, need: _Need, ep: Endpoint, now: float) -> None:
        """Charge the request's need to `ep` (reserved or dispatched there)."""
        self._release(request.request_id)
        st = self._state(ep.name)
        charged = 0
        if need.key is not None:
            fam = st.families.get(need.key)
            if fam is None:
                charged = need.prefix
                fam = st.families[need.key] = [0, charged]
                st.recent.pop(need.key, None)
            fam[0] += 1
        else:
            charged = need.prefix
        st.need += need.own + charged
        st.pending += 1
        self._held[request.request_id] = _Held(ep.name, need, charged, now)
        while len(self._held) > self.params.max_requests:
            self._release(next(iter(self._held)))

    def _release(self, rid: str) -> None:
        held = self._held.pop(rid, None)
        if held is None:
            return
        st = self._state(held.endpoint)
        st.need = max(0, st.need - held.need.own)
        if held.pending:
            st.pending = max(0, st.pending - 1)
        key = held.need.key
        if key is None:
            st.need = max(0, st.need - held.charged)
            return
        fam = st.families.get(key)
        if fam is None:
            return
        fam[0] -= 1
        if fam[0] <= 0:
            del st.families[key]
            st.need = max(0, st.need - fam[1])
            st.recent[key] = held.need.prefix
            st.recent.move_to_end(key)
            while len(st.recent) > MAX_RECENT:
                st.recent.popitem(last=False)

    def _expire(self, now: float) -> None:
        """Drop reservations never sent (the client went away while it was released)."""
        limit = now - self.params.reservation_seconds
        stale = []
        for rid, h in self._held.items():  # in the order they were held: oldest first
            if h.reserved_at >= limit:
                break
            if not h.served:
                stale.append(rid)
        for rid in stale:
            self._release(rid)

    # -- the filter ----------------------------------------------------------------------------
    def filter(self, ctx: CycleContext, request: InferenceRequest,
               endpoints: list[Endpoint]) -> list[Endpoint]:
        held = self._held.get(request.request_id)
        if held is not None:
            kept = [ep for ep in endpoints if ep.name == held.endpoint]
            if kept:
                return kept
        if not self.holding:
            return endpoints
        need = self.need_of(request)
        fitting = [ep for ep in endpoints if self.fits(need, ep)]
        return fitting or endpoints

    # -- hooks -----------------------------------------------------------------------------------
    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        held = self._held.get(request.request_id)
        if held is None or held.endpoint != endpoint.name:
            self._hold(request, self.need_of(request), endpoint, now)
            held = self._held[request.request_id]
        held.served = True

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        need = request.attributes.get(self.name)
        if isinstance(need, _Need):  # the server counted its cache hits when it scheduled it
            m = endpoint.metrics
            cacheable = _cacheable(need, m.block_size, self._tokens_per_estimate.value)
            self._share.counted(endpoint.name, cacheable, now, m.scraped_at,
                                m.prefix_cache_hits)
        held = self._held.get(request.request_id)
        if held is not None and held.pending:
            held.pending = False
            st = self._state(held.endpoint)
            st.pending = max(0, st.pending - 1)

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        need = request.attributes.get(self.name)
        if isinstance(need, _Need):
            self._observe(need, usage, endpoint.metrics.block_size)
        self._release(request.request_id)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        for rid in [r for r, h in self._held.items() if h.endpoint == endpoint.name]:
            del self._held[rid]
        self._endpoints.pop(endpoint.name, None)
        self._share.forget(endpoint.name)

    def thrash(self) -> tuple[bool, float | None]:
        """Whether the rule holds, and the recompute share (None before a sample): the
        gateway's `inferoute_pool_kv_fit_holding` and `..._prefix_recompute_ratio`."""
        return self.holding, self._share.value if self._share.measured else None

    def stats(self) -> dict[str, Any]:
        return {"holding": self.holding,
                "recompute_share": round(self._share.value, 4) if self._share.measured else None,
                "endpoints": {name: {"need_tokens": st.need, "pending": st.pending,
                                     "families_in_flight": len(st.families)}
                              for name, st in self._endpoints.items()}}
