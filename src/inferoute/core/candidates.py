"""Which endpoints the scheduler may pick from: the one candidate rule of every shell.

An endpoint is *ready* when it is `healthy` and its last successful scrape is at most
`ready_window` seconds old. Among the ready endpoints, the *live* ones are offered when there is
at least one: a replica that froze stops answering /metrics at once and gets no new requests
from then on, rather than at the end of the ready window. When none is live, every ready
endpoint is. Live means scraped, or seen answering a request (first bytes or end), within the
fresh window: the scheduler's staleness threshold, but never under two scrape periods, else a
slow scrape period makes every endpoint flicker; an endpoint the data layer scrapes more slowly
(idle, or read by no load-sensitive plugin: `Endpoint.scrape_period`) is live for two of its
own periods. The answers count because a busy replica's /metrics can run late on a crowded
host (vLLM serves it from the process that serves the requests): scrape age alone would take
the replica that holds a conversation's cache out of the candidates just after it answered,
and send the next turn elsewhere.

Without scraping (`ready_window=None`: tests, or a data layer told not to scrape) readiness is
health alone and nothing is stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .endpoint import Endpoint

__all__ = ["DEFAULT_READY_WINDOW", "DEFAULT_SCRAPE_INTERVAL", "CandidateRule"]

#: the serving config's defaults: 100 scrape periods of 50 ms
DEFAULT_READY_WINDOW = 5.0
DEFAULT_SCRAPE_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class CandidateRule:
    """The ready and live rule (see the module docstring)."""

    #: seconds a good scrape keeps an endpoint ready; None: endpoints are not scraped
    ready_window: float | None = None
    scrape_interval: float = DEFAULT_SCRAPE_INTERVAL

    def is_ready(self, ep: Endpoint, now: float) -> bool:
        """Healthy and, when scraped, scraped successfully within the ready window."""
        if not ep.healthy:
            return False
        if self.ready_window is None:
            return True
        at = ep.metrics.scraped_at
        return at is not None and now - at <= self.ready_window

    def ready(self, endpoints: Iterable[Endpoint], now: float) -> list[Endpoint]:
        return [ep for ep in endpoints if self.is_ready(ep, now)]

    def fresh_window(self, staleness_threshold: float) -> float:
        """Age below which metrics count as fresh, given the scheduler's staleness threshold."""
        return max(staleness_threshold, 2 * self.scrape_interval)

    def candidates(self, endpoints: Iterable[Endpoint], now: float, staleness_threshold: float,
                   *, prefer_fresh: bool = True) -> list[Endpoint]:
        """The ready endpoints, only the live ones among them when there are any (and
        `prefer_fresh`)."""
        ready = self.ready(endpoints, now)
        if not prefer_fresh or self.ready_window is None or len(ready) < 2:
            return ready
        window = self.fresh_window(staleness_threshold)
        live = [ep for ep in ready
                if ep.is_live(now, window if ep.scrape_period is None
                              else max(window, 2 * ep.scrape_period))]
        return live or ready
