"""The proxy's upstream HTTP/1.1 client against raw asyncio servers on 127.0.0.1 that answer
exactly as scripted: reuse, chunked and close-delimited bodies, a kept-alive connection the
server closed, failures mid-body, timeouts, bad HTTP, back-pressure and 1xx responses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from inferoute.gateway.upstream import (HIGH_WATER, ConnectTimeout, UpstreamConnectionError,
                                        UpstreamPool)

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class Server:
    """Reads each request (head + Content-Length body) and lets `handler` answer it; the
    handler returns False to close the connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.handler(body, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        srv = Server(handler)
        srv.server = await asyncio.start_server(srv._serve, "127.0.0.1", 0)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        assert srv.server is not None
        srv.server.close()


@pytest.fixture
def pool() -> Iterator[UpstreamPool]:
    p = UpstreamPool()
    yield p
    p.close()


def reply(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: "
            f"{len(body)}\r\n{extra}\r\n").encode() + body


def stepped(events: list[bytes], gates: list[asyncio.Event]) -> Handler:
    """A handler that answers with a chunked event stream: each of `events` in its own chunk,
    after the i-th of which it waits for `gates[i]` (if there is one), then the end."""
    async def handler(body: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for i, event in enumerate(events):
            writer.write(b"%x\r\n%b\r\n" % (len(event), event))
            await writer.drain()
            if i < len(gates):
                await gates[i].wait()
        writer.write(b"0\r\n\r\n")
        return True

    return handler


def sends(data: bytes, keep: bool = True) -> Handler:
    """A handler that answers every request with `data` (closing afterwards unless `keep`)."""
    async def handler(body: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        return keep

    return handler


async def read_all(resp) -> bytes:  # type: ignore[no-untyped-def]
    parts = []
    while chunk := await resp.readany():
        parts.append(chunk)
    return b"".join(parts)


async def test_posts_reuse_one_connection_and_send_what_was_asked(serve, pool):
    async def echo(body, reader, writer):
        writer.write(reply(b'{"echo": ' + body + b"}", extra="X-Served: yes\r\n"))
        return True

    srv = await serve(echo)
    for i in range(5):
        resp = await pool.post("127.0.0.1", srv.port, "/v1/completions",
                               {"Content-Type": "application/json", "X-Request-Id": f"r{i}"},
                               b'{"n": %d}' % i)
        assert (resp.status, resp.reason) == (200, "OK")
        assert resp.headers["x-served"] == "yes"  # case-insensitive
        assert await read_all(resp) == b'{"echo": {"n": %d}}' % i
        resp.release()
    assert srv.connections == 1 and pool.connections_opened == 1
    first = srv.requests[0]
    assert first.startswith(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nX-Request-Id: r0\r\n" in first and b"\r\nContent-Length: 8\r\n" in first


async def test_header_values_with_line_breaks_are_not_sent(serve, pool):
    async def ok(body, reader, writer):
        writer.write(reply(b"{}"))
        return True

    srv = await serve(ok)
    resp = await pool.post("127.0.0.1", srv.port, "/x", {"X-Evil": "a\r\nInjected: 1",
                                                         "X-Fine": "b"}, b"")
    resp.release()
    assert b"Injected" not in srv.requests[0] and b"X-Fine: b" in srv.requests[0]


async def test_a_chunked_stream_arrives_piece_by_piece(serve, pool):
    go = asyncio.Event()
    srv = await serve(stepped([b"data: a\n\n", b"data: b\n\n"], [go]))
    resp = await pool.post("127.0.0.1", srv.port, "/s", {}, b"{}")
    assert await resp.readany() == b"data: a\n\n"  # before the rest exists
    go.set()
    assert await read_all(resp) == b"data: b\n\n"
    resp.release()
    resp2 = await pool.post("127.0.0.1", srv.port, "/s", {}, b"{}")  # reused after the end
    resp2.close()
    assert pool.connections_opened == 1


async def test_a_sink_takes_chunks_until_it_declines_then_the_reader_gets_the_rest(serve,
                                                                                   pool):
    """`sink`: chunks go to it while it takes them; the one it declines and every later one
    go to `readany`, in order."""
    steps = [asyncio.Event() for _ in range(4)]
    srv = await serve(stepped([b"data: %d\n\n" % i for i in range(4)], steps))
    resp = await pool.post("127.0.0.1", srv.port, "/s", {}, b"{}")
    took: list[bytes] = []
    taking = True

    def sink(data: bytes) -> bool:
        if taking:
            took.append(data)
        return taking

    assert await resp.readany() == b"data: 0\n\n"
    resp.sink = sink
    steps[0].set()
    while not took:  # the next chunk goes to the sink; the reader sees nothing of it
        await asyncio.sleep(0.001)
    assert took == [b"data: 1\n\n"] and resp.sink is sink
    taking = False
    steps[1].set()  # declined: the reader gets it, and the sink is off
    assert await resp.readany() == b"data: 2\n\n" and resp.sink is None
    steps[2].set()
    assert await resp.readany() == b"data: 3\n\n"
    steps[3].set()
    assert await read_all(resp) == b"" and took == [b"data: 1\n\n"]
    resp.release()



async def test_a_sink_that_raises_fails_the_response_and_drops_the_rest(serve, pool):
    """The exception is what `readany` raises, even where more of the body came in the same
    read; the connection is closed (the server sees an abort) and not reused."""
    go = asyncio.Event()

    async def stream(body, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 0\n\n\r\n")
        await writer.drain()
        await go.wait()
        writer.write(b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n")  # one read
        await writer.drain()
        await reader.read()  # until the client closes
        return False

    def broken(data: bytes) -> bool:
        raise ValueError("a bug in the sink")

    srv = await serve(stream)
    resp = await pool.post("127.0.0.1", srv.port, "/s", {}, b"{}")
    assert await resp.readany() == b"data: 0\n\n"
    resp.sink = broken
    go.set()
    with pytest.raises(ValueError, match="a bug in the sink"):
        await resp.readany()
    assert resp.sink is None and resp.closed
    with pytest.raises(ValueError):  # nothing after the failure is body
        await resp.readany()
    resp.release()
    again = await pool.post("127.0.0.1", srv.port, "/s", {}, b"{}")
    again.close()
    assert srv.connections == 2


async def test_a_kept_alive_connection_the_server_closed_is_retried_once(serve, pool):
    async def once(body, reader, writer):
        writer.write(reply(b"{}"))  # says keep-alive (HTTP/1.1 default) ...
        await writer.drain()
        return False  # ... and closes anyway, as an idle timeout would

    srv = await serve(once)
    for _ in range(3):
        resp = await pool.post("127.0.0.1", srv.port, "/x", {}, b"{}")
        assert await read_all(resp) == b"{}"
        resp.release()
    assert srv.connections == 3  # every request got its answer on a fresh connection


async def test_connections_idle_past_their_ttl_are_not_reused(serve):
    async def ok(body, reader, writer):
        writer.write(reply(b"{}"))
        return True

    srv = await serve(ok)
    pool = UpstreamPool(idle_ttl=0.05)
    (await pool.post("127.0.0.1", srv.port, "/x", {}, b"")).release()
    await asyncio.sleep(0.1)
    (await pool.post("127.0.0.1", srv.port, "/x", {}, b"")).release()
    assert pool.connections_opened == 2
    pool.close()


async def test_refused_and_unanswered_connections_fail_cleanly(serve, pool):
    async def never(body, reader, writer):
        await asyncio.sleep(3600)
        return False

    srv = await serve(never)
    port = srv.port
    with pytest.raises(TimeoutError):
        await pool.post("127.0.0.1", port, "/x", {}, b"", total_timeout=0.1)
    srv.server.close()  # type: ignore[union-attr]
    await srv.server.wait_closed()  # type: ignore[union-attr]
    with pytest.raises(OSError):
        await pool.post("127.0.0.1", port, "/x", {}, b"")


async def test_connect_timeout_has_its_own_error():
    pool = UpstreamPool(connect_timeout=0.05)
    # a TEST-NET-1 address (RFC 5737): the SYN goes nowhere, or the route is refused at once
    with pytest.raises((ConnectTimeout, OSError)):
        await pool.post("192.0.2.1", 9, "/x", {}, b"")


async def test_a_body_cut_short_raises_and_is_not_reused(serve, pool):
    srv = await serve(sends(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
                            keep=False))
    resp = await pool.post("127.0.0.1", srv.port, "/x", {}, b"")
    got = await resp.readany()
    assert got == b"only this"
    with pytest.raises(UpstreamConnectionError):
        await resp.readany()
    resp.release()  # not reusable: closed, not pooled
    assert pool._idle == {}


async def test_a_body_delimited_by_the_connection_end_is_complete(serve, pool):
    srv = await serve(sends(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it",
                            keep=False))
    resp = await pool.post("127.0.0.1", srv.port, "/x", {}, b"")
    assert await read_all(resp) == b"all of it"
    resp.release()
    assert pool._idle == {}


async def test_bad_http_is_an_upstream_error(serve, pool):
    srv = await serve(sends(b"SMTP READY\r\n\r\n"))
    with pytest.raises(UpstreamConnectionError, match="bad HTTP"):
        await pool.post("127.0.0.1", srv.port, "/x", {}, b"")


async def test_a_slow_reader_pauses_the_socket_and_gets_every_byte(serve, pool):
    big = bytes(range(256)) * (3 * HIGH_WATER // 256)

    srv = await serve(sends(reply(big)))
    resp = await pool.post("127.0.0.1", srv.port, "/x", {}, b"")
    await asyncio.sleep(0.2)  # let it fill: reading stops above the high-water mark
    assert resp._buffered <= HIGH_WATER + 256 * 1024 and resp._paused
    assert await read_all(resp) == big
    resp.release()


async def test_close_ends_a_pending_read(serve, pool):
    async def hang(body, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3600)
        return False

    srv = await serve(hang)
    resp = await pool.post("127.0.0.1", srv.port, "/x", {}, b"")
    read = asyncio.ensure_future(resp.readany())
    await asyncio.sleep(0.05)
    resp.close()
    with pytest.raises(UpstreamConnectionError):
        await asyncio.wait_for(read, 2)


async def test_an_informational_response_is_skipped(serve, pool):
    async def early_hints(body, reader, writer):
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + reply(b"{}"))
        return True

    srv = await serve(early_hints)
    resp = await pool.post("127.0.0.1", srv.port, "/x", {}, b"")
    assert resp.status == 200 and await read_all(resp) == b"{}"
    resp.release()
