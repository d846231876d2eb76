"""The scraper's keep-alive HTTP GET against a real loopback server in every framing."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from inferoute.core.clock import ManualClock
from inferoute.core.endpoint import Endpoint
from inferoute.datalayer.scrape import Scraper

PAGE = ("# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="m"} 3.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="m"} 2.0\n'
        'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n')


async def _serve(mode: dict) -> tuple[web.AppRunner, int]:
    async def metrics(request: web.Request) -> web.StreamResponse:
        if mode["kind"] == "status":
            return web.Response(status=503, text="warming up")
        if mode["kind"] == "slow":
            await asyncio.sleep(2)
        if mode["kind"] == "chunked":
            resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await resp.prepare(request)
            for i in range(0, len(PAGE), 40):
                await resp.write(PAGE[i:i + 40].encode())
            await resp.write_eof()
            return resp
        resp = web.Response(text=PAGE)
        if mode["kind"] == "close":
            resp.force_close()
        return resp

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def test_every_framing_and_failure():
    mode = {"kind": "length"}
    runner, port = await _serve(mode)
    clock = ManualClock(10.0)
    ep = Endpoint(host="127.0.0.1", port=port)
    scraper = Scraper(ep, timeout=0.5, clock=clock.now)
    try:
        for kind in ("length", "chunked", "close", "length", "chunked"):
            mode["kind"] = kind
            clock.advance(1)
            assert await scraper.scrape_once(), (kind, scraper.last_error)
            m = ep.metrics
            assert (m.running, m.waiting, m.kv_usage, m.scraped_at) == (3, 2, 0.25, clock.now())
        assert ep.engine == "vllm" and scraper.engine == "vllm"

        good_at = ep.metrics.scraped_at
        mode["kind"] = "status"
        assert not await scraper.scrape_once() and scraper.last_error == "HTTP 503"
        mode["kind"] = "slow"
        assert not await scraper.scrape_once() and "Timeout" in (scraper.last_error or "")
        assert ep.metrics.scraped_at == good_at  # failures leave the metrics to age
        assert scraper.consecutive_failures == 2

        mode["kind"] = "length"  # recovers on a fresh connection
        assert await scraper.scrape_once() and scraper.consecutive_failures == 0
    finally:
        await scraper.stop()
        await runner.cleanup()


async def test_refused_connection_is_a_failure():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = Endpoint(host="127.0.0.1", port=port)
    scraper = Scraper(ep, timeout=0.5)
    assert not await scraper.scrape_once()
    assert ep.metrics.scraped_at is None and scraper.failures == 1


async def test_run_loop_keeps_metrics_fresh():
    runner, port = await _serve({"kind": "length"})
    ep = Endpoint(host="127.0.0.1", port=port)
    scraper = Scraper(ep, interval=0.01, timeout=0.5)
    try:
        scraper.start()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if scraper.scrapes >= 5:
                break
        assert scraper.scrapes >= 5 and scraper.failures == 0 and ep.metrics.running == 3
    finally:
        await scraper.stop()
        await runner.cleanup()
