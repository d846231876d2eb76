"""`inferoute epp --autoscaling`: the picker exports `inferoute_pool_desired_replicas`, fed by the
streams it routes (Envoy's messages in Envoy's order, responses from `inferoute sim`)."""

from __future__ import annotations

import aiohttp
import grpc
import orjson

CHAT = "/v1/chat/completions"
DEST = "x-gateway-destination-endpoint"


async def test_picker_exports_the_gauge_fed_by_its_streams(sim, kit):
    p = kit.start_epp(*sim, extra=("--autoscaling", "{ttftTarget: 1s, minReplicas: 0}"))
    try:
        port = p.ports["metrics"]
        await kit.wait_ready(port)
        gauge = "inferoute_pool_desired_replicas"
        # no request yet: minReplicas
        assert kit.metric(await kit.scrape(port), gauge, name=kit.MODEL) == 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{p.ports['grpc']}") as channel, \
                aiohttp.ClientSession() as session:
            for i in range(3):
                body = orjson.dumps({"model": kit.MODEL, "max_tokens": 8, "stream": True,
                                     "messages": [{"role": "user", "content": f"hi {i}"}]})
                s = kit.EnvoyStream(channel)
                ans = await s.request(CHAT, body)
                dest = ans["headers"][DEST]
                relayed = await s.respond(session, f"http://{dest}{CHAT}", ans["body"],
                                          served=dest)
                assert b"data: [DONE]" in relayed
                # the picker ends the stream once it has seen the response's end: only then
                # is the request over in its books (a scrape before that raced the finish)
                assert await s.call.read() is grpc.aio.EOF
        # measured now: three light streams need one replica (the real count, a fraction of
        # one, which the HPA rounds up)
        assert 0 < kit.metric(await kit.scrape(port), gauge, name=kit.MODEL) <= 1
    finally:
        assert p.stop(timeout=15) == 0, p.log()
