"""One asyncio task per endpoint that polls its /metrics and swaps in fresh `EndpointMetrics`,
as often as its `ScrapePacer` says (see `scrape_pacing`: fast while the pool's plugins need the
endpoint's load fresh and it changes, slowly when idle).

Each successful scrape replaces `Endpoint.metrics` whole with a new frozen value whose
`scraped_at` is the monotonic time the page arrived. A failed scrape (refused, timeout,
non-200) changes nothing, so the metrics simply age: the core treats metrics older than its
staleness threshold (200 ms by default) as unknown/saturated, and the data layer stops calling
the endpoint *ready* once its last good scrape is older than the ready window (see
`runtime.DataLayer.is_ready`).

Scrapes use `KeepAliveGet`, a minimal HTTP/1.1 GET over one persistent connection per
endpoint, rather than aiohttp's client, which costs about four times the CPU per request; and
the scrapers of a data layer wake together (see `Scraper`). `inferoute overhead` prints what
scraping 16 endpoints every 50 ms costs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Collection
from typing import Callable

from ..core.endpoint import Endpoint
from ..aiotasks import cancel_tasks
from ..core.metricsparse import (ALL_FIELDS, EngineName, MetricField, PageHints, detect_engine,
                                 parse_metrics)
from .scrape_pacing import ScrapePacer

log = logging.getLogger("inferoute.scrape")

#: largest /metrics page accepted (a vLLM page is 10-50 kB)
MAX_PAGE_BYTES = 8 * 1024 * 1024


class ScrapeError(Exception):
    """A scrape got no usable page (refused, reset, timeout, bad status or framing)."""


class KeepAliveGet:
    """GET one path repeatedly over a kept-alive HTTP/1.1 connection (plain text, no gzip).

    Handles Content-Length, chunked and close-delimited bodies; reconnects after any error.
    Not a general HTTP client: just enough for Prometheus endpoints.
    """

    def __init__(self, host: str, port: int, path: str = "/metrics", *,
                 tls: bool = False) -> None:
        self.host, self.port, self.tls = host, port, tls
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._request = (f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: text/plain\r\n"
                         "Accept-Encoding: identity\r\nUser-Agent: inferoute-scraper\r\n\r\n"
                         ).encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def get(self) -> tuple[int, bytes]:
        """(status, body); raises ScrapeError or OSError/asyncio errors (then reconnects)."""
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=True if self.tls else None)
        reader, writer = self._reader, self._writer
        assert reader is not None
        try:
            writer.write(self._request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status_line = lines[0].split(None, 2)
            if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
                raise ScrapeError(f"not an HTTP response: {lines[0][:60]!r}")
            status = int(status_line[1])
            length: int | None = None
            chunked, keep = False, True
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    keep = b"close" not in value.lower()
            if chunked:
                body = await self._read_chunked(reader)
            elif length is not None:
                if length > MAX_PAGE_BYTES:
                    raise ScrapeError(f"page of {length} bytes exceeds {MAX_PAGE_BYTES}")
                body = await reader.readexactly(length)
            else:
                body = await reader.read(MAX_PAGE_BYTES)
                keep = False
            if not keep:
                self.close()
            return status, body
        except BaseException:
            self.close()
            raise

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # (no trailers expected) final CRLF
                return b"".join(parts)
            total += size
            if total > MAX_PAGE_BYTES:
                raise ScrapeError(f"page exceeds {MAX_PAGE_BYTES} bytes")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)


def _grid_after(now: float, interval: float) -> float:
    """The first multiple of `interval` after `now` on the loop clock."""
    return (math.floor(now / interval) + 1) * interval


class Scraper:
    """Polls `endpoint`'s /metrics on ticks every `interval` seconds, at multiples of
    `interval` on the event loop's clock; `pacer` decides which ticks scrape (default: all).

    All scrapers with one interval wake at the same instants, so one loop wake-up sends every
    endpoint's request and the replies are read together. Staggered polls cost a wake-up each:
    on the development VM, 16 endpoints every 50 ms took ~10% of a core staggered against ~4%
    aligned (`inferoute overhead` prints the figure). The scheduler also sees every endpoint's
    metrics at the same age.

    `engine` None detects the engine from the first page that names one and then keeps it.
    `fields`: the metric families parsed (see `parse_metrics`; `metric_needs` derives them
    from the pool's plugins).
    """

    def __init__(self, endpoint: Endpoint, *, interval: float = 0.05, timeout: float = 1.0,
                 engine: EngineName | None = None, path: str = "/metrics",
                 clock: Callable[[], float] = time.monotonic,
                 on_page: Callable[[Endpoint], None] | None = None,
                 pacer: ScrapePacer | None = None,
                 fields: Collection[MetricField] = ALL_FIELDS) -> None:
        self.endpoint = endpoint
        #: called after every scrape that installed fresh metrics (e.g. the served-model check)
        self.on_page = on_page
        self.interval = interval
        self.pacer = pacer if pacer is not None else ScrapePacer(interval, interval)
        self.fields = fields
        self.timeout = timeout
        self.engine = engine
        self.url = endpoint.url + path
        self._http = KeepAliveGet(endpoint.host.strip("[]"), endpoint.port, path,
                                  tls=endpoint.scheme == "https")
        self.clock = clock
        self.scrapes = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._hints = PageHints()

    async def scrape_once(self) -> bool:
        """One poll; True when fresh metrics were installed."""
        self.scrapes += 1
        started, books = self.clock(), self.endpoint.books_changes
        try:
            async with asyncio.timeout(self.timeout):
                status, raw = await self._http.get()
        except asyncio.CancelledError:
            raise
        except (ScrapeError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, OSError, ValueError) as exc:
            return self._failed(started, f"{type(exc).__name__}: {exc}" if str(exc) else
                                type(exc).__name__)
        answered = self.clock()
        if status != 200:
            return self._failed(started, f"HTTP {status}")
        text = raw.decode("utf-8", "replace")
        if self.engine is None:
            detected = detect_engine(text)
            if detected is not None:
                self.engine = detected
                self.endpoint.engine = detected
        ep = self.endpoint
        before = ep.metrics
        ep.metrics = parse_metrics(text, self.engine or ep.engine, scraped_at=self.clock(),
                                   hints=self._hints, fields=self.fields)
        ep.scrape_period = self.pacer.scraped(started, ep, before, books, answered)
        if self.consecutive_failures:
            log.info("metrics of %s are back after %d failed scrapes", self.endpoint.name,
                     self.consecutive_failures)
        self.consecutive_failures = 0
        self.last_error = None
        if self.on_page is not None:
            self.on_page(self.endpoint)
        return True

    def _failed(self, started: float, reason: str) -> bool:
        self.pacer.failed(started)
        self.failures += 1
        self.consecutive_failures += 1
        if self.consecutive_failures == 1:
            log.warning("scraping %s failed: %s", self.url, reason)
        self.last_error = reason
        return False

    async def run(self) -> None:
        """Tick until cancelled, at a fixed rate on the shared grid, scraping on the ticks the
        pacer calls due (a slow scrape delays only its own next tick; one that falls behind
        skips to the next grid point, never bursts)."""
        loop = asyncio.get_running_loop()
        interval = self.interval
        next_at = _grid_after(loop.time(), interval)
        pacer, ep = self.pacer, self.endpoint
        while True:
            await asyncio.sleep(next_at - loop.time())
            if pacer.due(self.clock(), ep):
                await self.scrape_once()
            next_at += interval
            now = loop.time()
            if next_at < now:
                next_at = _grid_after(now, interval)

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"scrape {self.endpoint.name}")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_tasks(task)
        self._http.close()
