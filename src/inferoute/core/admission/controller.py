"""Admission: admit now, queue, or shed; release queued requests as capacity frees.

    classify(request, tenant)       -> sets request.priority / objective / fairness_id
    admit(request, pool, now)       -> Admitted | Ticket            (or raises 429 / 503)
    dispatchable(now)               -> [Ticket, ...]  to release now, in service order
    cancel(ticket)                  -> the client went away
    expire(now)                     -> [(Ticket, error), ...] that waited past their TTL,
                                       or are sheddable and the pool is now saturated

The rules, per pool:
- no candidate endpoint at all: 503 at once;
- saturated and the request is sheddable (negative priority): 429 with Retry-After;
- not saturated, nothing queued and dispatch budget left: admitted at once;
- otherwise the request waits in the pool's `FlowQueue`; when the queue is full the newest
  waiting request of the lowest priority below it is evicted to make room (it gets its 429 on
  the next `expire`), and only a request no lower one can make room for gets 429 at once;
- a sheddable request still waiting when the pool becomes saturated is shed (429), as it
  would have been had it arrived then.

The dispatch budget keeps a just-freed pool from receiving its whole queue at once: it is the
saturation detector's headroom minus the requests released since the oldest fresh scrape, so
between two scrapes the gateway sends no more than the endpoints said they could take.

With flow control disabled, nothing waits: sheddable requests are shed while saturated and the
rest are admitted (the reference endpoint picker's behaviour without its flow controller).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..candidates import CandidateRule
from ..endpoint import Endpoint, Pool
from ..errors import InferouteError, NoEndpointAvailable, TooManyRequests
from ..request import InferenceRequest
from .flowcontrol import FlowControlSpec, FlowQueue, QueueFull, Ticket, TicketState
from .objectives import Objective, Objectives
from .saturation import SaturationDetector

__all__ = ["AdmissionController", "Admitted", "FAIRNESS_HEADER"]

FAIRNESS_HEADER = "x-gateway-inference-fairness-id"


@dataclass(slots=True, frozen=True)
class Admitted:
    """Go ahead: schedule and send the request now."""

    pool: str
    queued_for: float = 0.0


class _PoolState:
    __slots__ = ("pool", "queue", "releases")

    def __init__(self, pool: Pool, spec: FlowControlSpec) -> None:
        self.pool = pool
        self.queue = FlowQueue(ordering=spec.ordering, max_requests=spec.max_requests,
                               max_bytes=spec.max_bytes)
        #: times requests were let through, kept for one staleness window (the budget)
        self.releases: deque[float] = deque()


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
                 candidates_of: Callable[[Pool, float], list[Endpoint]] = _healthy) -> None:
        self.detector = detector or SaturationDetector()
        self.objectives = objectives or Objectives()
        self.flow = flow or FlowControlSpec()
        self.candidates_of = candidates_of
        self._pools: dict[str, _PoolState] = {}
        #: tickets evicted from a full queue, answered by the next `expire`
        self._evicted: list[tuple[Ticket, InferouteError]] = []

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
        candidates = self.candidates_of(pool, now)
        if not candidates:
            raise NoEndpointAvailable(f"no ready endpoint serves model '{pool.model}'")
        saturated = self.detector.is_saturated(candidates, now)
        if saturated and request.priority < 0:
            raise TooManyRequests("the model is saturated; sheddable request rejected",
                                  retry_after=self.flow.retry_after, code="overloaded")
        if not self.flow.enabled:
            return Admitted(pool.model)
        st = self._state(pool)
        if not saturated and not st.queue and self._budget(st, candidates, now) > 0:
            st.releases.append(now)
            return Admitted(pool.model)
        ttl = self.flow.ttl
        obj = self.objectives.get(request.objective) if request.objective else None
        if obj is not None and obj.ttl is not None:
            ttl = obj.ttl
        ticket = Ticket(request=request, pool=pool.model, priority=request.priority,
                        flow=request.fairness_id, size=max(request.body_size, 1),
                        enqueued_at=now, deadline=now + ttl)
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

    def dispatchable(self, now: float) -> list[Ticket]:
        """Tickets to release now (the shell resolves their waiters), across all pools."""
        out: list[Ticket] = []
        for st in self._pools.values():
            if not st.queue:
                continue
            candidates = self.candidates_of(st.pool, now)
            if not candidates or self.detector.is_saturated(candidates, now):
                continue
            budget = self._budget(st, candidates, now)
            while budget > 0:
                t = st.queue.pop()
                if t is None:
                    break
                st.releases.append(now)
                out.append(t)
                budget -= 1
        return out

    def cancel(self, ticket: Ticket) -> bool:
        """Take a waiting request out of its queue (client disconnected)."""
        st = self._pools.get(ticket.pool)
        return st.queue.cancel(ticket) if st is not None else False

    def expire(self, now: float) -> list[tuple[Ticket, InferouteError]]:
        """Waiting requests past their TTL, each with the error to return: 503 when the pool has
        no endpoint left, else 429 with Retry-After."""
        out, self._evicted = self._evicted, []  # made room for higher priorities
        for st in self._pools.values():
            out += self._shed_queued(st, now)
            expired = st.queue.expire(now)
            if not expired:
                continue
            empty = not self.candidates_of(st.pool, now)
            for t in expired:
                err: InferouteError
                if empty:
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
        if not candidates or not self.detector.is_saturated(candidates, now):
            return []  # (no endpoint at all: their TTL gives them the 503)
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
        return {name: st.queue.stats() for name, st in self._pools.items()}

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

    def _budget(self, st: _PoolState, candidates: list[Endpoint], now: float) -> int:
        """Headroom minus releases since the oldest fresh scrape of a good endpoint."""
        headroom = self.detector.headroom(candidates, now)
        releases = st.releases
        window = self.detector.spec.metrics_staleness_threshold
        while releases and releases[0] < now - window:
            releases.popleft()
        since = self.detector.oldest_fresh_scrape(candidates, now)
        if since is None:  # only stale-but-allowed endpoints: in-flight counts already tell
            return headroom
        # releases at or after the scrape time are not reflected in it yet
        spent = len(releases) - bisect.bisect_left(releases, since)
        return headroom - spent


def _header(headers: Mapping[str, str], name: str) -> str | None:
    v = headers.get(name)
    return v.strip() if isinstance(v, str) and v.strip() else None
