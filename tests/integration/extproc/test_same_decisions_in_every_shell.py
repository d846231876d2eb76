"""The three shells of the core's RequestLifecycle make the same decisions: for one request
sequence and the same endpoint state, the HTTP gateway (its app on 127.0.0.1, relaying to two
`inferoute sim` replicas), the endpoint picker (its gRPC servicer, driven by the Envoy stand-in,
which then forwards to the chosen replica as Envoy does) and the virtual benchmark (its own
event loop, `bench/des.py`'s `VirtualBench`, against two simulated engines) choose identical
endpoints.

The endpoint state is the test's: before each request the same metrics (queue, KV use) are
written to the endpoints of each shell's router (the gateway and the picker do not scrape; the
benchmark's scrapes of its engines are replaced by the test's state); every router runs the
llm-d policy with the same seed. Requests run one after another (each ends before the next
starts: one at a time), so the in-flight counts and the prefix index see the same history
everywhere.
"""

from __future__ import annotations

import aiohttp
import grpc
import orjson
import pytest
from aiohttp import web

from inferoute.bench.des import SimConfig, VirtualBench
from inferoute.bench.load import LoadSpec, Stage
from inferoute.bench.workloads import WorkItem, Workload
from inferoute.core.endpoint import EndpointMetrics
from inferoute.core.router import Router
from inferoute.core.words import encode
from inferoute.datalayer.runtime import DataLayer
from inferoute.datalayer.serving_config import ServingConfig, parse_serving_config
from inferoute.extproc.protocol import EndpointPicker
from inferoute.extproc.server import ExternalProcessor, start_grpc_server
from inferoute.gateway.app import build_app

from .conftest import MODEL, EnvoyStream

pytestmark = pytest.mark.timeout(180)

SERVED = "x-gateway-destination-endpoint-served"
SYSTEMS = ["You are a terse assistant. " * 30, "You translate into French. " * 30,
           "You write haiku about databases. " * 30]
N = 18


def _config(urls: list[str]) -> ServingConfig:
    return parse_serving_config({"pools": [{"model": MODEL, "scheduler": "llm-d",
                                            "endpoints": urls}]},
                                "the test")


def _prompts() -> list[str]:
    return [SYSTEMS[i % 3] + f"question {i} " * (1 + i % 4) for i in range(N)]


def _bodies() -> list[bytes]:
    """The requests, as the virtual benchmark sends its workload's items."""
    return [orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": True})
            for prompt in _prompts()]


def _set_state(router: Router, i: int, scraped_at: float | None = None) -> None:
    """Request i's endpoint state, the same in every shell: every third request sees equal
    load (the prefix index and the seeded tie-break decide), the others uneven queues."""
    for k, ep in enumerate(router.pools[MODEL].pool):
        waiting = 0 if i % 3 == 0 else (i + 2 * k) % 4
        ep.metrics = EndpointMetrics(waiting=waiting, kv_usage=0.0 if i % 3 == 0 else
                                     ((i * (k + 1)) % 5) / 10, scraped_at=scraped_at)


async def _via_gateway(config: ServingConfig) -> list[str]:
    data = DataLayer(config, seed=7, scrape=False)
    runner = web.AppRunner(build_app(data), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    chosen = []
    try:
        async with aiohttp.ClientSession() as session:
            for i, body in enumerate(_bodies()):
                _set_state(data.router, i)
                async with session.post(f"http://127.0.0.1:{port}/v1/completions",
                                        data=body,
                                        headers={"content-type": "application/json"}) as r:
                    await r.read()
                    assert r.status == 200, await r.text()
                    chosen.append(r.headers[SERVED])
    finally:
        await runner.cleanup()
    return chosen


async def _via_picker(config: ServingConfig, urls: dict[str, str]) -> list[str]:
    data = DataLayer(config, seed=7, scrape=False)
    picker = EndpointPicker(data.router)
    server, port = await start_grpc_server(ExternalProcessor(picker), "127.0.0.1", 0)
    chosen = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel, \
                aiohttp.ClientSession() as session:
            for i, body in enumerate(_bodies()):
                _set_state(data.router, i)
                envoy = EnvoyStream(channel)
                got = await envoy.request("/v1/completions", body)
                target = got["headers"]["x-gateway-destination-endpoint"]
                await envoy.respond(session, urls[target] + "/v1/completions",
                                    got["body"], target)
                chosen.append(target)
                # the picker ends the stream once it has seen the end of the response
                assert await envoy.call.read() is grpc.aio.EOF
                assert not any(ep.in_flight_requests for ep in data.router.pools[MODEL].pool)
    finally:
        await server.stop(None)
    return chosen


class _TestStateBench(VirtualBench):
    """The virtual benchmark's own loop, with the test's endpoint state in place of the
    engines' scrapes."""

    def _scrape(self, i: int, now: float) -> None:
        pass

    def _send(self, now: float, stage_index: int) -> None:
        _set_state(self.router, self._sent_total, scraped_at=now)
        super()._send(now, stage_index)


def _via_des() -> list[int]:
    items = [WorkItem(key=f"q{i}", prompt=p, prompt_tokens=len(encode(p)), max_tokens=4)
             for i, p in enumerate(_prompts())]
    bench = _TestStateBench(SimConfig(
        policy="llm-d", replicas=2, profile="tiny", model=MODEL, seed=7,
        workload=Workload("shells", items, {}),
        load=LoadSpec([Stage(concurrency=1, num_requests=N)])))
    result = bench.run()
    records = result.records[0]
    assert [r.error for r in records] == [None] * N
    return [bench.by_name[r.endpoint] for r in records]


async def test_gateway_picker_and_des_choose_the_same_endpoints(sim: list[str]) -> None:
    config = _config(sim)
    eps = DataLayer(config, scrape=False).router.pools[MODEL].pool
    urls = {ep.name: ep.url for ep in eps}
    index = {ep.name: i for i, ep in enumerate(eps)}  # the DES names its endpoints its own way
    via_gateway = [index[name] for name in await _via_gateway(config)]
    via_picker = [index[name] for name in await _via_picker(config, urls)]
    via_des = _via_des()
    assert via_gateway == via_picker == via_des
    assert len(set(via_gateway)) == 2, via_gateway  # the sequence exercises both replicas
