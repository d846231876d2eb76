"""SLO headers through the gateway: the latency model learns from real streamed responses, its
error reaches /metrics, a bad header is a 400 and a sheddable request no endpoint is predicted to
serve in time a 429, both OpenAI-style JSON.

In-process on 127.0.0.1: a stand-in model server (one word every 5 ms) and the gateway app on
aiohttp test servers; admission is on so the `batch` objective makes a request sheddable.
"""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from inferoute.datalayer.runtime import DataLayer
from inferoute.datalayer.serving_config import parse_serving_config
from inferoute.gateway.app import build_app
from inferoute.tools.standin import StandIn

SCHEDULER = {
    "plugins": [{"type": "prefix-cache-scorer"},
                {"type": "latency-slo-scorer", "parameters": {"minSamples": 10}},
                {"type": "max-score-picker"}],
    "schedulingProfiles": [{"name": "default", "plugins": [
        {"pluginRef": "prefix-cache-scorer", "weight": 1},
        {"pluginRef": "latency-slo-scorer", "weight": 3},
        {"pluginRef": "max-score-picker"}]}],
}


async def test_slo_headers_train_export_and_shed() -> None:
    upstream = TestServer(StandIn("m", token_delay=0.005).app(), host="127.0.0.1")
    await upstream.start_server()
    cfg = parse_serving_config({"scrapeInterval": "50ms", "pools": [{
        "model": "m", "endpoints": [f"http://127.0.0.1:{upstream.port}"],
        "scheduler": SCHEDULER}],
        "admission": {"objectives": [{"name": "batch", "priority": -1}]}})
    data = DataLayer(cfg)
    client = TestClient(TestServer(build_app(data), host="127.0.0.1"))
    await client.start_server()
    try:
        scorer = data.router.pools["m"].scheduler.plugins["latency-slo-scorer"]
        endpoint = data.router.pools["m"].pool.get(f"127.0.0.1:{upstream.port}")
        for _ in range(1000):  # ready once scraped
            if endpoint.metrics.scraped_at:
                break
            await asyncio.sleep(0.02)

        async def post(headers: dict[str, str], max_tokens: int = 8):
            resp = await client.post("/v1/completions", headers=headers, json={
                "model": "m", "prompt": "hello " * 50, "max_tokens": max_tokens,
                "stream": True})
            return resp.status, await resp.read()

        for _ in range(12):  # a generous target: served, and the model learns
            status, body = await post({"x-slo-ttft-ms": "60000", "x-slo-tpot-ms": "1000"})
            assert status == 200 and body.rstrip().endswith(b"[DONE]")
        for _ in range(1000):  # the last end is booked just after the reply
            if scorer.stats()["tpot_checks"] == 12:
                break
            await asyncio.sleep(0.02)
        st = scorer.stats()
        assert st["ttft_checks"] == 12 and st["ttft_error"] is not None

        page = await (await client.get("/metrics")).text()
        assert 'inferoute_latency_prediction_error_ratio{name="m",target="ttft"}' in page
        assert 'inferoute_latency_prediction_error_ratio{name="m",target="tpot"}' in page

        resp = await client.post("/v1/completions", headers={"x-slo-ttft-ms": "soon"},
                                 json={"model": "m", "prompt": "hi", "max_tokens": 2})
        err = (await resp.json())["error"]
        assert resp.status == 400 and err["param"] == "x-slo-ttft-ms"

        # a TTFT no endpoint can meet: sheddable -> 429 with the reason; standard -> served
        impossible = {"x-slo-ttft-ms": "0.001", "x-gateway-inference-objective": "batch"}
        resp = await client.post("/v1/completions", headers=impossible,
                                 json={"model": "m", "prompt": "hi", "max_tokens": 2})
        err = (await resp.json())["error"]
        assert resp.status == 429 and err["code"] == "slo_unattainable"
        assert "against 0.001 ms" in err["message"] and "Retry-After" in resp.headers
        status, _ = await post({"x-slo-ttft-ms": "0.001"}, max_tokens=2)
        assert status == 200
    finally:
        await client.close()
        await upstream.close()
