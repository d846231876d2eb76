"""The picker knows what each replica serves, as the gateway does: a replica that lists another
model on its `/v1/models` is not picked (the shared `datalayer/endpoint_health.py`), rather
than tried, answered 404 and skipped for a while."""

from __future__ import annotations

import re

import aiohttp
import grpc
import orjson

from inferoute.procs import free_port_range

CHAT = "/v1/chat/completions"
DEST = "x-gateway-destination-endpoint"


async def test_a_replica_serving_another_model_is_never_picked(sim, kit) -> None:
    port = free_port_range(1)
    other = kit.start(["sim", "--model", "other-model", "--port", str(port), "--replicas", "1",
                       "--profile", "tiny"], "serving")
    wrong = f"127.0.0.1:{port}"
    epp = kit.start_epp(sim[0], f"http://{wrong}")
    try:
        # its /v1/models is read at start; the picker says what it found
        epp.wait_for_line(".*" + re.escape(f"endpoint {wrong} serves 'other-model', not the "
                                           f"pool's model '{kit.MODEL}'"), timeout=60)
        await kit.wait_ready(epp.ports["metrics"], n=1, timeout=60)
        picked = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.ports['grpc']}") as ch, \
                aiohttp.ClientSession() as session:
            for i in range(6):
                s = kit.EnvoyStream(ch)
                body = orjson.dumps({"model": kit.MODEL, "max_tokens": 2, "messages": [
                    {"role": "user", "content": f"question {i}"}]})
                ans = await s.request(CHAT, body)
                dest = ans["headers"][DEST]
                await s.respond(session, f"http://{dest}{CHAT}", ans["body"], dest)
                picked.append(dest)
        assert picked == [sim[0].removeprefix("http://")] * 6
        samples = await kit.scrape(epp.ports["metrics"])
        assert kit.metric(samples, "inference_pool_ready_pods", name=kit.MODEL) == 1
    finally:
        assert epp.stop(timeout=15) == 0, epp.log()
        other.stop(timeout=15)
