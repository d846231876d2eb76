"""KV-event subscribers: one pyzmq SUB per endpoint feeding the precise prefix index.

Wire format (vLLM's `ZmqEventPublisher`, which `inferoute sim --kv-events` reproduces): every
message is three frames, topic / 8-byte big-endian sequence number / msgpack payload, decoded
by `kvdecode` (both event formats, integer and bytes hashes). A malformed message or event is
logged and skipped, never fatal.

Sequence handling (`SequenceTracker`, pure): the next number is applied; a jump ahead is a gap,
filled from the replay ROUTER socket (send `[b"", start_seq]`, receive `[b"", seq, payload]`,
or `[b"", topic, seq, payload]` from newer vLLM, until seq -1); when the replay cannot fill it,
the endpoint's entries are dropped and rebuilt from whatever the replay buffer holds (a
*resync*). A number at or below the last one means the publisher restarted (unless the last
replay already delivered it: a duplicate, skipped): the endpoint is resynced the same way. Every subscriber starts by replaying the publisher's buffer,
so one that starts late catches up. `AllBlocksCleared` clears the endpoint in the index.

Where to connect (`KVEventsConfig`): by default port 5557 (PUB) and 5558 (replay) on the
endpoint's host, vLLM's usual choice; `pubPortOffset`/`replayPortOffset` derive the ports from
the endpoint's HTTP port instead, as for several simulated replicas on one host. vLLM serves
replay only when started with a `replay_endpoint`; without one set `replayPort: null` (a replay
request to a silent port costs `replayTimeout` before the subscriber gives up on it).

The other way round (`bind: tcp://HOST:PORT`): the pool binds one SUB socket and the engines
connect to it (vLLM's `endpoint` without a `*`, `inferoute sim --kv-events-connect`). Every
message's topic then tells whose it is: `kv@<host:port>@<model>` (llm-d's convention, and
`inferoute sim`'s) or the endpoint's `host:port` alone; each endpoint keeps its own sequence
numbers and replay socket, so gaps, restarts and late starts are handled as above. A message
whose topic names no endpoint of the pool is counted and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterable

import pydantic
import zmq
import zmq.asyncio

from ..aiotasks import cancel_tasks
from ..core.endpoint import Endpoint
from ..core.kvindex import KVBlockIndex
from ..core.scheduling.config import parse_duration
from .kvdecode import EventBatch, KVDecodeError, decode_batch, decode_event

__all__ = ["KVEventSubscriber", "KVEventManager", "KVEventsConfig", "SequenceTracker",
           "endpoint_for_topic",
           "SeqAction", "SubscriberStats", "EventBatch", "KVDecodeError", "decode_batch",
           "decode_event", "END_SEQ"]

log = logging.getLogger("inferoute.kvevents")

END_SEQ = -1


# -- sequence numbers ----------------------------------------------------------------------------

class SeqAction(Enum):
    APPLY = "apply"          # the next number (or the very first message)
    GAP = "gap"              # numbers were skipped: fill from `last + 1`
    DUPLICATE = "duplicate"  # already applied from a replay: skip
    RESTART = "restart"      # the publisher started over: resync


class SequenceTracker:
    """What to do with an incoming sequence number, given the last one applied and the range
    of the last replay (a message the replay already delivered is a duplicate, not a restart)."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.replayed: tuple[int, int] | None = None

    def classify(self, seq: int) -> SeqAction:
        if self.last is None:
            return SeqAction.APPLY if seq == 0 else SeqAction.GAP
        if seq == self.last + 1:
            return SeqAction.APPLY
        if seq <= self.last:
            r = self.replayed
            if r is not None and r[0] <= seq <= r[1]:
                return SeqAction.DUPLICATE
            return SeqAction.RESTART
        return SeqAction.GAP

    def gap_start(self) -> int:
        return 0 if self.last is None else self.last + 1

    def advance(self, seq: int) -> None:
        self.last = seq


# -- configuration -------------------------------------------------------------------------------

class KVEventsConfig(pydantic.BaseModel):
    """A pool's `kvEvents:` block: where each endpoint publishes its KV events.

    Ports: `pubPort`/`replayPort` (same on every endpoint's host, vLLM's usual layout), or
    `pubPortOffset`/`replayPortOffset` added to the endpoint's HTTP port (several replicas on
    one host, e.g. `inferoute sim --port 8000 --kv-events`: offsets -2443 and -2343).
    `replayPort: null` with no offset disables gap filling.
    """

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    enabled: bool = True
    pub_port: int = pydantic.Field(5557, alias="pubPort", ge=1, le=65535)
    replay_port: int | None = pydantic.Field(5558, alias="replayPort", ge=1, le=65535)
    pub_port_offset: int | None = pydantic.Field(None, alias="pubPortOffset")
    replay_port_offset: int | None = pydantic.Field(None, alias="replayPortOffset")
    topic: str = ""
    replay_timeout: float = pydantic.Field(1.0, alias="replayTimeout", gt=0, le=60)
    #: bind this address and let the engines connect (None: connect to each engine)
    bind: str | None = None

    @pydantic.field_validator("bind")
    @classmethod
    def _bind_address(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"bind {v!r} must be a ZMQ address such as tcp://0.0.0.0:5557")
        return v

    @pydantic.field_validator("replay_timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    def addresses(self, ep: Endpoint) -> tuple[str, str | None]:
        """(PUB address, replay address or None) of endpoint `ep`."""
        host = f"[{ep.host}]" if ":" in ep.host and not ep.host.startswith("[") else ep.host

        def port(fixed: int | None, offset: int | None) -> int | None:
            p = ep.port + offset if offset is not None else fixed
            if p is not None and not 0 < p < 65536:
                raise ValueError(f"KV-event port {p} of endpoint {ep.name} is out of range")
            return p

        pub = port(self.pub_port, self.pub_port_offset)
        replay = port(self.replay_port, self.replay_port_offset)
        return f"tcp://{host}:{pub}", None if replay is None else f"tcp://{host}:{replay}"


# -- the subscriber ------------------------------------------------------------------------------

@dataclass(slots=True)
class SubscriberStats:
    batches: int = 0
    events: int = 0
    malformed: int = 0
    gaps: int = 0
    replayed: int = 0
    resyncs: int = 0
    restarts: int = 0
    last_seq: int | None = None
    last_event_at: float | None = None
    errors: list[str] = field(default_factory=list)


#: messages a fed subscriber holds before it drops (a drop is a gap the replay then fills)
FEED_LIMIT = 100_000


class KVEventSubscriber:
    """Consumes one endpoint's KV events into `index` under the endpoint's name.

    `start()` inside a running loop, `await stop()` to end. `on_apply` (optional) is called after
    each applied batch, e.g. to wake a waiter in tests. Without a `pub_address` it has no socket
    of its own: the pool's bound socket hands it the endpoint's messages (`feed`).
    """

    def __init__(self, endpoint: str, index: KVBlockIndex, pub_address: str | None,
                 replay_address: str | None = None, *, topic: str = "",
                 replay_timeout: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 on_apply: Callable[[int], None] | None = None) -> None:
        self.endpoint = endpoint
        self.index = index
        self.pub_address = pub_address
        self.replay_address = replay_address
        self.topic = topic.encode()
        self.replay_timeout = replay_timeout
        self.clock = clock
        self.on_apply = on_apply
        self.stats = SubscriberStats()
        self.tracker = SequenceTracker()
        self._ctx = zmq.asyncio.Context.instance()
        self._sub: zmq.asyncio.Socket | None = None
        self._fed: asyncio.Queue[list[bytes]] = asyncio.Queue(FEED_LIMIT)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            return
        if self.pub_address is not None:
            sub = self._ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 100_000)
            sub.setsockopt(zmq.SUBSCRIBE, self.topic)
            sub.connect(self.pub_address)
            self._sub = sub
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name=f"kv-events {self.endpoint}")

    def feed(self, frames: list[bytes]) -> None:
        """A message of this endpoint from the pool's bound socket (handled in order after the
        catch-up; dropped when FEED_LIMIT are waiting, which the next message sees as a gap)."""
        try:
            self._fed.put_nowait(frames)
        except asyncio.QueueFull:
            self.stats.malformed += 1

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await cancel_tasks(task)
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None

    async def _run(self) -> None:
        await self.catch_up()
        while True:
            frames = await (self._sub.recv_multipart() if self._sub is not None
                            else self._fed.get())
            try:
                await self.handle(frames)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one message end the subscription
                self.stats.malformed += 1
                log.exception("KV events of %s: error handling a message: %s", self.endpoint, exc)

    async def catch_up(self) -> None:
        """Apply the publisher's replay buffer (a subscriber that starts late, or restarts)."""
        got = await self._replayed(0, 1 << 62)
        if got:
            self.stats.replayed += len(got)
            for s, p in got:
                self._apply(s, p)
            self.tracker.replayed = (got[0][0], got[-1][0])
            log.info("KV events of %s: caught up on %d buffered batches (up to %d)",
                     self.endpoint, len(got), got[-1][0])

    async def handle(self, frames: list[bytes]) -> None:
        """One SUB message: check the sequence, fill gaps, apply."""
        if len(frames) != 3 or len(frames[1]) != 8:
            self.stats.malformed += 1
            log.warning("KV events of %s: ignoring a malformed message (%d frames)",
                        self.endpoint, len(frames))
            return
        seq = int.from_bytes(frames[1], "big", signed=True)
        if seq < 0:
            self.stats.malformed += 1
            return
        action = self.tracker.classify(seq)
        if action is SeqAction.DUPLICATE:
            return
        if action is SeqAction.GAP:
            self.stats.gaps += 1
            start = self.tracker.gap_start()
            got = await self._replayed(start, seq)
            if [s for s, _ in got] != list(range(start, seq)):
                # the buffer no longer holds them all: rebuild from what it holds
                got = await self._resync(seq, got if start == 0 else None)
            self._apply_replayed(got)
        elif action is SeqAction.RESTART:
            self.stats.restarts += 1
            self.tracker.replayed = None
            log.info("KV events of %s: sequence restarted (%d after %s); resyncing",
                     self.endpoint, seq, self.tracker.last)
            self._apply_replayed(await self._resync(seq, None))
        self._apply(seq, frames[2])

    def _apply(self, seq: int, payload: bytes) -> None:
        self.tracker.advance(seq)
        self.stats.last_seq = seq
        try:
            batch = decode_batch(payload)
        except KVDecodeError as exc:
            self.stats.malformed += 1
            log.warning("KV events of %s: skipping batch %d: %s", self.endpoint, seq, exc)
            return
        self.stats.malformed += batch.skipped
        self.stats.batches += 1
        self.stats.events += len(batch.events)
        self.stats.last_event_at = self.clock()
        self.index.apply(self.endpoint, batch.events)
        if self.on_apply is not None:
            self.on_apply(seq)

    def _apply_replayed(self, got: list[tuple[int, bytes]]) -> None:
        for s, p in got:
            self._apply(s, p)
        self.stats.replayed += len(got)
        if got:
            self.tracker.replayed = (got[0][0], got[-1][0])

    async def _replayed(self, start: int, upto: int) -> list[tuple[int, bytes]]:
        """Replayed batches start..upto-1, in order, without duplicates."""
        if upto <= start:
            return []
        seen: dict[int, bytes] = {}
        for s, p in await self.replay(start):
            if start <= s < upto:
                seen.setdefault(s, p)
        return sorted(seen.items())

    async def _resync(self, upto: int,
                      replayed: list[tuple[int, bytes]] | None) -> list[tuple[int, bytes]]:
        """Drop the endpoint's entries; return the buffered batches before `upto` to rebuild
        from (`replayed` when it already starts at 0)."""
        self.stats.resyncs += 1
        self.index.clear_endpoint(self.endpoint)
        self.tracker.last = None
        got = replayed if replayed is not None else await self._replayed(0, upto)
        if [s for s, _ in got] != list(range(upto)):
            log.warning("KV events of %s: resync from a replay holding %d of batches 0..%d; "
                        "blocks stored before are unknown until stored again",
                        self.endpoint, len(got), upto - 1)
        return got

    async def replay(self, start: int) -> list[tuple[int, bytes]]:
        """The publisher's buffered batches with seq >= start ([] without a replay socket or
        when it does not answer within `replay_timeout`)."""
        if self.replay_address is None:
            return []
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        out: list[tuple[int, bytes]] = []
        try:
            sock.connect(self.replay_address)
            await sock.send_multipart([b"", start.to_bytes(8, "big")])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.replay_timeout
            while True:
                left = deadline - loop.time()
                if left <= 0 or not await sock.poll(left * 1000):
                    self.stats.errors = (self.stats.errors + ["replay timed out"])[-10:]
                    log.warning("KV events of %s: replay from %d timed out after %d batches",
                                self.endpoint, start, len(out))
                    return out
                frames = await sock.recv_multipart()
                if len(frames) == 4:  # vLLM 0.32 adds the topic: [b"", topic, seq, data]
                    frames = [frames[0], frames[2], frames[3]]
                if len(frames) != 3 or len(frames[1]) != 8:
                    continue
                seq = int.from_bytes(frames[1], "big", signed=True)
                if seq == END_SEQ:
                    return out
                out.append((seq, frames[2]))
                if len(out) > 1_000_000:  # bound: a publisher buffer is far smaller
                    return out
        finally:
            sock.close(linger=0)


# -- one pool's subscribers ----------------------------------------------------------------------

def endpoint_for_topic(topic: str, names: Iterable[str]) -> str | None:
    """The endpoint (by `host:port` name) a bound socket's message belongs to: the middle of
    `kv@<host:port>@<model>`, or the whole topic; a bare `host` matches when one endpoint has
    it. None when no endpoint matches."""
    parts = topic.split("@")
    key = parts[1] if len(parts) >= 3 and parts[0] == "kv" else topic
    names = list(names)
    if key in names:
        return key
    on_host = [n for n in names if n.rpartition(":")[0].strip("[]") == key.strip("[]")]
    return on_host[0] if len(on_host) == 1 else None


class KVEventManager:
    """The subscribers of one pool: `add(endpoint)`, `remove(name)`, `await close()`.

    With `bind` in the config it owns the pool's bound SUB socket and hands every message to
    the subscriber its topic names (`unrouted` counts those that name none)."""

    def __init__(self, index: KVBlockIndex, config: KVEventsConfig) -> None:
        self.index = index
        self.config = config
        self.subscribers: dict[str, KVEventSubscriber] = {}
        self.unrouted = 0
        self._bound: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None

    def add(self, ep: Endpoint) -> KVEventSubscriber | None:
        if not self.config.enabled:
            return None
        sub = self.subscribers.get(ep.name)
        if sub is None:
            pub: str | None
            pub, replay = self.config.addresses(ep)
            if self.config.bind is not None:
                self._bind(self.config.bind)
                pub = None
            sub = KVEventSubscriber(ep.name, self.index, pub, replay, topic=self.config.topic,
                                    replay_timeout=self.config.replay_timeout)
            self.subscribers[ep.name] = sub
            sub.start()
            log.info("subscribed to KV events of %s at %s (replay %s)", ep.name,
                     pub or f"{self.config.bind} (bound)", replay)
        return sub

    def _bind(self, address: str) -> None:
        if self._bound is not None:
            return
        sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self.config.topic.encode())
        sock.bind(address)
        self._bound = sock
        self._reader = asyncio.get_running_loop().create_task(self._route(sock),
                                                              name="kv-events bound")
        log.info("KV events: bound %s for the engines to connect to", address)

    async def _route(self, sock: zmq.asyncio.Socket) -> None:
        warned: set[str] = set()
        while True:
            frames = await sock.recv_multipart()
            topic = frames[0].decode("utf-8", "replace") if frames else ""
            name = endpoint_for_topic(topic, self.subscribers)
            if name is None:
                self.unrouted += 1
                if topic not in warned and len(warned) < 100:
                    warned.add(topic)
                    log.warning("KV events: topic %r names no endpoint of the pool; dropped",
                                topic)
                continue
            self.subscribers[name].feed(frames)

    async def remove(self, name: str) -> None:
        sub = self.subscribers.pop(name, None)
        if sub is not None:
            await sub.stop()
        self.index.remove_endpoint(name)

    async def close(self) -> None:
        subs = list(self.subscribers.values())
        self.subscribers.clear()
        await asyncio.gather(*(s.stop() for s in subs))
        if self._reader is not None:
            await cancel_tasks(self._reader)
            self._reader = None
        if self._bound is not None:
            self._bound.close(linger=0)
            self._bound = None
