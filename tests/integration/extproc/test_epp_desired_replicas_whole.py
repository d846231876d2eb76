"""`inferoute epp --autoscaling` with clients that do not stream: the picker sees each answer
only at its end, and the gauge is measured from the answers' ends."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import orjson

from inferoute.procs import free_port_range

COMPLETIONS = "/v1/completions"
DEST = "x-gateway-destination-endpoint"
GAUGE = "inferoute_pool_desired_replicas"


async def test_picker_measures_answers_that_are_not_streamed(kit):
    # a Qwen3-32B profile's speeds (a tiny model's steps are lost in the machine's noise)
    port = free_port_range(2)
    sim = kit.start(["sim", "--model", kit.MODEL, "--port", str(port), "--replicas", "2",
                     "--profile", "qwen3-32b-2xh100"], "serving")
    try:
        await _measured(kit, port)
    finally:
        sim.stop(timeout=15)


async def _measured(kit, port: int) -> None:
    p = kit.start_epp(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}",
                      extra=("--autoscaling", "{ttftTarget: 1s, minReplicas: 0}"))
    try:
        metrics = p.ports["metrics"]
        await kit.wait_ready(metrics)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{p.ports['grpc']}") as channel, \
                aiohttp.ClientSession() as session:

            async def ask(i: int) -> None:
                words = " ".join(f"w{i}x{k}" for k in range(20 + 380 * (i % 5) // 4))
                body = orjson.dumps({"model": kit.MODEL, "prompt": words, "ignore_eos": True,
                                     "max_tokens": 4 + 56 * (i % 3) // 2})
                s = kit.EnvoyStream(channel)
                ans = await s.request(COMPLETIONS, body)
                dest = ans["headers"][DEST]
                relayed = await s.respond(session, f"http://{dest}{COMPLETIONS}", ans["body"],
                                          served=dest)
                assert orjson.loads(relayed)["usage"]["completion_tokens"] > 0
                assert await s.call.read() is grpc.aio.EOF  # over in the picker's books

            values = []
            for round_ in range(40):  # until measured (a few rounds), 1-8 requests at a time
                width = 1 + round_ % 8
                await asyncio.gather(*(ask(round_ * 8 + k) for k in range(width)))
                values.append(kit.metric(await kit.scrape(metrics), GAUGE, name=kit.MODEL))
                if 0 < values[-1] < 1:
                    break
        # the ready count (2) it held unmeasured, then the real count a light load needs
        assert 0 < values[-1] < 1, values
    finally:
        assert p.stop(timeout=15) == 0, p.log()
