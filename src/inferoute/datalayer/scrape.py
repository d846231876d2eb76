"""One asyncio task per endpoint that polls its /metrics and swaps in fresh `EndpointMetrics`.

Each successful scrape replaces `Endpoint.metrics` whole with a new frozen value whose
`scraped_at` is the monotonic time the page arrived. A failed scrape (refused, timeout,
non-200) changes nothing, so the metrics simply age: the core treats metrics older than its
staleness threshold (200 ms by default) as unknown/saturated, and the data layer stops calling
the endpoint *ready* once its last good scrape is older than the ready window (see
`runtime.DataLayer.is_ready`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

import aiohttp

from ..core.endpoint import Endpoint
from .metricsparse import EngineName, detect_engine, parse_metrics

log = logging.getLogger("inferoute.scrape")

#: ask for plain text: gzip costs CPU on both ends and the pages are small on loopback/LAN
_HEADERS = {"Accept": "text/plain", "Accept-Encoding": "identity"}


class Scraper:
    """Polls `endpoint`'s /metrics every `interval` seconds (fixed rate, first poll jittered).

    `engine` None detects the engine from the first page that names one and then keeps it.
    """

    def __init__(self, session: aiohttp.ClientSession, endpoint: Endpoint, *,
                 interval: float = 0.05, timeout: float = 1.0,
                 engine: EngineName | None = None, path: str = "/metrics",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.endpoint = endpoint
        self.interval = interval
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.engine = engine
        self.url = endpoint.url + path
        self.clock = clock
        self.scrapes = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def scrape_once(self) -> bool:
        """One poll; True when fresh metrics were installed."""
        self.scrapes += 1
        try:
            async with self.session.get(self.url, headers=_HEADERS,
                                        timeout=self.timeout) as resp:
                if resp.status != 200:
                    return self._failed(f"HTTP {resp.status}")
                raw = await resp.read()
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return self._failed(f"{type(exc).__name__}: {exc}" if str(exc) else
                                type(exc).__name__)
        text = raw.decode("utf-8", "replace")
        if self.engine is None:
            detected = detect_engine(text)
            if detected is not None:
                self.engine = detected
                self.endpoint.engine = detected
        self.endpoint.metrics = parse_metrics(text, self.engine or self.endpoint.engine,
                                              scraped_at=self.clock())
        if self.consecutive_failures:
            log.info("metrics of %s are back after %d failed scrapes", self.endpoint.name,
                     self.consecutive_failures)
        self.consecutive_failures = 0
        self.last_error = None
        return True

    def _failed(self, reason: str) -> bool:
        self.failures += 1
        self.consecutive_failures += 1
        if self.consecutive_failures == 1:
            log.warning("scraping %s failed: %s", self.url, reason)
        self.last_error = reason
        return False

    async def run(self) -> None:
        """Poll until cancelled, at a fixed rate (a slow scrape delays the next one only)."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0, self.interval))
        next_at = loop.time()
        while True:
            await self.scrape_once()
            next_at += self.interval
            now = loop.time()
            if next_at < now:  # fell behind: do not burst to catch up
                next_at = now
            await asyncio.sleep(next_at - now)

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"scrape {self.endpoint.name}")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
