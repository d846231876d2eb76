"""Admission: admit now, queue, or shed; release queued requests as capacity frees.

    classify(request, tenant)       -> sets request.priority / objective / fairness_id
    admit(request, pool, now)       -> Admitted | Ticket            (or raises 429 / 503)
    dispatchable(now)               -> [Ticket, ...]  to release now, in service order
    dispatched(pool, endpoint, now) -> a request was sent to endpoint (the shell's router hook)
    finished(pool, endpoint, now)   -> a request ended there: its batch slot is free
    cancel(ticket)                  -> the client went away
    expire(now)                     -> [(Ticket, error), ...] that waited past their TTL,
                                       or are sheddable and the pool is now saturated

The rules, per pool:
- no candidate endpoint at all: 503 at once;
- saturated and the request is sheddable (negative priority): 429 with Retry-After. The pool is
  saturated when no candidate has good capacity by its metrics (`SaturationDetector`), or when
  the gateway itself holds a backlog: requests have waited in its queue since before the last
  fresh scrape and the dispatch budget that scrape gave is spent. (With the budget pacing
  dispatch, the replicas' own queues stay short under overload and their metrics alone would
  never say saturated: the backlog is where the overload shows);
- not saturated, nothing queued and dispatch budget left: admitted at once;
- otherwise the request waits in the pool's `FlowQueue`; when the queue is full the newest
  waiting request of the lowest priority below it is evicted to make room (it gets its 429 on
  the next `expire`), and only a request no lower one can make room for gets 429 at once;
- a sheddable request still waiting when the pool becomes saturated is shed (429), as it
  would have been had it arrived then;
- within a priority band and flow, the queue releases earliest deadline first (`ordering:
  edf`, the default): a request with a TTFT target (`x-slo-ttft-ms`, core/slo.py) is due when
  it reached admission plus that target, one without at its TTL (or `deadlineWithoutTarget`);
  with `shedLate`, a sheddable request still waiting at its TTFT deadline gets 429
  `slo_unattainable` on the next `expire` instead of a first token too late; a request of
  priority 0 or above waits on (its TTL still applies). A released request carries the time
  it waited (`slo.note_wait`): the scheduler's latency objective is what is left of its target.

The dispatch budget keeps a just-freed pool from receiving its whole queue at once. Per good
endpoint, `SaturationDetector.room`: until its batch size is known, the queue-depth threshold's
room by its last scrape, less the requests sent to it since, plus those that finished there
since; once known, its batch size plus the threshold's allowance (only one while requests wait
in the gateway) less what it holds: its requests running and waiting by the scrape, adjusted
by the sends and ends since, or this gateway's own count in flight there if larger (that count
lags nothing: an end is seen after the slot freed, a send before it arrives, so it never
overestimates the room, where the scrape-based count can count an end twice). A waiting
request goes the moment one ends, not at the next scrape. Summed over the endpoints, less the
requests released but not yet sent. So between two scrapes the gateway sends
no more than the endpoints said they could take, and under overload critical requests queue in
the gateway, in priority order, not inside a model server behind earlier arrivals. A request
goes to an endpoint with a free batch slot when one has one (`Admitted.room_on`,
`Ticket.room_on`). The shell
reports sends and ends (`dispatched` / `finished`, e.g. from a router listener) and scrapes
(`observe`); without them the budget counts releases since the scrape instead, slots free only
at scrapes and batch sizes are learned from the pages the budget reads.

The reserve (`flowControl.reserve`): batch slots the pool keeps free for the top priority, so
that under overload a top-priority arrival finds one at once. Lower priorities are admitted
and released only past it (and then never into a model server's own queue); with `auto`,
`TopReserve` sizes it from the top priority's arrivals per completion
(core/admission/reserve.py).

A release rule (`release`, core/admission/release.py; e.g. the `kv-fit-filter` plugin of the
pool's scheduler, which the shell attaches) replaces the dispatch budget and the queue's
order while it says it is `active` (read at every `admit` and `dispatchable`): an arrival is
admitted at once when nothing waits and the rule places it; otherwise it waits, and
`dispatchable` releases, from the highest band, the requests the rule chooses, one at a time
while it finds one that fits. The saturation detector then only decides shedding: the rule's
own accounting says when a replica is full (KV usage near 1 is the normal state of a replica
the rule keeps full, not a reason to hold everything). While the rule is not active the pool
takes the path of a pool without one (budget, detector, reserve, the queue's order). Both
paths share the queue and the count of requests released but not yet sent, so a request
queued under one is released by the other once the rule changes its mind, exactly once, and
the budget counts what the rule released before the next scrape shows it.

`rules_only`: admission for the release rules alone, what a gateway without an admission
section runs when a pool's policy has a rule (a policy that holds requests must have a queue
to hold them in). Only an active rule's pool is held and released by the rule; every other
request, and a rule's pool while its rule is not active, is admitted at once, with no
saturation check, budget or shedding, as with no admission at all; what waited when the rule
stopped holding is released at the next `dispatchable`.

With flow control disabled, nothing waits: sheddable requests are shed while saturated and the
rest are admitted (the reference endpoint picker's behaviour without its flow controller).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from ..candidates import CandidateRule
from ..endpoint import Endpoint, Pool
from ..errors import InferouteError, NoEndpointAvailable, TooManyRequests
from ..request import InferenceRequest
from ..slo import note_wait, ttft_target
from .flowcontrol import FlowControlSpec, FlowQueue, QueueFull, Ticket, TicketState
from .objectives import Objective, Objectives
from .release import ReleaseRule
from .reserve import TopReserve
from .saturation import SaturationDetector

__all__ = ["AdmissionController", "Admitted", "FAIRNESS_HEADER"]

FAIRNESS_HEADER = "x-gateway-inference-fairness-id"


@dataclass(slots=True, frozen=True)
class Admitted:
    """Go ahead: schedule and send the request now."""

    pool: str
    queued_for: float = 0.0
    #: the endpoints (names) to schedule it among: all but those the dispatch budget knows to
    #: be full (None: no restriction), as for a released request (`Ticket.room_on`)
    room_on: frozenset[str] | None = None


class _Book:
    """What the controller knows of one endpoint beyond its metrics: the requests sent to it
    and finished on it since its last scrape, and its batch size once seen full."""

    __slots__ = ("sent", "done", "slots", "seen_full")

    def __init__(self) -> None:
        self.sent: deque[float] = deque()
        self.done: deque[float] = deque()
        #: the most requests seen running at once (a lower bound of its batch size)
        self.slots = 0
        #: a scrape showed requests waiting: the batch was full, `slots` means something
        self.seen_full = False

    def note(self, ep: Endpoint) -> None:
        m = ep.metrics
        if m.scraped_at is not None:
            self.slots = max(self.slots, m.running)
            self.seen_full = self.seen_full or m.waiting > 0

    def batch(self) -> int | None:
        return self.slots if self.seen_full and self.slots > 0 else None

    def since(self, scraped_at: float) -> int:
        """Slots freed minus slots taken since the scrape (older events are in it)."""
        for q in (self.sent, self.done):
            while q and q[0] < scraped_at:
                q.popleft()
        return len(self.done) - len(self.sent)

    def trim(self, ep: Endpoint) -> None:
        """Forget the sends and ends its last scrape shows (so the book stays bounded while
        nothing reads the budget, e.g. while a release rule decides)."""
        if ep.metrics.scraped_at is not None:
            self.since(ep.metrics.scraped_at)


class _Rooms:
    """What the dispatch budget found: each endpoint's room (by name; 0 or less: full), the
    part of it past its free batch slots (a request sent there waits in the model server),
    the batch slots the pool keeps free for the top priority, and the requests released but
    not yet sent."""

    __slots__ = ("past", "pending", "reserve", "room")

    def __init__(self, reserve: int = 0) -> None:
        self.room: dict[str, int] = {}
        self.past: dict[str, int] = {}
        self.reserve = reserve
        self.pending = 0

    def left(self, name: str, top: bool) -> int:
        """Room on one endpoint for the top priority (`top`) or a lower one (with a reserve,
        a lower one does not wait inside the model server)."""
        if top or not self.reserve:
            return self.room[name]
        return self.free(name)

    def free(self, name: str) -> int:
        """Free batch slots on one endpoint."""
        return self.room[name] - self.past[name]

    def slot_free(self) -> bool:
        """Some endpoint has a free batch slot (for the top priority)."""
        return any(self.free(name) > 0 for name in self.room)

    def budget(self, top: bool) -> int:
        """Requests of the top priority (`top`) or a lower one (past the reserve) the pool
        can take now."""
        total = sum(max(0, self.left(n, top)) for n in self.room) - self.pending
        return total if top else total - self.reserve

    def take(self, candidates: list[Endpoint], top: bool) -> frozenset[str] | None:
        """The candidates one admitted or released request may go to: those with a free
        batch slot for it if any, else those with room (an endpoint whose room is unknown, e.g.
        its metrics are stale, stays); one slot is taken from the roomiest. None: no candidate
        is ruled out."""
        # lists in the candidates' order, not sets: a tie goes to the first candidate, the
        # same in every process (a set of names iterates in an order that the interpreter's
        # hash seed sets, which made the virtual benchmark differ from run to run)
        fits = [name for name in self.room if self.left(name, top) > 0]
        fits = [name for name in fits if self.free(name) > 0] or fits
        if fits:
            roomiest = max(fits, key=lambda name: (self.free(name), self.left(name, top)))
            self.room[roomiest] -= 1
        ruled_out = self.room.keys() - set(fits)
        if not ruled_out:
            return None
        return frozenset(ep.name for ep in candidates if ep.name not in ruled_out) or None


class _PoolState:
    __slots__ = ("books", "pool", "queue", "releases", "reserve", "reserved", "top_arrivals",
                 "top_without_slot", "waiting_since")

    def __init__(self, pool: Pool, spec: FlowControlSpec) -> None:
        self.pool = pool
        self.queue = FlowQueue(ordering=spec.ordering, max_requests=spec.max_requests,
                               max_bytes=spec.max_bytes)
        #: times requests were let through and not yet sent, kept for one staleness window
        self.releases: deque[float] = deque()
        #: endpoint name -> its book (pool members only)
        self.books: dict[str, _Book] = {}
        #: since when the queue has held requests without a break (None: empty)
        self.waiting_since: float | None = None
        #: the top priority's arrivals and the pool's completions (`reserve: auto`)
        self.reserve = TopReserve(spec.reserve_miss)
        #: the slots kept free for the top priority, as last computed (for metrics)
        self.reserved = 0
        #: top-priority arrivals, and those that found no free batch slot (queued, or sent
        #: where they wait inside a model server), scheduled by the dispatch budget
        self.top_arrivals = 0
        self.top_without_slot = 0

    def book(self, ep: Endpoint) -> _Book:
        b = self.books.get(ep.name)
        if b is None:
            if len(self.books) > 2 * len(self.pool) + 16:  # endpoints came and went
                names = {e.name for e in self.pool}
                self.books = {n: v for n, v in self.books.items() if n in names}
            b = self.books[ep.name] = _Book()
        return b


def _healthy(pool: Pool, now: float) -> list[Endpoint]:
    return CandidateRule().ready(pool, now)


class AdmissionController:
    """Per-pool saturation check, shedding and flow-control queue (sans-I/O).

    `candidates_of(pool, now)` says which endpoints may take requests (default: the healthy
    ones); a shell with its own readiness rule passes it so admission and scheduling agree.
    """

    def __init__(self, detector: SaturationDetector | None = None,
                 objectives: Objectives | None = None,
                 flow: FlowControlSpec | None = None, *,
                 candidates_of: Callable[[Pool, float], list[Endpoint]] = _healthy,
                 release: ReleaseRule | Mapping[str, ReleaseRule] | None = None,
                 rules_only: bool = False) -> None:
        self.detector = detector or SaturationDetector()
        #: admission for the release rules alone (see the module docstring)
        self.rules_only = rules_only
        #: decides which waiting request goes next, and where, while it is active: one rule,
        #: or one per pool (by model; a pool without one, an inactive rule, and None: the
        #: queue's order and the dispatch budget)
        self.release = release
        self.objectives = objectives or Objectives()
        self.flow = flow or FlowControlSpec()
        self.candidates_of = candidates_of
        self._pools: dict[str, _PoolState] = {}
        #: tickets evicted from a full queue, answered by the next `expire`
        self._evicted: list[tuple[Ticket, InferouteError]] = []
        #: the shell reports sends (`dispatched`): released requests are pending until then
        self._told_sends = False
        #: the shell reports ends (`finished`): the pool's completions are measured
        self._told_ends = False

    # -- classification -------------------------------------------------------------------

    def classify(self, request: InferenceRequest, *, tenant_objective: str | None = None,
                 tenant_fairness_id: str | None = None) -> Objective:
        """Set the request's objective, priority and fairness id from headers and tenant.

        An authenticated tenant's fairness id wins over the header: otherwise one tenant could
        split itself into many flows and take more than its share.
        """
        obj = self.objectives.resolve(request.headers, tenant_objective)
        request.objective = obj.name
        request.priority = obj.priority
        if tenant_fairness_id:
            request.fairness_id = tenant_fairness_id
        else:
            hdr = _header(request.headers, FAIRNESS_HEADER)
            request.fairness_id = hdr[:128] if hdr else "default"
        return obj

    # -- admission --------------------------------------------------------------------------

    def admit(self, request: InferenceRequest, pool: Pool, now: float) -> Admitted | Ticket:
        """Admit, enqueue or reject (TooManyRequests / NoEndpointAvailable) one request."""
        if self.rules_only and self._active_rule(pool.model) is None:
            return Admitted(pool.model)  # as with no admission at all
        target = ttft_target(request)  # a malformed header is a 400 whether it waits or not
        candidates = self.candidates_of(pool, now)
        if not candidates:
            raise NoEndpointAvailable(f"no ready endpoint serves model '{pool.model}'")
        saturated = self.detector.is_saturated(candidates, now)
        st = self._state(pool)
        rule = self._active_rule(pool.model)
        top = request.priority >= self.objectives.top_priority
        if top:
            st.reserve.arrived()
        rooms = (None if saturated or not self.flow.enabled or rule is not None
                 else self._rooms(st, candidates, now))
        # room kept for the top priority: lower ones see the budget without it
        budget = 0 if rooms is None else rooms.budget(top)
        if request.priority < 0 and (saturated or self._backlogged(st, candidates, budget, now)):
            raise TooManyRequests("the model is saturated; sheddable request rejected",
                                  retry_after=self.flow.retry_after, code="overloaded")
        if not self.flow.enabled:
            return Admitted(pool.model)
        if rule is not None:
            if not st.queue and rule.place(request, candidates, now) is not None:
                self._note_release(st, now)
                return Admitted(pool.model)
        else:
            # nothing of its priority or higher waits: it goes now
            now_ok = rooms is not None and budget > 0 and (not st.queue or (
                (first := st.queue.top_priority()) is not None and first < request.priority))
            if top:  # how often the top priority finds a free batch slot (the reserve's aim)
                found = now_ok and rooms is not None and rooms.slot_free()
                st.top_arrivals += 1
                st.top_without_slot += not found
                if rooms is not None:  # (saturated by its metrics: no reserve would help)
                    st.reserve.outcome(found)
            if now_ok and rooms is not None:
                self._note_release(st, now)
                # to an endpoint whose room admitted it: the budget is the pool's, and a
                # scheduler that kept choosing a full replica (prefix affinity, a late scrape)
                # would pile every admitted request there while the others' unused room kept
                # admitting more
                return Admitted(pool.model, room_on=rooms.take(candidates, top))
        ttl = self.flow.ttl
        obj = self.objectives.get(request.objective) if request.objective else None
        if obj is not None and obj.ttl is not None:
            ttl = obj.ttl
        ticket = self._ticket(request, pool.model, now, ttl, target)
        if not st.queue:
            st.waiting_since = now
        try:
            st.queue.push(ticket)
        except QueueFull as exc:
            evicted = st.queue.evict_for(ticket.priority, ticket.size)
            if not evicted:
                raise TooManyRequests(f"the request queue is full: {exc}",
                                      retry_after=self.flow.retry_after,
                                      code="queue_full") from None
            self._evicted += [(t, TooManyRequests(
                "the request queue is full and a higher-priority request took this one's "
                "place", retry_after=self.flow.retry_after, code="queue_full")) for t in evicted]
            st.queue.push(ticket)
        return ticket

    def _ticket(self, request: InferenceRequest, pool: str, now: float, ttl: float,
                target: float | None) -> Ticket:
        """A queue ticket: due at its TTFT target, else at `deadlineWithoutTarget` or its TTL;
        a sheddable one leaves the queue at its target when `shedLate` says so."""
        flow = self.flow
        deadline = now + ttl
        slo_deadline = None if target is None else now + target
        if slo_deadline is not None:
            due = slo_deadline
            if flow.shed_late and request.priority < 0:
                deadline = min(deadline, slo_deadline)
        else:
            due = now + (flow.deadline_without_target or ttl)
        return Ticket(request=request, pool=pool, priority=request.priority,
                      flow=request.fairness_id, size=max(request.body_size, 1),
                      enqueued_at=now, deadline=deadline, due=due, slo_deadline=slo_deadline)

    def dispatchable(self, now: float) -> list[Ticket]:
        """Tickets to release now (the shell resolves their waiters), across all pools."""
        out: list[Ticket] = []
        for st in self._pools.values():
            if not st.queue:
                continue
            rule = self._active_rule(st.pool.model)
            if self.rules_only and rule is None:  # the rule stopped holding: all go
                while (t := st.queue.pop()) is not None:
                    note_wait(t.request, now - t.enqueued_at)
                    self._note_release(st, now)
                    out.append(t)
                st.waiting_since = None
                continue
            candidates = self.candidates_of(st.pool, now)
            if candidates and rule is not None and self.flow.enabled:
                out += self._release_by_rule(st, rule, candidates, now)
                continue
            if not candidates or self.detector.is_saturated(candidates, now):
                continue
            rooms = self._rooms(st, candidates, now)
            while (prio := st.queue.top_priority()) is not None:
                top = prio >= self.objectives.top_priority
                if rooms.budget(top) <= 0:
                    break  # what is left waits (a lower priority: past the room kept)
                t = st.queue.pop()
                if t is None:
                    break
                note_wait(t.request, now - t.enqueued_at)
                self._note_release(st, now)
                t.room_on = rooms.take(candidates, top)  # (the slot it takes leaves the budget)
                out.append(t)
            if not st.queue:
                st.waiting_since = None
        return out

    def reserve(self, pool: str, now: float) -> int | None:
        """Batch slots `pool` keeps free for the top priority, computed now (None: no such
        pool seen yet); `queue_stats` has the value last used."""
        st = self._pools.get(pool)
        return None if st is None else self._reserve(st, self.candidates_of(st.pool, now), now)

    def _reserve(self, st: _PoolState, candidates: list[Endpoint], now: float) -> int:
        """Batch slots the pool keeps free for the top priority: the setting's per endpoint,
        or with `auto` what `TopReserve` calls for, at most half of the candidates' batch
        slots (an endpoint's batch size unknown yet counts as 2)."""
        spec = self.flow.reserve
        if spec != "auto":
            st.reserved = spec * len(candidates)
        elif not candidates or not self._told_ends:
            st.reserved = 0  # without reported ends the completions are not measured
        else:
            cap = sum(st.book(ep).batch() or 2 for ep in candidates) // 2
            st.reserved = st.reserve.slots(cap)
        return st.reserved

    def _rule(self, pool: str) -> ReleaseRule | None:
        """The pool's release rule, active or not."""
        rule = self.release
        return rule.get(pool) if isinstance(rule, Mapping) else rule

    def _active_rule(self, pool: str) -> ReleaseRule | None:
        """The pool's release rule if it is active now (None: the budget and queue order)."""
        rule = self._rule(pool)
        return rule if rule is not None and rule.active else None

    def _note_release(self, st: _PoolState, now: float) -> None:
        """A request of the pool was admitted or released and is on its way to an endpoint
        (by either path: the budget counts it until it is sent or a scrape shows it)."""
        releases = st.releases
        releases.append(now)
        window = now - self.detector.spec.metrics_staleness_threshold
        while releases and releases[0] < window:  # (older ones are in every fresh scrape)
            releases.popleft()

    def _release_by_rule(self, st: _PoolState, rule: ReleaseRule, candidates: list[Endpoint],
                         now: float) -> list[Ticket]:
        """The tickets `rule` chooses, one at a time from the highest band, while it finds
        one that fits."""
        out: list[Ticket] = []
        band: list[Ticket] = []
        while st.queue:
            if not band:
                band = sorted(st.queue.top_band(), key=st.queue.service_key)
            i = rule.choose([t.request for t in band], candidates, now)
            if i is None:
                break
            t = band.pop(i)
            st.queue.take(t)
            note_wait(t.request, now - t.enqueued_at)
            self._note_release(st, now)
            out.append(t)
        if not st.queue:
            st.waiting_since = None
        return out

    def dispatched(self, pool: str, ep: Endpoint, now: float) -> None:
        """A request of `pool` was sent to `ep` (also a retry there): it takes a slot, and a
        released request is no longer on its way."""
        st = self._pools.get(pool)
        if st is None:
            return
        self._told_sends = True
        if st.releases:
            st.releases.popleft()
        book = st.book(ep)
        book.sent.append(now)
        book.trim(ep)

    def observe(self, pool: str, ep: Endpoint) -> None:
        """A fresh scrape of `ep` in `pool` (the shell's scrape hook): learns its batch size
        from every page, not only those read while requests wait."""
        st = self._pools.get(pool)
        if st is not None:
            st.book(ep).note(ep)

    def finished(self, pool: str, ep: Endpoint, now: float) -> None:
        """A request of `pool` on `ep` ended: its batch slot is free for a waiting one."""
        st = self._pools.get(pool)
        if st is not None:
            self._told_ends = True
            book = st.book(ep)
            book.done.append(now)
            book.trim(ep)
            st.reserve.completed()

    def cancel(self, ticket: Ticket) -> bool:
        """Take a waiting request out of its queue (client disconnected)."""
        st = self._pools.get(ticket.pool)
        return st.queue.cancel(ticket) if st is not None else False

    def expire(self, now: float) -> list[tuple[Ticket, InferouteError]]:
        """Waiting requests past their TTL, each with the error to return: 503 when the pool has
        no endpoint left, else 429 with Retry-After (`slo_unattainable` for a sheddable one
        past its TTFT target)."""
        out, self._evicted = self._evicted, []  # made room for higher priorities
        for st in self._pools.values():
            out += self._shed_queued(st, now)
            expired = st.queue.expire(now)
            if not expired:
                continue
            empty = not self.candidates_of(st.pool, now)
            for t in expired:
                err: InferouteError
                if t.missed_slo and t.slo_deadline is not None:
                    err = TooManyRequests(
                        f"the request waited {t.slo_deadline - t.enqueued_at:.4g}s in the "
                        "gateway's queue, its whole TTFT target; it is sheddable, so it was "
                        "not sent late", retry_after=self.flow.retry_after,
                        code="slo_unattainable")
                elif empty:
                    err = NoEndpointAvailable(
                        f"no ready endpoint served model '{t.pool}' within "
                        f"{t.deadline - t.enqueued_at:g}s")
                else:
                    err = TooManyRequests(
                        f"the model stayed saturated for {t.deadline - t.enqueued_at:g}s "
                        "while the request waited", retry_after=self.flow.retry_after,
                        code="queue_timeout")
                out.append((t, err))
        return out

    def _shed_queued(self, st: _PoolState, now: float) -> list[tuple[Ticket, InferouteError]]:
        """Sheddable requests that queued while the pool still had capacity are shed (429)
        once it is saturated, like sheddable arrivals."""
        low = st.queue.peek_lowest_priority()
        if low is None or low >= 0:
            return []
        candidates = self.candidates_of(st.pool, now)
        if not candidates:
            return []  # (no endpoint at all: their TTL gives them the 503)
        budget = self._rooms(st, candidates, now).budget(low >= self.objectives.top_priority)
        if not self.detector.is_saturated(candidates, now) and not self._backlogged(
                st, candidates, budget, now):
            return []
        return [(t, TooManyRequests("the model is saturated; sheddable request rejected",
                                    retry_after=self.flow.retry_after, code="overloaded"))
                for t in st.queue.shed_below(0)]

    def next_deadline(self) -> float | None:
        """Earliest TTL deadline of any waiting request (when to call `expire` next)."""
        ds = [d for st in self._pools.values() if (d := st.queue.next_deadline()) is not None]
        return min(ds) if ds else None

    def queued(self, pool: str | None = None) -> int:
        """Requests waiting (in one pool, or in all)."""
        if pool is not None:
            st = self._pools.get(pool)
            return len(st.queue) if st else 0
        return sum(len(st.queue) for st in self._pools.values())

    def queue_stats(self) -> dict[str, Any]:
        """{pool: QueueStats} for metrics."""
        return {name: replace(st.queue.stats(), reserved=st.reserved,
                              top_arrivals=st.top_arrivals,
                              top_without_slot=st.top_without_slot)
                for name, st in self._pools.items()}

    def drain(self) -> list[tuple[Ticket, InferouteError]]:
        """Graceful shutdown: every waiting request, removed, each with a 503 to return."""
        out: list[tuple[Ticket, InferouteError]] = []
        for st in self._pools.values():
            while (t := st.queue.pop()) is not None:
                t.state = TicketState.CANCELLED
                out.append((t, NoEndpointAvailable("the gateway is shutting down",
                                                   code="shutting_down")))
        return out

    def forget_pool(self, model: str) -> list[Ticket]:
        """Drop a pool that no longer exists; its waiting tickets are returned, cancelled."""
        st = self._pools.pop(model, None)
        if st is None:
            return []
        out = []
        while (t := st.queue.pop()) is not None:
            t.state = TicketState.CANCELLED
            out.append(t)
        return out

    # -- internals ----------------------------------------------------------------------------

    def _state(self, pool: Pool) -> _PoolState:
        st = self._pools.get(pool.model)
        if st is None or st.pool is not pool:
            if st is None:
                st = self._pools[pool.model] = _PoolState(pool, self.flow)
            else:
                st.pool = pool
        return st

    def _rooms(self, st: _PoolState, candidates: list[Endpoint], now: float) -> _Rooms:
        """The dispatch budget's view of the pool now (see the module docstring): the room
        of each endpoint whose room is known, what of it is kept for the top priority, and
        the releases not yet sent."""
        backlog = bool(st.queue)
        spec = self.detector.spec
        reserve = self._reserve(st, candidates, now)
        rooms = _Rooms(reserve)
        for ep in candidates:
            at = ep.metrics.scraped_at
            past = 0  # the room beyond the endpoint's free batch slots
            if at is None or ep.is_stale(now, spec.metrics_staleness_threshold):
                room = self.detector.room(ep, now)
            else:
                book = st.book(ep)
                book.note(ep)
                freed = book.since(at)
                if (slots := book.batch()) is None:  # the threshold's room, as slots free
                    room = self.detector.room(ep, now)
                    room = None if room is None else room + freed
                else:  # the gateway's own in-flight count lags nothing: never trust less
                    m = ep.metrics
                    room = self.detector.room(
                        ep, now, backlog=backlog, slots=slots,
                        occupied=max(ep.in_flight_requests, m.running + m.waiting - freed))
                    past = 1 if backlog else spec.queue_depth_threshold + 1
            if room is not None:
                rooms.room[ep.name] = room
                rooms.past[ep.name] = past
        releases = st.releases
        while releases and releases[0] < now - spec.metrics_staleness_threshold:
            releases.popleft()
        if self._told_sends:  # a release leaves `releases` when it is sent
            rooms.pending = len(releases)
        elif (since := self.detector.oldest_fresh_scrape(candidates, now)) is not None:
            # untold, releases at or after the scrape time are taken as not reflected in it
            # yet (with only stale-but-allowed endpoints, in-flight counts already tell)
            rooms.pending = len(releases) - bisect.bisect_left(releases, since)
        return rooms

    def _backlogged(self, st: _PoolState, candidates: list[Endpoint], budget: int,
                    now: float) -> bool:
        """The gateway's own view of saturation: requests have waited in the queue since
        before the oldest fresh scrape (so that scrape's room did not cover them) and the
        budget is spent."""
        if not st.queue or budget > 0 or st.waiting_since is None:
            return False
        since = self.detector.oldest_fresh_scrape(candidates, now)
        return since is not None and st.waiting_since < since


def _header(headers: Mapping[str, str], name: str) -> str | None:
    v = headers.get(name)
    return v.strip() if isinstance(v, str) and v.strip() else None
