"""Endpoint health for `inferoute serve`: the core `HealthTracker` fed by real outcomes.

Passive outlier detection is on by default: every upstream attempt is reported (`record`: a
connect error, a timeout, a 5xx or a mid-stream failure is a failure; a 4xx is the client's
fault and counts as success), and an endpoint that keeps failing is ejected (`healthy = False`,
so it is not ready) for a growing back-off, then tried again. Active checks (off by default)
GET each endpoint's health path on a timer. Settings: the `health:` section of the serving
config, `{outlier: OutlierSpec, active: ActiveCheckSpec}` (see docs/admission.md).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from ..aiotasks import cancel_tasks
from ..core.endpoint import Endpoint
from ..core.health import ActiveCheckSpec, HealthEvent, HealthTracker, OutlierSpec
from ..datalayer.runtime import DataLayer

log = logging.getLogger("inferoute.health")

TICK = 0.5


class EndpointHealth:
    """One `HealthTracker` per pool, a ticker for ejection ends and active probes."""

    def __init__(self, data: DataLayer, outlier: OutlierSpec | None = None,
                 active: ActiveCheckSpec | None = None) -> None:
        self.data = data
        self.outlier = outlier or OutlierSpec()
        self.active = active or ActiveCheckSpec()
        self.trackers = {name: HealthTracker(mp.pool, self.outlier, self.active)
                         for name, mp in data.router.pools.items()}
        self._task: asyncio.Task[None] | None = None

    def record(self, pool: str, ep: Endpoint, ok: bool) -> None:
        """One upstream outcome of a request of `pool` on `ep`."""
        tracker = self.trackers.get(pool)
        if tracker is not None:
            self._log(tracker.record(ep, ok, self.data.now()))

    def failure_streak(self, pool: str, ep: Endpoint) -> int:
        """Failures in a row of `ep` in `pool` (0 after a success or when unknown)."""
        tracker = self.trackers.get(pool)
        return tracker.failure_streak(ep) if tracker is not None else 0

    @staticmethod
    def _log(event: HealthEvent | None) -> None:
        if event is None:
            return
        if event.kind in ("ejected", "unhealthy"):
            log.warning("endpoint %s %s", event.endpoint, event.kind)
        else:
            log.info("endpoint %s %s", event.endpoint, event.kind)

    async def _probe(self, tracker: HealthTracker, ep: Endpoint) -> None:
        session = self.data.session
        ok = False
        if session is not None:
            try:
                async with session.get(ep.url + self.active.path,
                                       timeout=aiohttp.ClientTimeout(total=self.active.timeout)
                                       ) as resp:
                    ok = resp.status < 500
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                ok = False
        self._log(tracker.record_check(ep, ok, self.data.now()))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = self.data.now()
            probes = []
            for tracker in self.trackers.values():
                for event in tracker.tick(now):
                    self._log(event)
                probes += [self._probe(tracker, ep) for ep in tracker.due_checks(now)]
            if probes:
                await asyncio.gather(*probes)

    def start(self) -> None:
        if self._task is None and (self.outlier.enabled or self.active.enabled):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="health")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_tasks(task)
