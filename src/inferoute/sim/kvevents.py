"""vLLM's KV-cache event stream for one simulated replica, over ZMQ.

Wire format, as vLLM 0.32's ZmqEventPublisher sends it (vllm/distributed/kv_events.py):

- PUB socket, every message three frames: topic (`kv@<host:port>@<model>`), an 8-byte
  big-endian sequence number (0, 1, 2, ... per publisher), and a msgpack payload
  `[ts, [event, ...], data_parallel_rank]` (the batch is an array-like msgspec struct);
- events are maps tagged with `type` (msgspec `tag=True`, defaults omitted), fields in the
  struct's order: `{"type": "BlockStored", "block_hashes", "parent_block_hash", "token_ids",
  "block_size", "lora_id", "medium", "lora_name", "extra_keys", "group_idx"}` (extra_keys: per
  block `[lora_name]` or nil), `{"type": "BlockRemoved", "block_hashes", "medium",
  "group_idx"}` (one hash per event, as vLLM evicts), `{"type": "AllBlocksCleared"}`;
- a ROUTER replay socket: a client (DEALER, or REQ) sends `[b"", start_seq (8 bytes, big
  endian)]` and receives `[b"", topic, seq, payload]` for every buffered batch with
  seq >= start_seq, then the end marker `[b"", b"", (-1 as 8 signed bytes), b""]`.

Older vLLM servers sent tagged arrays and replied to replay without the topic frame; the
gateway's subscriber reads both (datalayer/kvdecode.py), the simulator speaks the current one.
One batch is published per engine step that produced events. The replay buffer keeps the
last `buffer_steps` batches. As in vLLM, the PUB socket binds by default (subscribers connect)
or, given `connect` (vLLM's `endpoint` without a `*`), connects to a subscriber that binds; the
replay socket always binds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any
from collections.abc import Iterable

import msgpack
import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)
MEDIUM_GPU = "GPU"


def encode_event(ev: Any) -> dict[str, Any]:
    """An engine KV event (dataclass) as vLLM 0.32's tagged map (unset optional fields
    omitted, as msgspec's `omit_defaults` does)."""
    name = type(ev).__name__
    if name == "BlockStored":
        lora = ev.lora_name
        return {"type": name, "block_hashes": list(ev.block_hashes),
                "parent_block_hash": ev.parent_block_hash, "token_ids": list(ev.token_ids),
                "block_size": ev.block_size, "lora_id": ev.lora_id, "medium": ev.medium,
                "lora_name": lora,
                "extra_keys": [None if lora is None else [lora]] * len(ev.block_hashes),
                "group_idx": 0}
    if name == "BlockRemoved":
        return {"type": name, "block_hashes": list(ev.block_hashes), "medium": ev.medium,
                "group_idx": 0}
    if name == "AllBlocksCleared":
        return {"type": name}
    raise TypeError(f"unknown KV event type {name}")


def encode_batch(events: Iterable[Any], ts: float, dp_rank: int = 0) -> bytes:
    """The msgpack payload of one event batch: `[ts, [events...], data_parallel_rank]`."""
    return msgpack.packb([ts, [encode_event(e) for e in events], dp_rank], use_bin_type=True)


def topic_for(host: str, port: int, model: str) -> str:
    """The topic llm-d's subscribers parse: `kv@<host:port>@<model>`."""
    return f"kv@{host}:{port}@{model}"


class KVEventPublisher:
    """PUB + replay ROUTER sockets of one replica; `publish` is called from the event loop."""

    def __init__(self, *, host: str, pub_port: int, replay_port: int | None, topic: str,
                 buffer_steps: int = 10_000, hwm: int = 100_000, dp_rank: int = 0,
                 connect: str | None = None) -> None:
        self.host = host
        self.topic = topic
        self._topic = topic.encode()
        self._dp_rank = dp_rank
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._seq = 0
        self._ctx = zmq.asyncio.Context.instance()
        # a plain socket for PUB: a non-blocking send must raise, not return a future
        self._pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        self.connect = connect
        if connect is None:
            self.pub_port: int | None = self._bind(self._pub, pub_port)
        else:
            self._pub.connect(connect)
            self.pub_port = None
        self._replay: zmq.asyncio.Socket | None = None
        self.replay_port: int | None = None
        if replay_port is not None:
            self._replay = self._ctx.socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self.replay_port = self._bind(self._replay, replay_port)
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.dropped = 0

    def _bind(self, sock: zmq.Socket, port: int) -> int:
        if port == 0:
            return sock.bind_to_random_port(f"tcp://{self.host}")
        sock.bind(f"tcp://{self.host}:{port}")
        return port

    @property
    def pub_endpoint(self) -> str:
        """Where subscribers meet this publisher (its bound port, or the address it connects
        to)."""
        return self.connect or f"tcp://{self.host}:{self.pub_port}"

    @property
    def replay_endpoint(self) -> str | None:
        return None if self.replay_port is None else f"tcp://{self.host}:{self.replay_port}"

    def start(self) -> None:
        """Start answering replay requests (needs a running event loop)."""
        if self._replay is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    def publish(self, events: list[Any], ts: float | None = None) -> None:
        """Publish one batch (nothing when `events` is empty); never blocks."""
        if not events:
            return
        payload = encode_batch(events, time.time() if ts is None else ts, self._dp_rank)
        seq = self._seq
        self._seq += 1
        self._buffer.append((seq, payload))
        try:
            self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload),
                                     flags=zmq.NOBLOCK, copy=False)
            self.published += 1
        except zmq.Again:  # PUB drops at its high-water mark; the batch stays replayable
            self.dropped += 1

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                log.warning("ignoring a malformed KV replay request (%d frames)", len(frames))
                continue
            client, _, start = frames
            if len(start) != 8:
                log.warning("ignoring a KV replay request with a %d-byte sequence", len(start))
                continue
            start_seq = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    await self._replay.send_multipart((client, b"", self._topic,
                                                       seq.to_bytes(8, "big"), payload))
            await self._replay.send_multipart((client, b"", b"", END_SEQ, b""))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
