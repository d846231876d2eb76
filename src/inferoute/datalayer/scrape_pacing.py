"""`ScrapePacer`: when to scrape one endpoint next, from what the pool reads and what it is doing.

The scraper's loop wakes on a grid of the fast interval (`scrapeInterval`, 50 ms) and asks the
pacer whether this tick scrapes; a wake-up that does not scrape costs microseconds, a scrape
costs the model server a page render and the gateway an HTTP exchange and a parse. For a pool
that reads load metrics fresh (`MetricNeeds.needs_fresh_load`: a queue, KV or running-requests
scorer, admission, the autoscaling gauge) the period is

- `fast` (50 ms) after a change: the gateway dispatched a request there or saw one finish
  since the last scrape (`Endpoint.books_changes`), the last two pages' queue or batch
  differed with no such dispatch or finish between them (someone else's requests), or
  requests wait there (a queue drains without us);
- `busy` while it has work and nothing changed: requests in flight or running. Decode grows
  the KV usage between changes; `busy` (the staleness threshold less one fast interval, 150 ms
  by default) keeps every page younger than the threshold that calls metrics stale;
- `idle` (`scrapeIdleInterval`, 1 s) when it has no work.

A pool whose plugins read only the gateway's own bookkeeping and static fields (KV capacity)
scrapes every endpoint at `idle`. The data layer caps `idle` (`period_cap`) at a quarter of the
ready window and, with admission on, within its staleness threshold (which calls older metrics
saturated), so an idle endpoint is never shed for the age of its metrics. After a failed
scrape the next comes after `fast`, doubling per consecutive failure up to `idle`: a server
that comes back is seen at once and a dead one is not hammered.

A server renders its page on CPU it would otherwise serve with: a vLLM-CPU replica confined
to its core spends about 5 ms of engine time on each (docs/real-vllm.md, section 6): a scrape
every 50 ms slowed its decode steps by 4-13%. With `max_duty` (`scrapeMaxDuty`, off by
default: measured on real replicas it bought nothing visible, docs/benchmark.md) the pacer
keeps the share of the server's time our scrapes take under it: the fast period is at least
the scrapes' recent answer time over `max_duty`, never beyond the busy period (so no page
ages past the staleness threshold). With 0.05, a page answered in 1 ms (a GPU server's API
process, the simulator) changes nothing; one that takes 10 ms stretches the fast period from
50 to 150 ms.

The period only grows at a scrape: the next one is due `min(period now, period planned at the
last scrape)` after it, so the endpoint's liveness window (two planned periods, see
`core.candidates`) always covers the gap to its next scrape.
"""

from __future__ import annotations

from ..core.endpoint import Endpoint, EndpointMetrics

__all__ = ["DEFAULT_IDLE_INTERVAL", "ScrapePacer"]

#: seconds between scrapes of an endpoint nobody needs fresh metrics of (5 per ready window)
DEFAULT_IDLE_INTERVAL = 1.0
#: weight of the newest answer time in the running mean of a scrape's answer time
_ANSWER_WEIGHT = 0.25


class ScrapePacer:
    """The scrape schedule of one endpoint (sans-I/O: it is told the time)."""

    __slots__ = ("_answer", "_books", "_changed", "_failures", "_last", "_planned", "busy",
                 "fast", "fresh_load", "idle", "max_duty")

    def __init__(self, fast: float, idle: float = DEFAULT_IDLE_INTERVAL, *,
                 busy: float | None = None, fresh_load: bool = True,
                 period_cap: float | None = None,
                 max_duty: float | None = None) -> None:
        if fast <= 0 or idle <= 0 or (busy is not None and busy <= 0):
            raise ValueError("scrape intervals must be positive")
        if max_duty is not None and not 0 < max_duty <= 1:
            raise ValueError("max_duty must be in (0, 1]")
        if period_cap is not None:
            idle = min(idle, period_cap)
        self.fast = fast
        self.idle = max(fast, idle)
        self.busy = min(self.idle, max(fast, fast if busy is None else busy))
        self.fresh_load = fresh_load
        self.max_duty = max_duty
        self._answer = 0.0  # running mean of the seconds a scrape took to answer
        self._last: float | None = None  # time of the last attempt
        self._planned = fast  # the period planned at the last scrape
        self._changed = False  # the last page's queue or batch differed from the one before
        self._failures = 0
        self._books = -1  # `books_changes` at the last scrape

    def period(self, ep: Endpoint) -> float:
        """The period the endpoint's state calls for now (see the module docstring)."""
        if not self.fresh_load:
            return self.idle
        m = ep.metrics
        if self._changed or m.waiting > 0 or ep.books_changes != self._books:
            return max(self.fast, self.duty_floor())
        if ep.in_flight_requests > 0 or m.running > 0:
            return self.busy
        return self.idle

    def duty_floor(self) -> float:
        """The shortest period that keeps the scrapes' share of the server's time within
        `max_duty`, at most the busy period (0 without a cap or an answer yet)."""
        if self.max_duty is None:
            return 0.0
        return min(self._answer / self.max_duty, self.busy)

    def due(self, now: float, ep: Endpoint) -> bool:
        """True when a scrape should start at `now` (never scraped: always)."""
        if self._last is None:
            return True
        if self._failures:
            wait = min(self.fast * (1 << min(self._failures - 1, 16)), self.idle)
        else:
            wait = min(self.period(ep), self._planned)
        # ticks land on the fast grid, a little late: half a tick of slack
        return now - self._last >= wait - self.fast / 2

    def scraped(self, now: float, ep: Endpoint, before: EndpointMetrics,
                books: int | None = None, answered: float | None = None) -> float:
        """Record a scrape that started at `now` and installed `ep.metrics` (`before`: the
        metrics it replaced; `books`: `ep.books_changes` when it started, default now;
        `answered`: when its page had arrived, for the duty cap); returns the period planned
        until the next one."""
        if answered is not None and answered >= now:
            took = answered - now
            self._answer = (took if self._last is None
                            else self._answer + _ANSWER_WEIGHT * (took - self._answer))
        self._last = now
        self._failures = 0
        m = ep.metrics
        books = ep.books_changes if books is None else books
        # a change our own dispatches or finishes explain is not news: the page shows it
        self._changed = (before.scraped_at is not None and books == self._books
                         and (before.waiting, before.running) != (m.waiting, m.running))
        self._books = books
        self._planned = self.period(ep)
        return self._planned

    def failed(self, now: float) -> None:
        """Record a scrape that brought no page."""
        self._last = now
        self._failures += 1
