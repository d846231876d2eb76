"""The subscriber over real ZMQ sockets against the simulator's publisher (vLLM's wire format):
batches lost on the PUB socket are filled from the replay ROUTER; a publisher that restarts with
a new sequence is resynced; garbage on the wire is skipped."""

from __future__ import annotations

import asyncio

import zmq

from inferoute.core.kvindex import KVBlockIndex, block_keys, chain_root
from inferoute.datalayer.kvevents import KVEventSubscriber
from inferoute.sim.blocks import AllBlocksCleared, BlockStored
from inferoute.sim.kvevents import KVEventPublisher

from .conftest import free_ports, until

BS = 16
TOKENS = list(range(5000, 5000 + 16 * BS))


def block(i: int) -> BlockStored:
    """Block i of one long chain (engine hashes 1000+i)."""
    return BlockStored([1000 + i], 1000 + i - 1 if i else None, TOKENS[i * BS:(i + 1) * BS], BS)


def keys(n: int) -> list[int]:
    return block_keys(TOKENS[: n * BS], BS, chain_root(None, BS))


def publisher(pub: int, replay: int) -> KVEventPublisher:
    p = KVEventPublisher(host="127.0.0.1", pub_port=pub, replay_port=replay,
                         topic="kv@127.0.0.1:1@M")
    p.start()
    return p


class Lossy:
    """Drops the PUB sends of chosen sequence numbers (the batches stay replayable)."""

    def __init__(self, pub: KVEventPublisher, drop: set[int]) -> None:
        self.sock, self.drop = pub._pub, drop
        pub._pub = self

    def send_multipart(self, frames, **kw):
        if int.from_bytes(frames[1], "big") in self.drop:
            return None
        return self.sock.send_multipart(frames, **kw)

    def close(self, **kw):
        self.sock.close(**kw)


async def test_lost_batches_are_replayed_and_restarts_resync():
    base = free_ports(2)
    pub = publisher(base, base + 1)
    idx = KVBlockIndex()
    sub = KVEventSubscriber("e", idx, f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}",
                            replay_timeout=2.0)
    sub.start()
    try:
        pub.publish([block(0)])
        await until(lambda: idx.size("e") == 1)  # connected (caught up or received)
        Lossy(pub, drop={2, 3, 4})
        for i in range(1, 7):
            pub.publish([block(i)])
        await until(lambda: sub.tracker.last == 6)
        assert idx.match(keys(7), ["e"]) == [7]
        assert sub.stats.gaps == 1 and sub.stats.replayed >= 3 and sub.stats.resyncs == 0

        # the engine restarts: a new publisher on the same ports, sequence from 0 again
        await pub.close()
        for _ in range(100):  # zmq releases the ports asynchronously after close
            try:
                pub = publisher(base, base + 1)
                break
            except zmq.ZMQError:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the SUB socket reconnects
        pub.publish([AllBlocksCleared()])
        pub.publish([block(0)])
        pub.publish([block(1)])
        await until(lambda: sub.stats.restarts == 1 and idx.size("e") == 2)
        assert idx.match(keys(7), ["e"]) == [2]
    finally:
        await sub.stop()
        await pub.close()


async def test_garbage_on_the_wire_is_skipped():
    base = free_ports(1)
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.bind(f"tcp://127.0.0.1:{base}")
    idx = KVBlockIndex()
    sub = KVEventSubscriber("e", idx, f"tcp://127.0.0.1:{base}", None)
    sub.start()
    try:
        from inferoute.sim.kvevents import encode_batch

        good = encode_batch([block(0)], ts=0.0)
        for _ in range(100):  # until the SUB socket has joined
            raw.send_multipart([b"t", (0).to_bytes(8, "big"), good])
            await asyncio.sleep(0.02)
            if idx.size("e"):
                break
        last = sub.tracker.last
        raw.send_multipart([b"t"])
        raw.send_multipart([b"t", b"123", b"x"])
        raw.send_multipart([b"t", (last + 1).to_bytes(8, "big"), b"\xc1\xc1"])
        raw.send_multipart([b"t", (last + 2).to_bytes(8, "big"),
                            encode_batch([block(1)], ts=0.0)])
        await until(lambda: idx.size("e") == 2)
        assert sub.stats.malformed == 3
    finally:
        await sub.stop()
        raw.close(linger=0)
