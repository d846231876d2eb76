"""Precise prefix scoring from the real engines' KV-event streams.

The replicas bind their PUB and replay sockets (`tcp://*:P`) and inferoute's subscribers
connect. The subscribers here run in the test process against the real streams: the index must
learn the real block size (128) and blocks, key them so that the gateway's own tokenization of a
request (the model's tokenizer and chat template) matches them, keep a LoRA adapter's blocks
apart from the base model's, and a subscriber that starts late must catch up from the replay
socket (or, without one, learn only what comes after it)."""

from __future__ import annotations

import json
import random

import aiohttp

from inferoute.core.endpoint import Endpoint
from inferoute.core.request import parse_request
from inferoute.core.scheduling.framework import CycleContext
from inferoute.core.scheduling.registry import create_plugin
from inferoute.datalayer.kvevents import KVEventManager, KVEventsConfig
from inferoute.datalayer.tokenize import load_tokenizer
from inferoute.bench.vllm_fleet import START_TIMEOUT, replica_argv, replica_env
from inferoute.procs import LOOPBACK, ChildProcess, free_port

from .conftest import BLOCK, KV_BLOCKS, LORA, MAX_LEN, MODEL, Engines, until, words


def setup(engines: Engines, replay: bool = True):
    scorer = create_plugin("precise-prefix-cache-scorer", "precise", {"speculative": False})
    scorer.set_tokenizer(load_tokenizer(str(engines.model_dir)))
    offsets = engines.kv_offsets()
    cfg = KVEventsConfig(pubPortOffset=offsets["pubPortOffset"],
                         replayPortOffset=offsets["replayPortOffset"] if replay else None,
                         replayPort=None, replayTimeout="5s")
    eps = [Endpoint(host="127.0.0.1", port=r.port) for r in engines.replicas]
    return scorer, KVEventManager(scorer.index, cfg), eps


def score(scorer, api: str, body: dict, eps: list[Endpoint], lora: str | None = None):
    req = parse_request(api, body, request_id="q")
    req.lora_adapter = lora
    return list(scorer.score(CycleContext(now=0.0, rng=random.Random(0)), req, eps))


async def live(scorer, eps: list[Endpoint], engines: Engines, which: list[int]) -> None:
    """Until the subscribers of replicas `which` deliver live events: send each a fresh
    one-block prompt and wait for its block to reach the index, again with a new prompt while
    it does not (a SUB socket misses what is published before its subscription is in place)."""
    async with aiohttp.ClientSession() as s:
        for i in which:
            for _ in range(20):
                body = {"model": MODEL, "prompt": words(random.getrandbits(32), BLOCK + 1),
                        "max_tokens": 1}
                await post(s, engines.urls[i], "completions", body)
                try:
                    await until(lambda: score(scorer, "completions", body, eps)[i] == 1.0,
                                timeout=5)
                    break
                except AssertionError:
                    continue
            else:
                raise AssertionError(f"no live KV events from replica {i}")


async def post(session: aiohttp.ClientSession, url: str, api: str, body: dict) -> dict:
    path = "/v1/completions" if api == "completions" else "/v1/chat/completions"
    async with session.post(url + path, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_index_learns_real_blocks_and_scores_the_holder(engines: Engines):
    scorer, manager, eps = setup(engines)
    subs = [manager.add(ep) for ep in eps]
    try:
        await live(scorer, eps, engines, [0, 1])
        comp = {"model": MODEL, "prompt": words(21, 4 * BLOCK + 50), "max_tokens": 2}
        chat = {"model": MODEL, "max_tokens": 2,
                "messages": [{"role": "system", "content": words(22, 2 * BLOCK)},
                             {"role": "user", "content": words(23, BLOCK)}]}
        assert score(scorer, "completions", comp, eps) == [0.0, 0.0]
        async with aiohttp.ClientSession() as s:
            await post(s, engines.urls[0], "completions", comp)
            await post(s, engines.urls[1], "chat", chat)
        await until(lambda: score(scorer, "completions", comp, eps)[0] == 1.0
                    and score(scorer, "chat", chat, eps)[1] == 1.0)
        assert scorer.index.block_size(eps[0].name) == BLOCK
        assert score(scorer, "completions", comp, eps) == [1.0, 0.0]
        # the gateway's chat-template rendering gives the engine's tokens: all blocks match
        assert score(scorer, "chat", chat, eps) == [0.0, 1.0]
        # a prompt sharing its first two blocks matches 2 of its 4
        partial = {"model": MODEL,
                   "prompt": " ".join(comp["prompt"].split()[:2 * BLOCK]) + " "
                   + words(24, 2 * BLOCK + 50)}
        assert score(scorer, "completions", partial, eps) == [0.5, 0.0]
        assert all(s.stats.malformed == 0 for s in subs)
        assert all(s.stats.errors == [] for s in subs)
    finally:
        await manager.close()


async def test_blocks_the_engine_evicts_leave_the_index(engines: Engines):
    """Past its KV cache the engine evicts the least recently used blocks and says so
    (BlockRemoved): the index drops them, so the prompt that held them no longer matches."""
    scorer, manager, eps = setup(engines)
    subs = [manager.add(ep) for ep in eps]
    try:
        await live(scorer, eps, engines, [0])
        first = {"model": MODEL, "prompt": words(31, 8 * BLOCK + 10), "max_tokens": 1}
        async with aiohttp.ClientSession() as s:
            await post(s, engines.urls[0], "completions", first)
            await until(lambda: score(scorer, "completions", first, eps)[0] == 1.0)
            removed = scorer.index.stats().removed_events
            # distinct prompts of 8 blocks each, more than the cache holds: the oldest go
            for i in range(KV_BLOCKS // 8 + 4):
                await post(s, engines.urls[0], "completions",
                           {"model": MODEL, "prompt": words(1000 + i, 8 * BLOCK + 10),
                            "max_tokens": 1})
        await until(lambda: score(scorer, "completions", first, eps)[0] < 1.0)
        assert scorer.index.stats().removed_events > removed
        assert all(s.stats.malformed == 0 and s.stats.errors == [] for s in subs)
    finally:
        await manager.close()


async def test_lora_blocks_are_keyed_apart_from_the_base_model(engines: Engines):
    scorer, manager, eps = setup(engines)
    for ep in eps:
        manager.add(ep)
    try:
        await live(scorer, eps, engines, [1])
        body = {"model": LORA, "prompt": words(31, 3 * BLOCK + 7), "max_tokens": 2}
        async with aiohttp.ClientSession() as s:
            await post(s, engines.urls[1], "completions", body)
        await until(lambda: score(scorer, "completions", body, eps, lora=LORA)[1] == 1.0)
        assert score(scorer, "completions", body, eps, lora=LORA) == [0.0, 1.0]
        # the same tokens for the base model are other blocks in the engine's cache
        assert score(scorer, "completions", dict(body, model=MODEL), eps) == [0.0, 0.0]
    finally:
        await manager.close()


async def test_late_subscriber_catches_up_from_the_replay_socket(engines: Engines):
    body = {"model": MODEL, "prompt": words(41, 3 * BLOCK + 1), "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        await post(s, engines.urls[0], "completions", body)   # nobody of ours listens yet
    scorer, manager, eps = setup(engines)
    subs = [manager.add(ep) for ep in eps]
    try:
        await until(lambda: score(scorer, "completions", body, eps)[0] == 1.0)
        assert score(scorer, "completions", body, eps) == [1.0, 0.0]
        assert subs[0].stats.replayed >= 1
    finally:
        await manager.close()


async def test_late_subscriber_without_replay_learns_only_what_follows(engines: Engines):
    old = {"model": MODEL, "prompt": words(51, 2 * BLOCK + 3), "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        await post(s, engines.urls[1], "completions", old)
    scorer, manager, eps = setup(engines, replay=False)
    sub = manager.add(eps[1])
    try:
        await live(scorer, eps, engines, [1])
        assert score(scorer, "completions", old, eps) == [0.0, 0.0]
        assert sub.stats.replayed == 0
    finally:
        await manager.close()


async def test_an_engine_that_connects_reaches_the_pools_bound_socket(engines: Engines):
    """vLLM with an `endpoint` without `*` connects its PUB socket; the pool binds one SUB
    socket (`kvEvents: {bind: ...}`) and routes each message by its topic
    (`kv@<host:port>@<model>`) to the endpoint it names."""
    port, replay, bound = free_port(), free_port(), free_port()
    kv = {"enable_kv_cache_events": True, "publisher": "zmq",
          "topic": f"kv@{LOOPBACK}:{port}@{MODEL}", "endpoint": f"tcp://{LOOPBACK}:{bound}",
          "replay_endpoint": f"tcp://*:{replay}"}
    # the later --kv-events-config replaces the fleet's (which binds)
    argv = replica_argv(engines.python, engines.model_dir, engines.lora_dir, port, 0, 0, MAX_LEN,
                        "--kv-events-config", json.dumps(kv),
                        "--num-gpu-blocks-override", str(KV_BLOCKS))
    child = ChildProcess(argv, name="vllm-connect", env=replica_env(0), keep=400)
    scorer = create_plugin("precise-prefix-cache-scorer", "precise", {"speculative": False})
    scorer.set_tokenizer(load_tokenizer(str(engines.model_dir)))
    manager = KVEventManager(scorer.index, KVEventsConfig(
        bind=f"tcp://{LOOPBACK}:{bound}", replayPortOffset=replay - port, replayTimeout="5s"))
    try:
        child.wait_for_http(f"http://{LOOPBACK}:{port}/health", timeout=START_TIMEOUT)
        ep = Endpoint(host=LOOPBACK, port=port)
        sub = manager.add(ep)
        assert sub is not None
        # a PUB socket drops what it sends before the subscription reaches it: send fresh
        # prompts until one's blocks arrive
        async with aiohttp.ClientSession() as s:
            for attempt in range(20):
                body = {"model": MODEL, "prompt": words(5000 + attempt, 2 * BLOCK + 5),
                        "max_tokens": 1}
                await post(s, f"http://{LOOPBACK}:{port}", "completions", body)
                try:
                    await until(lambda: score(scorer, "completions", body, [ep]) == [1.0],
                                timeout=5)
                    break
                except AssertionError:
                    continue
            else:
                raise AssertionError("no KV events reached the bound socket")
        assert manager.unrouted == 0
        assert sub.stats.malformed == 0 and sub.stats.errors == []
        assert scorer.index.block_size(ep.name) == BLOCK
    finally:
        await manager.close()
        child.stop(timeout=30)
