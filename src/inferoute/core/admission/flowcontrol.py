"""The flow-control queue: where admitted requests wait while their pool is saturated.

Structure (one `FlowQueue` per pool):

    priority bands  (served strictly: a lower band waits while a higher one has requests)
      └ flows       (one per fairness id; served round-robin within the band)
          └ tickets (earliest deadline first, or FCFS)

A ticket's deadline for the order (`Ticket.due`) is when it should have its first token: the
controller sets it from the request's TTFT target (core/slo.py), and for a request without one
from its TTL or `deadlineWithoutTarget` (docs/admission.md). Fairness between flows comes
before deadlines: a client sets its own targets, and a tight one must not take another
tenant's turn.

Every operation is O(1) or O(log n): enqueue, pop, cancel (lazy deletion, the dead entries are
compacted away once they outnumber the live ones) and expiry (a heap of deadlines). The queue is
bounded in requests and in bytes; `push` raises QueueFull rather than grow past either, and
`evict_for` makes room for a request by removing the newest tickets of lower bands (a full queue
turns away sheddable work, not critical work).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import pydantic

__all__ = ["FlowControlSpec", "FlowQueue", "Ordering", "parse_size", "QueueFull", "QueueStats",
           "Ticket", "TicketState"]

Ordering = Literal["fcfs", "edf"]


class TicketState(str, Enum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(slots=True, eq=False)
class Ticket:
    """A waiting request. The shell may keep anything it needs (an asyncio future) in `waiter`."""

    request: Any
    pool: str
    priority: int
    flow: str
    size: int
    enqueued_at: float
    #: when it leaves the queue at the latest: its TTL, or for a sheddable request with a TTFT
    #: target and `shedLate` the earlier of that and `slo_deadline`
    deadline: float
    #: the order key with `ordering: edf` (None: `deadline`)
    due: float | None = None
    #: when a first token would come too late for its TTFT target (None: no target)
    slo_deadline: float | None = None
    seq: int = 0
    state: TicketState = TicketState.QUEUED
    waiter: Any = None
    #: set at release by the dispatch budget: the endpoints (names) it may go to, all but those
    #: known to be full then (None: no restriction); the scheduler chooses among them
    room_on: frozenset[str] | None = None

    def waited(self, now: float) -> float:
        return now - self.enqueued_at

    @property
    def order_key(self) -> float:
        """Its place under earliest-deadline-first."""
        return self.deadline if self.due is None else self.due

    @property
    def missed_slo(self) -> bool:
        """Its queue deadline is its TTFT target's, not its TTL (see `deadline`)."""
        return self.slo_deadline is not None and self.deadline == self.slo_deadline


class QueueFull(Exception):
    """The queue is at its request or byte bound."""


class FlowControlSpec(pydantic.BaseModel):
    """`flowControl` settings: ordering within a flow, deadlines, the queue TTL and the bounds."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    enabled: bool = True
    ordering: Ordering = pydantic.Field(
        "edf", description="within a flow: edf, earliest deadline first (a request's deadline "
        "is when it arrived plus its x-slo-ttft-ms target, or plus deadlineWithoutTarget "
        "without one); fcfs, arrival order")
    ttl: float = pydantic.Field(30.0, gt=0, description="seconds a request may wait")
    deadline_without_target: float | None = pydantic.Field(
        None, alias="deadlineWithoutTarget", gt=0, description="with edf: the deadline of a "
        "request without a TTFT target, in seconds after its arrival (None: its TTL). A "
        "targeted request goes before it only if due earlier, so it waits for newcomers at "
        "most this long")
    shed_late: bool = pydantic.Field(
        True, alias="shedLate", description="a sheddable request still queued when its TTFT "
        "target has passed gets 429 slo_unattainable instead of being sent late")
    max_requests: int = pydantic.Field(1000, alias="maxRequests", ge=1)
    max_bytes: int = pydantic.Field(64 * 1024 * 1024, alias="maxBytes", ge=1)
    reserve: pydantic.NonNegativeInt | Literal["auto"] = pydantic.Field(
        "auto", description="batch slots kept free for the highest-priority objective, so "
        "that a critical request finds one at once: lower priorities go only past them. A "
        "number: that many per endpoint. auto: as many for the pool as the top priority's "
        "measured share of its completions calls for (core/admission/reserve.py), 0 while "
        "none arrives")
    reserve_miss: float = pydantic.Field(
        0.05, alias="reserveMiss", gt=0, lt=1, description="with reserve auto: the share of "
        "top-priority arrivals that may find no slot free")
    retry_after: float = pydantic.Field(1.0, alias="retryAfter", gt=0,
                                        description="Retry-After seconds on 429")

    @pydantic.field_validator("ttl", "retry_after", "deadline_without_target", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        from ..scheduling.config import parse_duration
        return parse_duration(v) if isinstance(v, str) else v

    @pydantic.field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return parse_size(v) if isinstance(v, str) else v


def parse_size(text: str) -> int:
    """'64MiB', '10MB', '512k', '1000' -> bytes."""
    t = text.strip().lower().replace(" ", "")
    units = (("kib", 1024), ("mib", 1024**2), ("gib", 1024**3), ("kb", 1000), ("mb", 1000**2),
             ("gb", 1000**3), ("k", 1024), ("m", 1024**2), ("g", 1024**3), ("b", 1))
    for suffix, scale in units:
        if t.endswith(suffix):
            try:
                return int(float(t[: -len(suffix)]) * scale)
            except ValueError:
                break
    try:
        return int(t)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 64MiB, 512k)") from None


class _Flow:
    """Tickets of one fairness id in one band, in service order."""

    __slots__ = ("items", "live", "edf", "active")

    def __init__(self, edf: bool) -> None:
        self.edf = edf
        self.items: Any = [] if edf else deque()
        self.live = 0
        self.active = False  # present in the band's round-robin ring

    def push(self, t: Ticket) -> None:
        if self.edf:
            heapq.heappush(self.items, (t.order_key, t.seq, t))
        else:
            self.items.append(t)
        self.live += 1

    def pop_live(self) -> Ticket | None:
        items = self.items
        while items:
            t = heapq.heappop(items)[2] if self.edf else items.popleft()
            if t.state is TicketState.QUEUED:
                self.live -= 1
                return t
        return None

    def compact(self) -> None:
        if self.edf:
            self.items = [e for e in self.items if e[2].state is TicketState.QUEUED]
            heapq.heapify(self.items)
        else:
            self.items = deque(t for t in self.items if t.state is TicketState.QUEUED)


class _Band:
    """One priority level: flows served round-robin."""

    __slots__ = ("flows", "ring", "live")

    def __init__(self) -> None:
        self.flows: dict[str, _Flow] = {}
        self.ring: deque[str] = deque()
        self.live = 0


@dataclass(slots=True)
class QueueStats:
    requests: int
    bytes: int
    by_priority: dict[int, int] = field(default_factory=dict)
    #: batch slots the pool keeps free for the top priority, as last computed
    reserved: int = 0
    #: top-priority arrivals so far, and those that found no free batch slot
    top_arrivals: int = 0
    top_without_slot: int = 0


class FlowQueue:
    """Bounded, banded, fair queue of tickets (see the module docstring)."""

    def __init__(self, *, ordering: Ordering = "fcfs", max_requests: int = 1000,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        self.edf = ordering == "edf"
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._bands: dict[int, _Band] = {}
        self._order: list[int] = []  # negated priorities, ascending = highest priority first
        self._deadlines: list[tuple[float, int, Ticket]] = []
        self._seq = 0
        self._dead = 0
        self.requests = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.requests

    def stats(self) -> QueueStats:
        return QueueStats(self.requests, self.bytes,
                          {-p: self._bands[-p].live for p in self._order})

    def push(self, t: Ticket) -> None:
        """Add a ticket; QueueFull when a bound would be exceeded."""
        if self.requests + 1 > self.max_requests:
            raise QueueFull(f"queue holds {self.requests} requests (max {self.max_requests})")
        if self.bytes + t.size > self.max_bytes:
            raise QueueFull(f"queue holds {self.bytes} bytes (max {self.max_bytes})")
        self._seq += 1
        t.seq = self._seq
        t.state = TicketState.QUEUED
        band = self._bands.get(t.priority)
        if band is None:
            band = self._bands[t.priority] = _Band()
            bisect.insort(self._order, -t.priority)
        flow = band.flows.get(t.flow)
        if flow is None:
            flow = band.flows[t.flow] = _Flow(self.edf)
        flow.push(t)
        if not flow.active:
            flow.active = True
            band.ring.append(t.flow)
        band.live += 1
        heapq.heappush(self._deadlines, (t.deadline, t.seq, t))
        self.requests += 1
        self.bytes += t.size

    def peek_lowest_priority(self) -> int | None:
        """Priority of the lowest band holding tickets."""
        return -self._order[-1] if self._order else None

    def pop(self) -> Ticket | None:
        """Next ticket: highest band, round-robin between its flows; marks it DISPATCHED."""
        while self._order:
            prio = -self._order[0]
            band = self._bands[prio]
            t = self._pop_band(band)
            if t is None:  # only dead entries were left
                self._drop_band(prio)
                continue
            self._account_removed(t, band)
            t.state = TicketState.DISPATCHED
            self._dead += 1  # its deadline entry is now dead
            if band.live == 0:
                self._drop_band(prio)
            self._maybe_compact()
            return t
        return None

    def take(self, t: Ticket) -> bool:
        """Release one queued ticket out of service order (a release rule chose it); marks it
        DISPATCHED. False if it was no longer queued."""
        if t.state is not TicketState.QUEUED:
            return False
        t.state = TicketState.DISPATCHED
        self._remove_live(t)
        return True

    def service_key(self, t: Ticket) -> tuple[float, int]:
        """Sort key of the queue's order within a flow (deadline then age, or age)."""
        return (t.order_key if self.edf else 0.0, t.seq)

    def top_priority(self) -> int | None:
        """Priority of the highest band holding live tickets (None: empty)."""
        while self._order:
            prio = -self._order[0]
            if self._bands[prio].live:
                return prio
            self._drop_band(prio)
        return None

    def top_band(self) -> list[Ticket]:
        """The live tickets of the highest priority band (any order; `seq` is their age)."""
        prio = self.top_priority()
        return [] if prio is None else self._live_tickets(self._bands[prio])

    def cancel(self, t: Ticket) -> bool:
        """Remove a queued ticket (client gone); False if it was no longer queued."""
        if t.state is not TicketState.QUEUED:
            return False
        t.state = TicketState.CANCELLED
        self._remove_live(t)
        return True

    def expire(self, now: float) -> list[Ticket]:
        """Queued tickets whose deadline is at or before `now`, marked EXPIRED and removed."""
        out: list[Ticket] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            t = heapq.heappop(heap)[2]
            if t.state is TicketState.QUEUED:
                t.state = TicketState.EXPIRED
                self._remove_live(t, deadline_entry_gone=True)
                out.append(t)
            else:
                self._dead -= 1
        return out

    def shed_below(self, priority: int) -> list[Ticket]:
        """Remove every queued ticket of a band below `priority` (marked EXPIRED)."""
        out: list[Ticket] = []
        while self._order and -self._order[-1] < priority:
            prio = -self._order[-1]
            band = self._bands[prio]
            while (t := self._pop_band(band)) is not None:
                self._account_removed(t, band)
                t.state = TicketState.EXPIRED
                self._dead += 1  # its deadline entry is now dead
                out.append(t)
            self._drop_band(prio)
        self._maybe_compact()
        return out

    def evict_for(self, priority: int, size: int) -> list[Ticket]:
        """Make room for a ticket of `priority` and `size` bytes by removing the newest tickets
        of the lowest band below `priority`, band by band (marked EXPIRED, returned for the
        shell to answer). Evicts nothing unless that frees enough room."""
        need_requests = self.requests + 1 - self.max_requests
        need_bytes = self.bytes + size - self.max_bytes
        lower = [(-neg, self._bands[-neg].live) for neg in reversed(self._order)
                 if -neg < priority]
        if sum(live for _, live in lower) < need_requests:
            return []
        if need_bytes > 0 and sum(t.size for p, _ in lower
                                  for t in self._live_tickets(self._bands[p])) < need_bytes:
            return []
        out: list[Ticket] = []
        while need_requests > 0 or need_bytes > 0:
            prio = -self._order[-1]
            t = self._newest(self._bands[prio])
            t.state = TicketState.EXPIRED
            self._remove_live(t)
            out.append(t)
            need_requests -= 1
            need_bytes -= t.size
        return out

    @staticmethod
    def _live_tickets(band: _Band) -> list[Ticket]:
        return [e[2] if isinstance(e, tuple) else e for flow in band.flows.values()
                for e in flow.items
                if (e[2] if isinstance(e, tuple) else e).state is TicketState.QUEUED]

    def _newest(self, band: _Band) -> Ticket:
        """The most recently queued live ticket of `band` (the one that waited least)."""
        best: Ticket | None = None
        for flow in band.flows.values():
            if flow.edf:
                cands = (e[2] for e in flow.items if e[2].state is TicketState.QUEUED)
                t = max(cands, key=lambda x: x.seq, default=None)
            else:  # FCFS: the newest live entry is the last live one
                t = next((x for x in reversed(flow.items) if x.state is TicketState.QUEUED),
                         None)
            if t is not None and (best is None or t.seq > best.seq):
                best = t
        assert best is not None, "a band with live tickets has a newest one"
        return best

    def next_deadline(self) -> float | None:
        """Earliest deadline of a queued ticket (for the shell's timer)."""
        heap = self._deadlines
        while heap and heap[0][2].state is not TicketState.QUEUED:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    # -- internals -------------------------------------------------------------------------

    def _pop_band(self, band: _Band) -> Ticket | None:
        ring = band.ring
        while ring:
            fid = ring.popleft()
            flow = band.flows[fid]
            t = flow.pop_live()
            if flow.live > 0:
                ring.append(fid)
            else:
                flow.active = False
                del band.flows[fid]
            if t is not None:
                return t
        return None

    def _remove_live(self, t: Ticket, deadline_entry_gone: bool = False) -> None:
        band = self._bands[t.priority]
        flow = band.flows[t.flow]
        flow.live -= 1
        self._account_removed(t, band)
        # the flow container and (unless popped) the deadline heap keep a dead entry each
        self._dead += 1 if deadline_entry_gone else 2
        if band.live == 0:
            self._drop_band(t.priority)
        self._maybe_compact()

    def _account_removed(self, t: Ticket, band: _Band) -> None:
        band.live -= 1
        self.requests -= 1
        self.bytes -= t.size

    def _drop_band(self, prio: int) -> None:
        band = self._bands.pop(prio)
        del self._order[bisect.bisect_left(self._order, -prio)]
        for flow in band.flows.values():
            self._dead -= len(flow.items) - flow.live

    def _maybe_compact(self) -> None:
        if self._dead <= 2 * self.requests + 64:
            return
        self._deadlines = [e for e in self._deadlines if e[2].state is TicketState.QUEUED]
        heapq.heapify(self._deadlines)
        for band in self._bands.values():
            for fid in [f for f, fl in band.flows.items() if fl.live == 0]:
                band.flows[fid].active = False
                del band.flows[fid]
            band.ring = deque(f for f in band.ring if f in band.flows)
            for flow in band.flows.values():
                flow.compact()
        self._dead = 0
