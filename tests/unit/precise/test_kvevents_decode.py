"""KV-event decoding (both formats, int and bytes hashes, malformed input) and the subscriber's
sequence logic (gaps filled by replay, late start, restart, resync), without sockets."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from inferoute.core.endpoint import Endpoint
from inferoute.core.kvindex import (AllBlocksClearedEvent, BlockRemovedEvent, BlockStoredEvent,
                                    KVBlockIndex, block_keys, chain_root)
from inferoute.datalayer.kvevents import (KVDecodeError, KVEventsConfig, KVEventSubscriber,
                                          SeqAction, SequenceTracker, decode_batch, decode_event)
from inferoute.sim import blocks as simblocks
from inferoute.sim.kvevents import encode_batch

BS = 4
TOK = list(range(200, 216))


def pack(events, ts=1.5, rank=0):
    return msgpack.packb([ts, events, rank], use_bin_type=True)


def test_tagged_arrays_as_the_simulator_sends_them():
    evs = [simblocks.BlockStored([11, 12], None, TOK[:8], BS, None),
           simblocks.BlockRemoved([11]), simblocks.AllBlocksCleared()]
    batch = decode_batch(encode_batch(evs, ts=3.0, dp_rank=1))
    assert batch.ts == 3.0 and batch.dp_rank == 1 and batch.skipped == 0
    assert batch.events == [BlockStoredEvent((11, 12), None, tuple(TOK[:8]), BS, None, "GPU"),
                            BlockRemovedEvent((11,), "GPU"), AllBlocksClearedEvent()]


def test_map_format_and_map_envelope():
    ev = {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": 9,
          "token_ids": TOK[:4], "block_size": BS, "lora_id": 2, "medium": "CPU",
          "lora_name": "sql"}
    rm = {"type": "BlockRemoved", "block_hashes": [1]}
    payload = msgpack.packb({"ts": 2, "events": [ev, rm, {"type": "AllBlocksCleared"}],
                             "data_parallel_rank": None})
    b = decode_batch(payload)
    assert b.events[0] == BlockStoredEvent((1,), 9, tuple(TOK[:4]), BS, 2, "CPU", "sql")
    assert b.events[1] == BlockRemovedEvent((1,), "GPU")
    assert isinstance(b.events[2], AllBlocksClearedEvent)


def test_bytes_hashes_fold_consistently():
    h1, h2 = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    b = decode_batch(pack([["BlockStored", [h1, h2], None, TOK[:8], BS, None, "GPU"],
                           ["BlockStored", [hashlib.sha256(b"c").digest()], h2, TOK[8:12], BS,
                            None, "GPU"],
                           ["BlockRemoved", [h1], "GPU"]]))
    stored, child, removed = b.events
    assert stored.block_hashes[1] == child.parent_block_hash
    assert removed.block_hashes[0] == stored.block_hashes[0]
    idx = KVBlockIndex()
    idx.apply("e", b.events[:2])
    assert idx.match(block_keys(TOK[:12], BS, chain_root(None, BS)), ["e"]) == [3]


def test_older_and_newer_field_counts():
    old = decode_event(["BlockStored", [1], None, TOK[:4], BS, None])  # no medium
    assert old.medium == "GPU"
    assert decode_event(["BlockRemoved", [1]]).medium == "GPU"
    newer = decode_event(["BlockStored", [1], None, TOK[:4], BS, None, "GPU", "sql", "x"])
    assert newer.lora_name == "sql"


@pytest.mark.parametrize("raw", [
    ["Bogus", 1], {"type": "Nope"}, ["BlockStored", [1], None], ["BlockRemoved"],
    ["BlockStored", ["x"], None, TOK[:4], BS, None, "GPU"],
    ["BlockStored", [1], None, ["a"], BS, None, "GPU"],
    ["BlockStored", [1], None, TOK[:4], 0, None, "GPU"],
    ["BlockStored", [True], None, TOK[:4], BS, None, "GPU"],
    ["BlockStored", [1], None, TOK[:4], BS, "one", "GPU"],
    [], 7, "BlockStored"])
def test_malformed_events_raise(raw):
    with pytest.raises(KVDecodeError):
        decode_event(raw)


def test_a_batch_skips_bad_events_and_keeps_good_ones():
    b = decode_batch(pack([["Bogus"], ["AllBlocksCleared"], 5]))
    assert b.skipped == 2 and len(b.events) == 1


@pytest.mark.parametrize("payload", [b"\xc1", msgpack.packb(5), msgpack.packb([1]),
                                     msgpack.packb([1, "x", 0]), b""])
def test_malformed_envelopes_raise(payload):
    with pytest.raises(KVDecodeError):
        decode_batch(payload)


def test_sequence_tracker():
    t = SequenceTracker()
    assert t.classify(0) is SeqAction.APPLY
    assert t.classify(5) is SeqAction.GAP and t.gap_start() == 0
    t.advance(5)
    assert t.classify(6) is SeqAction.APPLY
    assert t.classify(9) is SeqAction.GAP and t.gap_start() == 6
    assert t.classify(5) is SeqAction.RESTART and t.classify(0) is SeqAction.RESTART


def test_config_addresses():
    ep = Endpoint(host="10.0.0.7", port=8001)
    assert KVEventsConfig().addresses(ep) == ("tcp://10.0.0.7:5557", "tcp://10.0.0.7:5558")
    cfg = KVEventsConfig.model_validate({"pubPortOffset": -2443, "replayPortOffset": -2343,
                                         "replayTimeout": "200ms"})
    assert cfg.addresses(ep) == ("tcp://10.0.0.7:5558", "tcp://10.0.0.7:5658")
    assert cfg.replay_timeout == 0.2
    assert KVEventsConfig(replayPort=None).addresses(ep)[1] is None
    assert KVEventsConfig().addresses(Endpoint(host="::1", port=1))[0] == "tcp://[::1]:5557"
    with pytest.raises(ValueError):
        KVEventsConfig(pubPortOffset=-9000).addresses(ep)


# -- the subscriber's logic with a fake replay buffer ---------------------------------------------

class FakeReplay(KVEventSubscriber):
    """A subscriber whose replay socket is a list (what a publisher's buffer holds)."""

    def __init__(self, index, buffer):
        super().__init__("e", index, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
        self.buffer = buffer
        self.requests: list[int] = []

    async def replay(self, start):
        self.requests.append(start)
        return [(s, p) for s, p in self.buffer if s >= start]


def chain_batches(n):
    """n batches, each storing one block chained on the previous one (engine hashes 1..n)."""
    out = []
    for i in range(n):
        ev = ["BlockStored", [i + 1], i if i else None, TOK[(i % 4) * BS:(i % 4 + 1) * BS], BS,
              None, "GPU"]
        out.append((i, pack([ev])))
    return out


def frames(seq, payload):
    return [b"kv@x@m", seq.to_bytes(8, "big"), payload]


def keys(n):
    toks = [TOK[(i % 4) * BS + j] for i in range(n) for j in range(BS)]
    return block_keys(toks, BS, chain_root(None, BS))


async def test_in_order_then_gap_filled_from_replay():
    idx = KVBlockIndex()
    buf = chain_batches(6)
    sub = FakeReplay(idx, buf)
    await sub.handle(frames(*buf[0]))
    await sub.handle(frames(*buf[1]))
    await sub.handle(frames(*buf[4]))  # 2 and 3 lost on the PUB socket
    assert sub.requests == [2]
    assert sub.stats.gaps == 1 and sub.stats.replayed == 2 and sub.stats.resyncs == 0
    assert idx.match(keys(5), ["e"]) == [5]
    await sub.handle(frames(*buf[5]))
    assert idx.match(keys(6), ["e"]) == [6] and sub.tracker.last == 5


async def test_late_start_replays_the_buffer():
    idx = KVBlockIndex()
    buf = chain_batches(5)
    sub = FakeReplay(idx, buf)
    await sub.handle(frames(*buf[4]))
    assert sub.requests == [0] and idx.match(keys(5), ["e"]) == [5]


async def test_gap_beyond_the_buffer_resyncs_from_what_it_holds():
    idx = KVBlockIndex()
    buf = chain_batches(8)
    sub = FakeReplay(idx, buf[5:])  # the publisher's buffer lost 0..4
    await sub.handle(frames(*buf[0]))
    await sub.handle(frames(*buf[7]))
    assert sub.stats.resyncs == 1 and sub.requests == [1, 0]
    # the old entries were dropped; 5..7 have no known head, so they are not guessed either
    assert idx.size("e") == 0 and idx.stats().orphan_blocks == 3


async def test_restart_resyncs_and_all_blocks_cleared_clears():
    idx = KVBlockIndex()
    buf = chain_batches(3)
    sub = FakeReplay(idx, buf)
    for b in buf:
        await sub.handle(frames(*b))
    assert idx.size("e") == 3
    # the engine restarted: a new sequence from 0 storing a different chain
    sub.buffer = []
    new = pack([["BlockStored", [50], None, TOK[4:8], BS, None, "GPU"]])
    await sub.handle(frames(0, new))
    assert sub.stats.restarts == 1 and idx.size("e") == 1
    await sub.handle(frames(1, pack([["AllBlocksCleared"]])))
    assert idx.size("e") == 0


async def test_malformed_messages_are_skipped():
    idx = KVBlockIndex()
    sub = FakeReplay(idx, [])
    await sub.handle([b"only-one-frame"])
    await sub.handle([b"t", b"\x00" * 3, b"x"])
    await sub.handle(frames(0, b"\xc1garbage"))
    await sub.handle(frames(1, pack([["Bogus"], ["BlockStored", [1], None, TOK[:4], BS, None,
                                                 "GPU"]])))
    assert sub.stats.malformed == 4
    assert idx.size("e") == 1 and sub.tracker.last == 1


async def test_replay_without_socket_or_with_no_answer():
    idx = KVBlockIndex()
    sub = KVEventSubscriber("e", idx, "tcp://127.0.0.1:1", None)
    assert await sub.replay(0) == []
    # a replay address nobody answers: gives up after the timeout, never hangs
    sub = KVEventSubscriber("e", idx, "tcp://127.0.0.1:1", "tcp://127.0.0.1:9",
                            replay_timeout=0.05)
    assert await sub.replay(0) == []
    assert sub.stats.errors == ["replay timed out"]


async def test_catch_up_then_duplicates_are_skipped_not_restarts():
    idx = KVBlockIndex()
    buf = chain_batches(4)
    sub = FakeReplay(idx, buf)
    await sub.catch_up()
    assert idx.match(keys(4), ["e"]) == [4] and sub.tracker.last == 3
    # the SUB socket still delivers 2 and 3 (queued during the replay): duplicates
    await sub.handle(frames(*buf[2]))
    await sub.handle(frames(*buf[3]))
    assert sub.stats.restarts == 0 and idx.size("e") == 4
    t = SequenceTracker()
    t.advance(3)
    t.replayed = (0, 3)
    assert t.classify(2) is SeqAction.DUPLICATE
    t.replayed = None
    assert t.classify(2) is SeqAction.RESTART
