"""The endpoints a request of a pool may be scheduled on, for every shell (sans-I/O).

`CandidateSelector.select` starts from the router's ready and live rule (`CandidateRule`), and
then: leaves out the endpoints backing off (they said 429/503) while others are left; keeps only
the proxy's endpoint subset when one was given; and, when no endpoint is ready only because
every scrape is stale (the gateway's own host starved, not the replicas) and the fallback is
on, offers the healthy endpoints with the fewest requests in flight from this process. That
fallback is reported to `on_stale(pool, event)`: "start" when a pool enters it, "routed" for
every request it routes, "end" when fresh metrics are back. Nothing left: NoEndpointAvailable,
saying why when health knows (a replica serving another model).

`HealthView` is what the selector, the lifecycle and the attempt plan need to know and tell
about endpoint health; both shells use `datalayer/endpoint_health.py`'s `EndpointHealth` (it
reads what each replica serves), `PoolsHealth` (here, over the core's `HealthTracker`, with an
injected clock) serves where nothing can be read (unit tests, an embedding without I/O).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from .endpoint import Endpoint
from .errors import NoEndpointAvailable
from .health import HealthTracker, OutlierSpec
from .retryplan import BACK_OFF_MAX
from .router import ModelPool, Router

__all__ = ["CandidateSelector", "HealthView", "PoolsHealth", "StaleEvent"]

StaleEvent = Literal["start", "routed", "end"]


class HealthView(Protocol):
    """Endpoint health per pool (the pool named by its model)."""

    def record(self, pool: str, ep: Endpoint, ok: bool) -> None: ...

    def failure_streak(self, pool: str, ep: Endpoint) -> int: ...

    def back_off(self, pool: str, ep: Endpoint, seconds: float) -> None: ...

    def backing_off(self, pool: str, ep: Endpoint) -> bool: ...

    def not_serving(self, pool: str, ep: Endpoint) -> None: ...

    def problems(self, pool: str) -> list[str]: ...


class PoolsHealth:
    """A `HealthView` over one core `HealthTracker` per pool, for a user that reads no
    `/v1/models`: a replica that answered 404 for its pool's model is skipped for
    `BACK_OFF_MAX` seconds, as it may be fixed without anyone telling."""

    def __init__(self, router: Router, clock: Callable[[], float],
                 outlier: OutlierSpec | None = None) -> None:
        self.clock = clock
        self.trackers = {name: HealthTracker(mp.pool, outlier) for name, mp in
                         router.pools.items()}

    def record(self, pool: str, ep: Endpoint, ok: bool) -> None:
        if (t := self.trackers.get(pool)) is not None:
            now = self.clock()
            self._advance(t, now)
            t.record(ep, ok, now)

    @staticmethod
    def _advance(t: HealthTracker, now: float) -> None:
        """Ends the ejections that are over (no ticker runs here: every pick calls this)."""
        due = t.next_transition()
        if due is not None and now >= due:
            t.tick(now)

    def failure_streak(self, pool: str, ep: Endpoint) -> int:
        t = self.trackers.get(pool)
        return t.failure_streak(ep) if t is not None else 0

    def back_off(self, pool: str, ep: Endpoint, seconds: float) -> None:
        if (t := self.trackers.get(pool)) is not None:
            t.back_off(ep, self.clock(), seconds)

    def backing_off(self, pool: str, ep: Endpoint) -> bool:
        t = self.trackers.get(pool)
        if t is None:
            return False
        now = self.clock()
        self._advance(t, now)
        return t.backing_off(ep, now)

    def not_serving(self, pool: str, ep: Endpoint) -> None:
        self.back_off(pool, ep, BACK_OFF_MAX)

    def problems(self, pool: str) -> list[str]:
        return []


class CandidateSelector:
    """The candidate rule of every shell (see the module docstring); one per process."""

    def __init__(self, router: Router, health: HealthView | None = None, *,
                 stale_fallback: bool = False,
                 on_stale: Callable[[str, StaleEvent], None] | None = None) -> None:
        self.router = router
        self.health = health
        self.stale_fallback = stale_fallback
        self.on_stale = on_stale
        #: pools routed on in-flight counts because every endpoint's metrics are stale
        self.stale_pools: set[str] = set()

    def select(self, mp: ModelPool, now: float, allowed: frozenset[str] | None = None, *,
               prefer: frozenset[str] | None = None) -> list[Endpoint]:
        """The endpoints `mp`'s scheduler may pick from at `now` (`allowed`: the proxy's
        subset, names or hosts; `prefer`: names to keep when any of them is a candidate, e.g.
        those admission released the request for); raises NoEndpointAvailable when there is
        none."""
        ready = self.router.candidates(mp, now)
        health, pool = self.health, mp.model
        if ready and health is not None:
            ready = [ep for ep in ready if not health.backing_off(pool, ep)] or ready
        if allowed is not None:
            ready = [ep for ep in ready if ep.name in allowed or ep.host in allowed]
            if not ready:
                raise NoEndpointAvailable(f"no ready endpoint of model {pool!r} is in the "
                                          "proxy's endpoint subset")
        if prefer and ready:
            ready = [ep for ep in ready if ep.name in prefer] or ready
        if ready:
            if pool in self.stale_pools:
                self.stale_pools.discard(pool)
                self._tell(pool, "end")
            return ready
        if self.stale_fallback and self.router.rule.ready_window is not None:
            alive = [ep for ep in mp.pool if ep.healthy and ep.metrics.scraped_at is not None]
            if alive:
                least = min(ep.in_flight_requests for ep in alive)
                if pool not in self.stale_pools:
                    self.stale_pools.add(pool)
                    self._tell(pool, "start")
                self._tell(pool, "routed")
                return [ep for ep in alive if ep.in_flight_requests == least]
        problems = health.problems(pool) if health is not None else []
        if problems:
            raise NoEndpointAvailable(f"no endpoint of pool '{pool}' can serve it: "
                                      + "; ".join(problems[:3]), code="model_not_served")
        raise NoEndpointAvailable(f"no ready endpoint for model '{pool}'")

    def every_ready(self, mp: ModelPool, now: float) -> list[Endpoint]:
        """Every ready endpoint, fresh or not (the attempt plan's last resort)."""
        return self.router.candidates(mp, now, prefer_fresh=False)

    def demoted(self, pool: str) -> Callable[[Endpoint], bool] | None:
        """The attempt plan's sort key: failing or backing off (None without health)."""
        health = self.health
        if health is None:
            return None
        return lambda ep: health.failure_streak(pool, ep) > 0 or health.backing_off(pool, ep)

    def _tell(self, pool: str, event: StaleEvent) -> None:
        if self.on_stale is not None:
            self.on_stale(pool, event)
