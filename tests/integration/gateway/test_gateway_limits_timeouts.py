"""The gateway's retry backoff, first-byte and idle timeouts, request limits and preference for
endpoints with fresh metrics, through the real server code (`serve`) on 127.0.0.1.

The model servers are in-process aiohttp apps whose behaviour each test switches: answer
normally (the stand-in's generator and /metrics), send headers and then nothing, stall after
the first chunk, hold every request until released, or freeze /metrics as well.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from inferoute.core import retryplan
from inferoute.datalayer.serving_config import ServingConfig, parse_serving_config
from inferoute.gateway.app import serve
from inferoute.tools.standin import StandIn

pytestmark = pytest.mark.timeout(60)

SERVED = "x-gateway-destination-endpoint-served"
ROUND_ROBIN = {"plugins": [{"type": "round-robin-picker"}],
               "schedulingProfiles": [{"name": "default",
                                       "plugins": [{"pluginRef": "round-robin-picker"}]}],
               # frozen metrics are told apart after 1 s: a loaded test machine may delay
               # scrapes of a healthy replica by a few hundred milliseconds
               "saturationDetector": {"metricsStalenessThreshold": "1s"}}


class Upstream:
    """A model server whose behaviour (`mode`) the test switches; counts completions."""

    def __init__(self) -> None:
        self.standin = StandIn("m")
        self.mode = "ok"  # ok | silent | stall | hold
        self.frozen = False  # /metrics hangs too
        self.hits = 0
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.frozen:
            await self.release.wait()
        if self.mode == "silent":  # headers, then never a body byte
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await self.release.wait()
            return resp
        if self.mode == "stall":  # one event, then silence
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b'data: {"choices": [{"index": 0, "text": "w0"}]}\n\n')
            await self.release.wait()
            return resp
        if self.mode == "hold":
            await self.release.wait()
        return await self.standin.generate(request)

    async def metrics(self, request: web.Request) -> web.Response:
        if self.frozen:
            await self.release.wait()
        return await self.standin.metrics(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    @property
    def name(self) -> str:
        return self.url.removeprefix("http://")

    async def close(self) -> None:
        self.release.set()
        assert self.runner is not None
        await self.runner.cleanup()


class Gateway:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def complete(self, stream: bool = False, headers: dict[str, str] | None = None
                       ) -> tuple[int, dict[str, str], bytes]:
        body = {"model": "m", "prompt": "hello", "max_tokens": 3, "stream": stream}
        async with self.session.post(self.url + "/v1/completions", json=body,
                                     headers=headers) as r:
            return r.status, dict(r.headers), await r.read()

    async def metric(self, name: str) -> float:
        async with self.session.get(self.url + "/metrics") as r:
            text = await r.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name))


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    ups = [Upstream(), Upstream()]
    for u in ups:
        await u.start()
    yield ups
    for u in ups:
        await u.close()


@pytest.fixture
async def gateway(upstreams: list[Upstream], tmp_path: Path, request: pytest.FixtureRequest
                  ) -> AsyncIterator[Any]:
    """`start(**config)` runs `serve` with the two upstreams in one round-robin pool."""
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def start(**overrides: Any) -> Gateway:
        cfg: dict[str, Any] = {
            "host": "127.0.0.1", "port": 0, "scrapeTimeout": "200ms", "readyWindow": "30s",
            "pools": [{"model": "m", "endpoints": [u.url for u in upstreams],
                       "scheduler": ROUND_ROBIN}]}
        cfg.update(overrides)
        config: ServingConfig = parse_serving_config(cfg)
        ready = tmp_path / f"ready-{len(tasks)}"
        stop = asyncio.Event()
        tasks.append((asyncio.create_task(serve(config, ready_file=str(ready), stop=stop)),
                      stop))
        for _ in range(500):
            if ready.exists() and ready.read_text():
                break
            await asyncio.sleep(0.01)
        gw = Gateway(f"http://127.0.0.1:{int(ready.read_text())}", session)
        for _ in range(500):  # both endpoints scraped
            async with session.get(gw.url + "/ready") as r:
                body = await r.json()
            if r.status == 200 and body["ready_endpoints"]["m"] == 2:
                return gw
            await asyncio.sleep(0.02)
        raise AssertionError("the gateway never saw both endpoints ready")

    yield start
    for task, stop in tasks:
        stop.set()
    for u in upstreams:
        u.release.set()
    await asyncio.gather(*(t for t, _ in tasks))
    await session.close()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # serve() installed them on this test's loop
        loop.remove_signal_handler(sig)


async def test_first_byte_timeout_is_retried_elsewhere_after_a_backoff(
        gateway: Any, upstreams: list[Upstream], monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers without a first body byte within firstByteTimeout: the request moves on to the
    other endpoint (after one backoff, none before a first attempt), and succeeds."""
    delays: list[int] = []
    real = retryplan.retry_delay

    def recording(attempt: int, base: float, cap: float, *rand: Any) -> float:
        delays.append(attempt)
        return real(attempt, base, cap, *rand)

    monkeypatch.setattr(retryplan, "retry_delay", recording)
    silent, good = upstreams
    silent.mode = "silent"
    gw = await gateway(upstream={"firstByteTimeout": "400ms", "idleTimeout": "30s"})
    results = [await gw.complete(stream=True) for _ in range(4)]
    for status, headers, body in results:
        assert status == 200 and headers[SERVED] == good.name
        assert body.rstrip().endswith(b"data: [DONE]") and b'"error"' not in body
    assert silent.hits >= 1  # round robin sent some requests there first
    assert delays == [1] * silent.hits  # one backoff per retry, none for first attempts
    assert await gw.metric("inferoute_upstream_retries_total") == silent.hits


async def test_idle_timeout_ends_a_stalled_stream_cleanly(gateway: Any,
                                                          upstreams: list[Upstream]) -> None:
    """After the first byte, a gap longer than idleTimeout ends the stream with a 504 error
    event and [DONE] (firstByteTimeout is far longer: the idle one is what fires)."""
    for u in upstreams:
        u.mode = "stall"
    gw = await gateway(upstream={"firstByteTimeout": "60s", "idleTimeout": "300ms"})
    status, _, body = await gw.complete(stream=True)
    assert status == 200
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e.strip()]
    assert orjson.loads(events[0])["choices"][0]["text"] == "w0"
    assert orjson.loads(events[-2])["error"]["code"] == "gateway_timeout"
    assert events[-1] == b"[DONE]"


async def test_read_timeout_alias_sets_both(gateway: Any, upstreams: list[Upstream]) -> None:
    """The deprecated readTimeout still works: here as the idle timeout of a stalled stream."""
    for u in upstreams:
        u.mode = "stall"
    gw = await gateway(upstream={"readTimeout": "300ms"})
    status, _, body = await gw.complete(stream=True)
    assert status == 200 and b'"gateway_timeout"' in body and body.rstrip().endswith(b"[DONE]")


async def test_concurrency_limit_answers_503_at_once(gateway: Any,
                                                     upstreams: list[Upstream]) -> None:
    """With maxConcurrentRequests in progress, one more gets 503 + Retry-After immediately
    (counted); when they finish, requests are accepted again."""
    for u in upstreams:
        u.mode = "hold"
    gw = await gateway(maxConcurrentRequests=2)
    held = [asyncio.create_task(gw.complete()) for _ in range(2)]
    while sum(u.hits for u in upstreams) < 2:
        await asyncio.sleep(0.01)
    status, headers, body = await gw.complete()
    assert status == 503 and headers["Retry-After"] == "1"
    assert orjson.loads(body)["error"]["code"] == "gateway_overloaded"
    assert await gw.metric("inferoute_concurrency_limit_rejections_total") == 1
    for u in upstreams:
        u.mode = "ok"
        u.release.set()
    assert [r[0] for r in await asyncio.gather(*held)] == [200, 200]
    assert (await gw.complete())[0] == 200


async def test_header_limit_is_configurable(gateway: Any) -> None:
    """maxHeaderBytes bounds a header field: over it, a JSON 4xx; under it, served."""
    gw = await gateway(maxHeaderBytes=2048)
    assert (await gw.complete(headers={"x-big": "a" * 1500}))[0] == 200
    status, _, body = await gw.complete(headers={"x-big": "a" * 3000})
    assert status in (400, 431) and "error" in orjson.loads(body)


async def test_frozen_replica_gets_no_new_requests(gateway: Any,
                                                   upstreams: list[Upstream]) -> None:
    """A replica whose /metrics stops answering is still *ready* (readyWindow 30 s) but its
    metrics are stale: new requests go to the replica with fresh metrics only."""
    good, frozen = upstreams
    gw = await gateway(upstream={"firstByteTimeout": "2s"})
    for _ in range(4):
        assert (await gw.complete())[0] == 200
    assert good.hits == 2 and frozen.hits == 2  # round robin over both
    frozen.frozen = True
    await asyncio.sleep(2.0)  # past the 1 s staleness threshold, well within readyWindow
    async with gw.session.get(gw.url + "/ready") as r:
        assert (await r.json())["ready_endpoints"]["m"] == 2  # still ready
    for _ in range(6):
        status, headers, _ = await gw.complete()
        assert status == 200 and headers[SERVED] == good.name
    assert frozen.hits == 2
