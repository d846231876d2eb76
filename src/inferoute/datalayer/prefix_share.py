"""Scale-out: gateway replicas share approximate-prefix routing and in-flight load via Redis.

With the approximate `prefix-cache-scorer`, each replica learns only from its own routing
decisions, so N replicas behind a plain load balancer would each know 1/N of where prompts went.
`PrefixShare` makes them share:

- *index inserts*: the scorer's `PrefixIndex` is swapped for a `SharedPrefixIndex`, which records
  every local `insert`/`discard` in a bounded outbox. A writer task appends the outbox to a Redis
  stream (`{prefix}prefix:{model}`, capped at `maxlen` entries with `XADD MAXLEN ~`); a reader
  task applies the other replicas' entries (`XREAD BLOCK`). A replica that starts late reads the
  capped stream from its beginning, so it rebuilds the recent index. Entries are msgpack lists of
  `["i", endpoint, hashes, capacity]` / `["d", endpoint, hashes]` tagged with the origin replica.
- *in-flight load*: every `inflight_interval` each replica writes its own per-endpoint in-flight
  requests and prompt tokens to a hash (`{prefix}inflight:{model}:{replica}`, expiring after
  `inflight_ttl`, so a dead replica's load fades out) and adds the other replicas' totals to its
  `Endpoint.in_flight_requests` / `in_flight_tokens` (as an offset it adjusts by the change, so
  local dispatch/finish bookkeeping keeps working).

With precise scoring every replica subscribes to the engines' KV events itself; what it cannot
see is the other replicas' *speculative* entries (a request just routed, before its engine
reports the blocks). `share_scorer_index` on a precise scorer gives it a `SharedKVIndex`, which
shares those speculative entries on the same stream (`["s", endpoint, keys]`, withdrawn with
`["x", endpoint, keys]`), applied with the receiver's own clock and TTL.

Redis failures never fail a request: the tasks log, back off and retry; the outbox drops its
oldest entries when full (`dropped` counts them); routing continues on local knowledge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from typing import Any, Callable, Iterable, Sequence

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import DataError, RedisError
from redis.typing import EncodableT, FieldT

from ..aiotasks import cancel_tasks
from ..core.endpoint import Endpoint
from ..core.kvindex import KVBlockIndex
from ..core.plugins.prefixindex import PrefixIndex

log = logging.getLogger("inferoute.prefix_share")

Op = tuple[Any, ...]


class _Outbox:
    """A bounded queue of local changes waiting to be published."""

    def _init_outbox(self, max_outbox: int) -> None:
        self.outbox: deque[Op] = deque(maxlen=max_outbox)
        self.dropped = 0

    def _record(self, op: Op) -> None:
        if len(self.outbox) == self.outbox.maxlen:
            self.dropped += 1
        self.outbox.append(op)

    def drain(self, limit: int = 10_000) -> list[Op]:
        out: list[Op] = []
        while self.outbox and len(out) < limit:
            out.append(self.outbox.popleft())
        return out


class SharedPrefixIndex(_Outbox, PrefixIndex):
    """A `PrefixIndex` that records local changes for other replicas (bounded outbox)."""

    def __init__(self, max_outbox: int = 100_000) -> None:
        PrefixIndex.__init__(self)
        self._init_outbox(max_outbox)

    def insert(self, name: str, hashes: Sequence[int], capacity: int) -> list[int]:
        added = super().insert(name, hashes, capacity)
        self._record(("i", name, list(hashes), capacity))
        return added

    def discard(self, name: str, hashes: Iterable[int]) -> None:
        hashes = list(hashes)
        super().discard(name, hashes)
        self._record(("d", name, hashes))

    def apply_remote(self, op: Sequence[Any], now: float = 0.0) -> None:
        """Apply another replica's change (not recorded again). Malformed ops raise ValueError."""
        if len(op) == 4 and op[0] == "i" and isinstance(op[1], str):
            PrefixIndex.insert(self, op[1], [int(h) for h in op[2]], max(1, int(op[3])))
        elif len(op) == 3 and op[0] == "d" and isinstance(op[1], str):
            PrefixIndex.discard(self, op[1], [int(h) for h in op[2]])
        else:
            raise ValueError(f"not a prefix-index op: {op!r}"[:200])


class SharedKVIndex(_Outbox, KVBlockIndex):
    """A precise `KVBlockIndex` whose speculative entries are shared with other replicas."""

    def __init__(self, *, max_outbox: int = 100_000, **kw: Any) -> None:
        KVBlockIndex.__init__(self, **kw)
        self._init_outbox(max_outbox)

    def add_speculative(self, name: str, keys: Sequence[int], now: float) -> int:
        added = super().add_speculative(name, keys, now)
        if added:
            self._record(("s", name, list(keys)))
        return added

    def discard_speculative(self, name: str, keys: Iterable[int]) -> None:
        keys = list(keys)
        super().discard_speculative(name, keys)
        self._record(("x", name, keys))

    def apply_remote(self, op: Sequence[Any], now: float = 0.0) -> None:
        """Apply another replica's prediction at local time `now`; ValueError when malformed."""
        if len(op) == 3 and op[0] == "s" and isinstance(op[1], str):
            KVBlockIndex.add_speculative(self, op[1], [int(k) for k in op[2]], now)
        elif len(op) == 3 and op[0] == "x" and isinstance(op[1], str):
            KVBlockIndex.discard_speculative(self, op[1], [int(k) for k in op[2]])
        else:
            raise ValueError(f"not a speculative-index op: {op!r}"[:200])


def share_scorer_index(scorer: Any, max_outbox: int = 100_000,
                       ) -> SharedPrefixIndex | SharedKVIndex:
    """Give a `prefix-cache-scorer` (its index) or a `precise-prefix-cache-scorer` (its
    speculative entries) a shared index. Call before it routes, and for a precise scorer before
    its KV-event subscribers are created (they feed `scorer.index`)."""
    index = scorer.index
    if isinstance(index, (SharedPrefixIndex, SharedKVIndex)):
        return index
    if len(index) or index.endpoints():
        raise ValueError("share the prefix index before the scorer has learned anything")
    shared: SharedPrefixIndex | SharedKVIndex
    if isinstance(index, KVBlockIndex):
        shared = SharedKVIndex(max_outbox=max_outbox, capacity=index.capacity,
                               speculative_ttl=index.speculative_ttl,
                               max_speculative=index.max_speculative,
                               lora_names=index.lora_names)
    else:
        shared = SharedPrefixIndex(max_outbox)
    scorer.index = shared
    return shared


class PrefixShare:
    """Shares one pool's prefix-index inserts and in-flight load with the other replicas.

    `await start()` in the running loop, `await stop()` at exit. `endpoints` returns the pool's
    current endpoints (for in-flight sharing); `index` may be None (load sharing only). The
    reader blocks `block_ms` per XREAD: the client's socket timeout must be longer.
    """

    def __init__(self, client: aioredis.Redis, model: str,
                 index: SharedPrefixIndex | SharedKVIndex | None,
                 endpoints: Callable[[], Iterable[Endpoint]] | None = None, *,
                 prefix: str = "inferoute:", replica_id: str | None = None,
                 maxlen: int = 10_000, flush_interval: float = 0.02,
                 inflight_interval: float = 0.1, inflight_ttl: float = 2.0,
                 retry_delay: float = 0.5, block_ms: int = 200,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.model = model
        self.index = index
        self.endpoints = endpoints
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.stream = f"{prefix}prefix:{model}"
        self.replicas_key = f"{prefix}replicas:{model}"
        self.inflight_prefix = f"{prefix}inflight:{model}:"
        self.maxlen = maxlen
        self.flush_interval = flush_interval
        self.inflight_interval = inflight_interval
        self.inflight_ttl = inflight_ttl
        self.retry_delay = retry_delay
        self.block_ms = block_ms
        self.clock = clock  # the scheduler's clock: remote predictions expire in local time
        self._origin = self.replica_id.encode()
        #: the last entry read; "0" reads the capped stream from its start: late joiners catch up
        self._last_id: bytes | str = "0"
        self._remote: dict[str, tuple[int, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.published = self.applied = self.errors = self.malformed = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.index is not None:
            self._tasks.append(loop.create_task(self._guard(self._write_loop, "write")))
            self._tasks.append(loop.create_task(self._guard(self._read_loop, "read")))
        if self.endpoints is not None:
            self._tasks.append(loop.create_task(self._guard(self._inflight_loop, "in-flight")))

    async def stop(self) -> None:
        self._stopping = True  # the loops end even if a cancel is lost in the redis client
        await cancel_tasks(*self._tasks)
        self._tasks.clear()
        # best effort, bounded: the others drop this replica's load when its hash expires anyway
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self._withdraw(), 1.0)

    async def _withdraw(self) -> None:
        await self.client.zrem(self.replicas_key, self.replica_id)
        await self.client.delete(self.inflight_prefix + self.replica_id)

    async def _guard(self, loop_fn: Callable[[], Any], what: str) -> None:
        while not self._stopping:
            try:
                await loop_fn()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._stopping:  # a cancellation the client turned into an error
                    return
                self.errors += 1
                log.warning("prefix share (%s, %s): %s; retrying", self.model, what, exc)
                await asyncio.sleep(self.retry_delay)

    # -- index inserts ---------------------------------------------------------------------------
    async def flush(self) -> int:
        """Publish the outbox now (in chunks, one stream entry each); returns ops published."""
        assert self.index is not None
        sent = 0
        while self.index.outbox:
            ops = self.index.drain()
            payload = msgpack.packb(ops, use_bin_type=True)
            try:
                await self.client.xadd(self.stream, {"o": self._origin, "b": payload},
                                       maxlen=self.maxlen, approximate=True)
            except BaseException:
                self.index.outbox.extendleft(reversed(ops))  # keep them for the retry
                raise
            sent += len(ops)
        self.published += sent
        return sent

    async def _write_loop(self) -> None:
        while not self._stopping:
            await self.flush()
            await asyncio.sleep(self.flush_interval)

    async def _read_loop(self) -> None:
        while not self._stopping:
            await self.poll(block_ms=self.block_ms)

    async def poll(self, block_ms: int | None = None) -> int:
        """Apply the other replicas' new stream entries; returns ops applied."""
        assert self.index is not None
        resp = await self.client.xread({self.stream: self._last_id}, count=500, block=block_ms)
        if not isinstance(resp, list):  # RESP3 maps stream -> entries, in shapes that vary
            raise DataError(f"XREAD replied a {type(resp).__name__}: prefix sharing reads RESP2 "
                            "replies (a list of [stream, entries]); connect without protocol=3")
        n = 0
        for _stream, entries in resp:
            for entry_id, fields in entries:
                self._last_id = entry_id
                if fields.get(b"o") == self._origin:
                    continue
                try:
                    ops = msgpack.unpackb(fields[b"b"], raw=False, strict_map_key=False)
                    now = self.clock()
                    for op in ops:
                        self.index.apply_remote(op, now)
                        n += 1
                except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
                    self.malformed += 1
                    log.warning("prefix share (%s): skipping a malformed entry: %s",
                                self.model, exc)
        self.applied += n
        return n

    # -- in-flight load --------------------------------------------------------------------------
    async def sync_inflight(self) -> None:
        """Publish this replica's in-flight counts and add the others' to the endpoints."""
        assert self.endpoints is not None
        eps = list(self.endpoints())
        mine: dict[FieldT, EncodableT] = {}  # the client's key and value types (invariant)
        for ep in eps:
            rr, rt = self._remote.get(ep.name, (0, 0))
            mine[ep.name] = (f"{max(0, ep.in_flight_requests - rr)},"
                             f"{max(0, ep.in_flight_tokens - rt)}")
        key = self.inflight_prefix + self.replica_id
        ttl_ms = int(self.inflight_ttl * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(key)
        if mine:
            pipe.hset(key, mapping=mine)
            pipe.pexpire(key, ttl_ms)
        pipe.zadd(self.replicas_key, {self.replica_id: 0})
        pipe.zrange(self.replicas_key, 0, -1)
        *_, members = await pipe.execute()
        others = [m.decode() for m in members if m.decode() != self.replica_id]
        totals: dict[str, list[int]] = {}
        if others:
            pipe = self.client.pipeline(transaction=False)
            for rid in others:
                pipe.hgetall(self.inflight_prefix + rid)
            gone = []
            for rid, fields in zip(others, await pipe.execute()):
                if not fields:
                    gone.append(rid)
                    continue
                for name, value in fields.items():
                    try:
                        r, t = (int(x) for x in value.split(b",", 1))
                    except ValueError:
                        continue
                    acc = totals.setdefault(name.decode(), [0, 0])
                    acc[0] += r
                    acc[1] += t
            if gone:  # expired: that replica stopped publishing
                await self.client.zrem(self.replicas_key, *gone)
        for ep in eps:
            new = totals.get(ep.name, (0, 0))
            old = self._remote.get(ep.name, (0, 0))
            ep.in_flight_requests = max(0, ep.in_flight_requests + new[0] - old[0])
            ep.in_flight_tokens = max(0, ep.in_flight_tokens + new[1] - old[1])
            self._remote[ep.name] = (new[0], new[1])

    def remote_in_flight(self, name: str) -> tuple[int, int]:
        """(requests, prompt tokens) the other replicas have in flight at endpoint `name`."""
        return self._remote.get(name, (0, 0))

    async def _inflight_loop(self) -> None:
        while not self._stopping:
            await self.sync_inflight()
            await asyncio.sleep(self.inflight_interval)
