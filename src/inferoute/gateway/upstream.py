"""The proxy's HTTP/1.1 client to model servers: kept-alive connections, one send a request.

Every upstream request of the proxy is a POST whose body is already in memory, answered by a
response the proxy relays chunk by chunk. aiohttp's `ClientSession` does that and far more
(URL objects, cookies, redirects, tracing, timers per read); on the development VM it cost
about 0.3 ms of CPU per request, a third of what the gateway added to a request's latency.
This client is an asyncio `Protocol` per connection over httptools' C parser (the one uvicorn
uses): the request head and body leave in one write, the parser's callbacks fill the
response, and `readany()` hands the relay whatever body bytes have arrived; or, while the relay
keeps up, a `sink` it installs takes each chunk in the connection's callback, with no task
switch per chunk.

Connections are kept per (host, port, tls) and reused most-recent first. A connection idle
longer than `idle_ttl` (4 s, under the 5 s keep-alive of vLLM's server) is closed rather
than reused; if a reused connection dies before any byte of its response (the server closed
it as the request left), the request is sent once more on a new connection, as browsers and
aiohttp do for the same race. Received-but-unread body bytes are bounded: the connection stops
reading above `HIGH_WATER` and resumes when the relay has taken them.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable, Mapping

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

#: unread body bytes above which a connection stops reading from its socket
HIGH_WATER = 1 << 20
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class UpstreamConnectionError(ConnectionError):
    """The connection to the model server failed, closed early or spoke bad HTTP."""


class ConnectTimeout(TimeoutError):
    """No TCP (and TLS) connection within the connect timeout."""


class UpstreamResponse:
    """One response: `status`, `reason`, `headers`, then the body through `readany()`.

    Finish with `release()` (the connection goes back to the pool when the response was read
    to its end and the server keeps the connection alive) or `close()` (drops the connection:
    a model server takes that as an abort).
    """

    __slots__ = ("_buffered", "_chunks", "_conn", "_eof", "_exc", "_got_bytes", "_headers_done",
                 "_paused", "_pool", "_timer", "_waiter", "closed", "headers", "reason",
                 "sink", "status")

    def __init__(self, conn: _Connection, pool: UpstreamPool) -> None:
        self._conn = conn
        self._pool = pool
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS  # until they arrive
        self.closed = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._eof = False
        self._exc: BaseException | None = None
        self._headers_done = False
        self._got_bytes = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: takes body chunks as they arrive, while nothing is unread, instead of the reader:
        #: True when it took the chunk; False hands it and what follows to `readany` (and
        #: removes the sink); an exception it raises closes the connection and is what
        #: `readany` raises next
        self.sink: Callable[[bytes], bool] | None = None

    # -- fed by the connection -------------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _set_headers(self, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self.status, self.reason = status, reason
        self.headers = CIMultiDictProxy(headers)
        self._headers_done = True
        self._wake()

    def _feed(self, data: bytes) -> None:
        if self._exc is not None:  # failed: nothing after the failure is its body
            return
        sink = self.sink
        if sink is not None and not self._chunks:  # nothing unread: order is kept
            try:
                if sink(data):
                    return
            except Exception as exc:  # noqa: BLE001 - the reader raises it, as its own
                self.sink = None
                self._fail(exc)
                self.close()  # the server sees the abort
                return
            self.sink = None  # declined: the reader takes this chunk and what follows
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._eof = True
        self._cancel_timer()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None and not self._eof:
            self._exc = exc
        self._cancel_timer()
        self._wake()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _wait(self) -> None:
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        except BaseException:  # cancelled while waiting: the caller closes the response
            self._waiter = None
            raise

    async def _wait_headers(self) -> None:
        while not self._headers_done:
            if self._exc is not None:
                raise self._exc
            await self._wait()

    # -- the caller's side -------------------------------------------------------------------------
    async def readany(self) -> bytes:
        """Body bytes received so far (waiting for some if none are); b"" at the end.

        Raises `UpstreamConnectionError` when the connection broke before the end, and
        `TimeoutError` after the request's total timeout."""
        while True:
            if self._chunks:
                data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    self._conn.resume()
                return data
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            if self.closed:
                raise UpstreamConnectionError("the response was closed")
            await self._wait()

    def close(self) -> None:
        """Drop the connection (the server sees the disconnect); pending reads fail."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        self._conn.close()
        if not self._eof:
            self._fail(UpstreamConnectionError("the response was closed"))

    def release(self) -> None:
        """Done with the response: its connection is reused if it can be, else closed."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        conn = self._conn
        if self._eof and self._exc is None and conn.keep_alive and not conn.lost:
            self._pool._put(conn)
        else:
            conn.close()


class _Connection(asyncio.Protocol):
    """One kept-alive connection; feeds its current `UpstreamResponse`."""

    def __init__(self, key: tuple[str, int, bool], loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        #: the loop it runs on: `asyncio.get_running_loop()` costs a getpid() system call on
        #: Python 3.11, and a response waits for its body once per relayed event
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.lost = False
        self.keep_alive = False
        self.idle_since = 0.0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._informational = False
        self._delimited = False  # Content-Length or chunked: the end is in the stream

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:  # nothing was asked: a misbehaving server
            self.close()
            return
        resp._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            resp._fail(UpstreamConnectionError(f"bad HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        resp = self.response
        if resp is None or resp._eof:
            return
        if resp._headers_done and not self._delimited and exc is None:
            resp._finish()  # a body delimited by the connection's end
            self.keep_alive = False
        else:
            resp._fail(UpstreamConnectionError(
                "the model server closed the connection" + (f": {exc}" if exc else "")))

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self._informational = 100 <= status < 200
        if self._informational or self.response is None:
            return
        headers: CIMultiDict[str] = CIMultiDict()
        delimited = False
        for name, value in self._headers:
            key = name.decode("latin-1")
            headers.add(key, value.decode("utf-8", "surrogateescape"))
            low = key.lower()
            if low == "content-length" or (low == "transfer-encoding" and b"chunked" in
                                           value.lower()):
                delimited = True
        self._delimited = delimited
        self.response._set_headers(status, self._reason.decode("latin-1"), headers)

    def on_body(self, body: bytes) -> None:
        if self.response is not None and not self._informational:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self._informational:  # a 1xx before the real response
            self._informational = False
            return
        self.keep_alive = self.parser.should_keep_alive()
        if self.response is not None:
            self.response._finish()

    # -- used by the pool and the response ---------------------------------------------------------
    def start(self, response: UpstreamResponse, data: list[bytes]) -> None:
        self.response = response
        self.keep_alive = False
        assert self.transport is not None
        if sum(len(d) for d in data) < 65536:
            self.transport.write(b"".join(data))
        else:
            self.transport.writelines(data)

    def usable(self, now: float, idle_ttl: float) -> bool:
        return (not self.lost and self.transport is not None and
                not self.transport.is_closing() and now - self.idle_since < idle_ttl)

    def pause(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Kept-alive connections per (host, port, tls), at most `max_idle` idle ones each."""

    def __init__(self, *, connect_timeout: float = 5.0, idle_ttl: float = 4.0,
                 max_idle: int = 256) -> None:
        self.connect_timeout = connect_timeout
        self.idle_ttl = idle_ttl
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int, bool], deque[_Connection]] = {}
        self._ssl: ssl_module.SSLContext | None = None
        self._closed = False
        self.connections_opened = 0

    def _take(self, key: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have timed out
            if conn.usable(now, self.idle_ttl):
                return conn
            conn.close()
        if idle is not None and not idle:
            del self._idle[key]  # endpoints come and go: keep no empty entries
        return None

    def _put(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        conn.response = None
        conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(conn.key, deque())
        idle.append(conn)
        while len(idle) > self.max_idle:
            idle.popleft().close()

    async def _open(self, key: tuple[str, int, bool]) -> _Connection:
        host, port, tls = key
        ctx = None
        if tls:
            if self._ssl is None:
                self._ssl = ssl_module.create_default_context()
            ctx = self._ssl
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(key, loop), host,
                                                       port, ssl=ctx)
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {host}:{port} within "
                                 f"{self.connect_timeout:g}s") from None
        self.connections_opened += 1
        return conn

    async def post(self, host: str, port: int, path: str, headers: Mapping[str, str],
                   body: bytes, *, tls: bool = False,
                   total_timeout: float | None = None) -> UpstreamResponse:
        """Send a POST and wait for the response's status and headers.

        `headers` must not hold Host, Content-Length or hop-by-hop fields (the proxy filters
        them). Raises `ConnectTimeout`, `OSError` (refused, unreachable...) or
        `UpstreamConnectionError`. Cancelled while waiting, the connection is dropped.
        """
        key = (host, port, tls)
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"POST {path} HTTP/1.1", f"Host: {hostport}"]
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                continue  # cannot be sent safely (the server-side parser refuses them anyway)
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        data = ["\r\n".join(lines).encode("utf-8", "surrogateescape"), body]
        for attempt in range(2):
            conn = self._take(key)
            reused = conn is not None
            if conn is None:
                conn = await self._open(key)
            resp = UpstreamResponse(conn, self)
            if total_timeout is not None:
                resp._timer = conn.loop.call_later(
                    total_timeout, _expire, resp, total_timeout)
            conn.start(resp, data)
            try:
                await resp._wait_headers()
            except UpstreamConnectionError:
                resp.close()
                if reused and attempt == 0 and not resp._got_bytes:
                    continue  # the kept-alive connection was closed under us: once more
                raise
            except BaseException:
                resp.close()
                raise
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close every idle connection; responses in progress close theirs when released."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _expire(resp: UpstreamResponse, seconds: float) -> None:
    resp._timer = None
    resp._fail(TimeoutError(f"the request took longer than {seconds:g}s"))
    resp.close()
