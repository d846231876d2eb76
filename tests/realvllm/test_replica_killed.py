"""A real replica killed mid-stream: the client's stream ends cleanly with an error event and
`[DONE]` (docs/reliability.md), and the next requests are served by the survivor.

It kills one of the session's replicas, so the conftest runs it after every other test here."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import orjson
import pytest

from .conftest import MODEL, Engines, pool, start_gateway, words

SERVED = "x-gateway-destination-endpoint-served"


@pytest.mark.kills_replica
async def test_kill_a_replica_mid_stream(engines: Engines, tmp_path: Path):
    gw = start_gateway(tmp_path, pool(engines, "llm-d"))
    try:
        body = {"model": MODEL, "prompt": words(90, 50), "max_tokens": 1500, "stream": True,
                "ignore_eos": True}
        async with aiohttp.ClientSession() as s:
            async with s.post(gw.url + "/v1/completions", json=body) as r:
                assert r.status == 200
                victim = engines.by_name(r.headers[SERVED])
                events = []
                async for line in r.content:
                    if line.startswith(b"data: "):
                        events.append(line[6:].strip())
                        if len(events) == 3:
                            victim.child.stop(signal.SIGKILL)
                assert not victim.alive()
            assert events[-1] == b"[DONE]", events[-3:]
            err = orjson.loads(events[-2])["error"]
            assert err["code"] == "bad_gateway" and err["message"], err
            # generated tokens came before the error, and nothing after [DONE]
            assert all(b'"choices"' in e for e in events[:3])

            survivor = next(r for r in engines.replicas if r is not victim)
            for i in range(4):
                async with s.post(gw.url + "/v1/completions",
                                  json={"model": MODEL, "prompt": words(91 + i, 20),
                                        "max_tokens": 2}) as r:
                    assert r.status == 200, await r.text()
                    assert r.headers[SERVED] == survivor.name
                    await r.read()
    finally:
        gw.stop()
    assert "Traceback" not in gw.log(), gw.log()
