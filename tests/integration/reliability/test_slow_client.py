"""A client that reads slower than its replica streams (issue 18, item 8: every buffer is
bounded; issue 17, item 6: the relay writes a stream's chunks from the upstream connection's
callback while the client keeps up, and through aiohttp's flow control when it does not).

The replica streams large events; the client reads nothing until the gateway stops reading
from the replica, then everything. What must hold: the gateway holds a bounded amount for a
client that does not read (its upstream connection is paused, so the replica's writes wait),
and the client then gets every event, once, in order, and the stream's end. In-process
stand-in replica and the real `serve()` on 127.0.0.1; the test waits for the pause (or the
replica's end), never for a time.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from inferoute.gateway import upstream
from inproc import Replica, start_gateway

pytestmark = pytest.mark.timeout(60)

#: text per event: large, so that a few MiB fill every buffer on the way
EVENT_TEXT = 16 * 1024
#: what the replica streams at most before the test calls the gateway unbounded
LIMIT_BYTES = 64 * 1024 * 1024


class EndlessReplica(Replica):
    """Streams numbered events until `stop` is set (or LIMIT_BYTES went out), then ends the
    stream; `ended` is set when it has."""

    def __init__(self) -> None:
        super().__init__()
        self.stop = asyncio.Event()
        self.ended = asyncio.Event()
        self.sent = 0

    async def generate(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        written = 0
        while not self.stop.is_set() and written < LIMIT_BYTES:
            text = f"{self.sent:08d}".ljust(EVENT_TEXT, "x")
            event = orjson.dumps({"id": "c", "object": "text_completion", "model": "m",
                                  "choices": [{"index": 0, "text": text,
                                               "finish_reason": None}]})
            chunk = b"data: " + event + b"\n\n"
            await resp.write(chunk)  # waits while the gateway does not read
            written += len(chunk)
            self.sent += 1
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self.ended.set()
        return resp


async def test_a_client_that_does_not_read_holds_the_replica_back_and_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paused = asyncio.Event()
    pause = upstream._Connection.pause

    def pause_and_tell(conn: upstream._Connection) -> None:
        paused.set()
        pause(conn)

    monkeypatch.setattr(upstream._Connection, "pause", pause_and_tell)
    rep = await EndlessReplica().start()
    gw = await start_gateway([rep], tmp_path)
    try:
        async with gw.session.post(gw.url + "/v1/completions", json={
                "model": "m", "prompt": "hello", "max_tokens": 4000, "stream": True}) as r:
            assert r.status == 200
            # the client reads nothing: the relay waits for it, the response's unread bytes
            # reach their bound and the gateway stops reading the replica (or, unbounded, it
            # takes all LIMIT_BYTES and the replica ends)
            first = asyncio.ensure_future(paused.wait())
            await asyncio.wait([first, asyncio.ensure_future(rep.ended.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            assert first.done(), f"the gateway took all {rep.sent} events for a client " \
                "that read none"
            rep.stop.set()
            body = await r.read()
        events = [line.removeprefix(b"data: ") for line in body.split(b"\n\n") if line]
        assert events[-1] == b"[DONE]"
        numbers = [int(json.loads(e)["choices"][0]["text"][:8]) for e in events[:-1]]
        assert numbers == list(range(rep.sent))
    finally:
        await gw.close()
        await rep.close()
