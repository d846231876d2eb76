"""Failure injection and the ZMQ KV-event stream of a real `inferoute sim`."""

from __future__ import annotations

import asyncio

import aiohttp
import msgpack
import zmq
import zmq.asyncio

from inferoute.sim import tokenizer

URL_PATH = "/v1/completions"


def _body(n_words: int = 4, max_tokens: int = 6, tag: str = "f") -> dict:
    return {"model": "sim-model", "prompt": " ".join(f"{tag}{i}" for i in range(n_words)),
            "max_tokens": max_tokens, "ignore_eos": True}


async def test_header_forces_each_error_kind(sim):
    async with aiohttp.ClientSession() as s:
        for kind in ("429", "500", "503"):
            async with s.post(sim.url(1) + URL_PATH, json=_body(),
                              headers={"x-inferoute-sim-fault": kind}) as r:
                assert r.status == int(kind)
                body = await r.json()
                assert body["error"]["code"] == int(kind)
                if kind == "429":
                    assert r.headers["Retry-After"] == "1"
        async with s.post(sim.url(1) + URL_PATH, json=_body(),
                          headers={"x-inferoute-sim-fault": "teapot"}) as r:
            assert r.status == 400


async def test_drop_mid_stream_closes_the_connection(sim):
    async with aiohttp.ClientSession() as s:
        got: list[bytes] = []
        try:
            async with s.post(sim.url(1) + URL_PATH, json={**_body(max_tokens=20), "stream": True},
                              headers={"x-inferoute-sim-fault": "drop"}) as r:
                assert r.status == 200
                async for line in r.content:
                    got.append(line)
            dropped = False
        except aiohttp.ClientPayloadError:
            dropped = True
        assert dropped, b"".join(got)
        assert not any(b"[DONE]" in line for line in got)
        assert 1 <= sum(line.startswith(b"data: {") for line in got) < 20
        # non-streamed: the connection closes without a response
        try:
            async with s.post(sim.url(1) + URL_PATH, json=_body(),
                              headers={"x-inferoute-sim-fault": "drop"}) as r:
                await r.read()
            dropped = False
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                aiohttp.ClientOSError):
            dropped = True
        assert dropped


async def test_admin_fault_rate_and_latency(sim):
    url = sim.url(1)
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/admin/faults", json={"rate": 1.0, "kinds": ["503"]}) as r:
            assert r.status == 200 and (await r.json())["rate"] == 1.0
        try:
            statuses = []
            for _ in range(5):
                async with s.post(url + URL_PATH, json=_body()) as r:
                    statuses.append(r.status)
            assert statuses == [503] * 5
            # the header still overrides: "none" serves normally
            async with s.post(url + URL_PATH, json=_body(),
                              headers={"x-inferoute-sim-fault": "none"}) as r:
                assert r.status == 200
        finally:
            async with s.post(url + "/admin/faults", json={"rate": 0.0}) as r:
                assert r.status == 200
        async with s.post(url + "/admin/faults", json={"rate": 7}) as r:
            assert r.status == 400
        async with s.post(url + "/admin/latency", json={"time_scale": -1}) as r:
            assert r.status == 400
        # slow start: the first token waits for the injected delay
        async with s.post(url + "/admin/faults", json={"slow_delay": 0.3}) as r:
            assert r.status == 200
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with s.post(url + URL_PATH, json=_body(),
                          headers={"x-inferoute-sim-fault": "slow"}) as r:
            assert r.status == 200
        assert loop.time() - t0 >= 0.3
        async with s.get(url + "/admin/latency") as r:
            assert await r.json() == {"time_scale": 1.0, "extra_ttft": 0.0}


async def _recv_batches(sub: zmq.asyncio.Socket, want_stored_tokens: set[int],
                        timeout: float = 5.0) -> list[tuple[bytes, int, list]]:
    """Receive batches until a BlockStored carries all of `want_stored_tokens`."""
    got: list[tuple[bytes, int, list]] = []
    seen: set[int] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not want_stored_tokens <= seen:
        left = deadline - loop.time()
        assert left > 0, f"KV events missing; got {got}"
        frames = await asyncio.wait_for(sub.recv_multipart(), left)
        assert len(frames) == 3
        topic, seq, payload = frames
        batch = msgpack.unpackb(payload, raw=False)
        got.append((topic, int.from_bytes(seq, "big"), batch))
        for ev in batch[1]:
            if ev["type"] == "BlockStored":
                seen.update(ev["token_ids"])
    return got


async def test_kv_events_published_and_replayed(sim):
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{sim.kv_port}")          # replica 0's publisher
    topic = f"kv@127.0.0.1:{sim.port}@sim-model"
    sub.setsockopt_string(zmq.SUBSCRIBE, topic)
    await asyncio.sleep(0.3)                                # let the subscription propagate
    prompt_words = [f"kv{i}" for i in range(40)]
    ids = tokenizer.encode(" ".join(prompt_words))
    try:
        async with aiohttp.ClientSession() as s:
            body = {"model": "sim-model", "prompt": " ".join(prompt_words), "max_tokens": 2}
            async with s.post(sim.url(0) + URL_PATH, json=body) as r:
                assert r.status == 200
        batches = await _recv_batches(sub, set(ids[:32]))
        for topic_b, _, batch in batches:
            assert topic_b.decode() == topic
            ts, events, dp_rank = batch
            assert isinstance(ts, float) and dp_rank == 0
        stored = [ev for _, _, b in batches for ev in b[1] if ev["type"] == "BlockStored"]
        ours = [ev for ev in stored if set(ev["token_ids"]) <= set(ids)]
        assert ours, stored
        # vLLM 0.32's map, fields in its order (a base-model block: no LoRA, no extra keys)
        hashes = ours[0]["block_hashes"]
        assert list(ours[0]) == ["type", "block_hashes", "parent_block_hash", "token_ids",
                                 "block_size", "lora_id", "medium", "lora_name", "extra_keys",
                                 "group_idx"]
        assert ours[0]["block_size"] == 16 and ours[0]["medium"] == "GPU"
        assert ours[0]["lora_id"] is None and ours[0]["lora_name"] is None
        assert ours[0]["extra_keys"] == [None] * len(hashes) and ours[0]["group_idx"] == 0
        assert len(ours[0]["token_ids"]) == 16 * len(hashes)
        assert all(isinstance(h, int) for h in hashes)
        all_tokens = [t for ev in ours for t in ev["token_ids"]]
        assert all_tokens[:32] == ids[:32]                  # the two full blocks, in order
        seqs = [seq for _, seq, _ in batches]
        assert seqs == sorted(seqs)

        # replay from the first sequence number we saw: the same payloads, then the end marker,
        # in vLLM 0.32's layout (a topic frame before the sequence number; an empty one at the
        # end)
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(f"tcp://127.0.0.1:{sim.replay_port}")
        await dealer.send_multipart([b"", seqs[0].to_bytes(8, "big")])
        replayed: dict[int, list] = {}
        while True:
            frames = await asyncio.wait_for(dealer.recv_multipart(), 5)
            empty, topic_b, seq_b, payload = frames
            assert empty == b""
            seq = int.from_bytes(seq_b, "big", signed=True)
            if seq == -1:
                assert topic_b == b"" and payload == b""
                break
            assert topic_b.decode() == topic
            replayed[seq] = msgpack.unpackb(payload, raw=False)
        dealer.close(linger=0)
        for _, seq, batch in batches:
            assert replayed[seq] == batch
        assert min(replayed) == seqs[0]

        # resetting the prefix cache publishes AllBlocksCleared, and the blocks are gone
        async with aiohttp.ClientSession() as s:
            async with s.post(sim.url(0) + "/reset_prefix_cache") as r:
                assert r.status == 200
            frames = await asyncio.wait_for(sub.recv_multipart(), 5)
            assert msgpack.unpackb(frames[2], raw=False)[1] == [{"type": "AllBlocksCleared"}]
            async with s.post(sim.url(0) + URL_PATH, json=body) as r:
                assert (await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    finally:
        sub.close(linger=0)
        ctx.term()
