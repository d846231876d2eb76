"""The gateway reports a request's first response bytes to the scheduler (`on_first_token`).

In-process on 127.0.0.1: the stand-in model server (streams one word every 50 ms) and the gateway
app, both on aiohttp test servers; the scheduler is llm-d's optimized-baseline profile with the
in-flight load producer in `prefill` accounting, whose count must drop to zero at the first
token while the response is still streaming, and in `request` accounting, where it must stay
until the end.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from inferoute.datalayer.serving_config import parse_serving_config
from inferoute.datalayer.runtime import DataLayer
from inferoute.gateway.app import build_app
from inferoute.tools.standin import StandIn


def scheduler(accounting: str) -> dict:
    return {
        "plugins": [{"type": "prefix-cache-scorer"},
                    {"type": "inflight-load-producer", "parameters": {"accounting": accounting}},
                    {"type": "prefix-cache-affinity-filter"},
                    {"type": "token-load-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "prefix-cache-affinity-filter"}, {"pluginRef": "token-load-scorer"}]}],
    }


@pytest.mark.parametrize("accounting", ["prefill", "request"])
async def test_first_token_reaches_the_scheduler(accounting: str) -> None:
    upstream = TestServer(StandIn("m", token_delay=0.05).app(), host="127.0.0.1")
    await upstream.start_server()
    cfg = parse_serving_config({"scrapeInterval": "50ms", "pools": [{
        "model": "m", "endpoints": [f"http://127.0.0.1:{upstream.port}"],
        "scheduler": scheduler(accounting)}]})
    data = DataLayer(cfg)
    client = TestClient(TestServer(build_app(data), host="127.0.0.1"))
    await client.start_server()
    try:
        producer = data.router.pools["m"].scheduler.plugins["inflight-load-producer"]
        endpoint = data.router.pools["m"].pool.get(f"127.0.0.1:{upstream.port}")
        for _ in range(100):  # ready once scraped
            if endpoint.metrics.scraped_at:
                break
            await asyncio.sleep(0.05)
        resp = await client.post("/v1/completions", json={
            "model": "m", "prompt": "hello " * 200, "max_tokens": 20, "stream": True})
        assert resp.status == 200
        first = await resp.content.readany()
        assert first.startswith(b"data:")
        during = producer.tokens(endpoint)
        body = first + await resp.read()
        assert body.rstrip().endswith(b"[DONE]")
        await asyncio.sleep(0.05)
        if accounting == "prefill":
            assert during == 0  # released at the first token, ~1 s before the end
        else:
            assert during > 0  # the decoding request still loads the endpoint
        assert producer.tokens(endpoint) == 0
    finally:
        await client.close()
        await upstream.close()
