"""Precise prefix scoring against a live `inferoute sim --kv-events`: the subscribers learn the
replicas' blocks from their ZMQ streams, and the scorer then prefers the replica that holds a
prompt; a subscriber that starts late catches up from the replay socket."""

from __future__ import annotations

import asyncio
import random

import aiohttp

from inferoute.core.endpoint import Endpoint
from inferoute.core.request import parse_request
from inferoute.core.scheduling.framework import CycleContext
from inferoute.core.scheduling.registry import create_plugin
from inferoute.datalayer.kvevents import KVEventManager, KVEventsConfig
from inferoute.datalayer.tokenize import WordsTokenizer

from .conftest import until

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def prompt(seed: int, n: int = 100) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


async def post(session, url, api, body):
    path = "/v1/completions" if api == "completions" else "/v1/chat/completions"
    async with session.post(url + path, json=body) as r:
        assert r.status == 200, await r.text()
        await r.read()


def setup(sim):
    scorer = create_plugin("precise-prefix-cache-scorer", "precise", {})
    scorer.set_tokenizer(WordsTokenizer())
    cfg = KVEventsConfig(pubPortOffset=sim.kv_port - sim.port,
                         replayPortOffset=sim.replay_port - sim.port, replayTimeout="2s")
    eps = [Endpoint(host="127.0.0.1", port=sim.port + i) for i in range(sim.replicas)]
    return scorer, KVEventManager(scorer.index, cfg), eps


def score(scorer, api, body, eps):
    req = parse_request(api, body, request_id="q")
    return list(scorer.score(CycleContext(now=0.0, rng=random.Random(0)), req, eps))


async def test_index_learns_blocks_and_scores_the_holder(sim):
    scorer, manager, eps = setup(sim)
    for ep in eps:
        manager.add(ep)
    try:
        await asyncio.sleep(0.3)  # let the SUB sockets connect (missed batches get replayed)
        comp = {"model": "M", "prompt": prompt(1), "max_tokens": 3}
        chat = {"model": "M", "max_tokens": 3,
                "messages": [{"role": "system", "content": prompt(2, 60)},
                             {"role": "user", "content": prompt(3, 40)}]}
        assert score(scorer, "completions", comp, eps) == [0.0, 0.0]
        async with aiohttp.ClientSession() as s:
            await post(s, sim.url(0), "completions", comp)
            await post(s, sim.url(1), "chat", chat)
        idx = scorer.index
        # 100 prompt words = 6 full blocks of 16 on the tiny profile
        await until(lambda: idx.size(eps[0].name) >= 6 and idx.size(eps[1].name) >= 6)
        assert idx.block_size(eps[0].name) == 16
        assert score(scorer, "completions", comp, eps) == [1.0, 0.0]
        assert score(scorer, "chat", chat, eps) == [0.0, 1.0]
        # a prompt sharing only its first 48 words matches 3 blocks of its 6
        partial = {"model": "M", "prompt": " ".join(prompt(1).split()[:48]) + " " + prompt(9, 52)}
        assert score(scorer, "completions", partial, eps) == [0.5, 0.0]
        subs = manager.subscribers
        assert all(s.stats.malformed == 0 for s in subs.values())
        assert subs[eps[0].name].stats.events > 0
    finally:
        await manager.close()


async def test_late_subscriber_catches_up_from_replay(sim):
    scorer, manager, eps = setup(sim)
    comp = {"model": "M", "prompt": prompt(5), "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        await post(s, sim.url(1), "completions", comp)  # nobody is subscribed yet
    await asyncio.sleep(0.2)  # the step's events are published after the response
    for ep in eps:
        manager.add(ep)
    try:
        await until(lambda: scorer.index.size(eps[1].name) >= 6)
        assert score(scorer, "completions", comp, eps) == [0.0, 1.0]
        assert manager.subscribers[eps[1].name].stats.replayed >= 1
    finally:
        await manager.close()


async def test_pool_wiring_routes_a_repeated_prompt_to_its_holder(sim):
    """The DataLayer's wiring: a scheduler with the precise scorer, `PreciseRouting.for_pool`
    with the pool's kvEvents and tokenizer settings, then plain `Scheduler.schedule`."""
    from inferoute.core.scheduling.config import parse_config
    from inferoute.core.scheduling.scheduler import Scheduler
    from inferoute.datalayer.precise_pool import PreciseRouting

    sched = Scheduler(parse_config({
        "plugins": [{"type": "precise-prefix-cache-scorer", "parameters": {"speculative": False}},
                    {"type": "queue-scorer"}, {"type": "max-score-picker"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "precise-prefix-cache-scorer", "weight": 3},
            {"pluginRef": "queue-scorer", "weight": 1}, {"pluginRef": "max-score-picker"}]}]}),
        seed=0)
    routing = PreciseRouting.for_pool(
        sched.plugins.values(),
        {"pubPortOffset": sim.kv_port - sim.port, "replayPortOffset": sim.replay_port - sim.port},
        "words")
    assert routing is not None
    eps = [Endpoint(host="127.0.0.1", port=sim.port + i) for i in range(sim.replicas)]
    for ep in eps:
        routing.add(ep)
    try:
        chat = {"model": "M", "max_tokens": 2,
                "messages": [{"role": "user", "content": prompt(11, 120)}]}
        async with aiohttp.ClientSession() as s:
            await post(s, sim.url(1), "chat", chat)
        index = routing.scorers[0].index
        await until(lambda: index.size(eps[1].name) >= 7)
        for i in range(5):
            req = parse_request("chat", chat, request_id=f"x{i}")
            assert sched.schedule(req, eps, 0.0).target is eps[1]
            assert req.prefix_cache_hit_ratio == 1.0
        await routing.remove(eps[0].name)
        assert eps[0].name not in routing.managers[0].subscribers
    finally:
        await routing.close()


def test_for_pool_without_precise_scorer_or_with_bad_settings():
    import pytest

    from inferoute.core.errors import ConfigError
    from inferoute.configfiles import resolve_config
    from inferoute.core.scheduling.scheduler import Scheduler
    from inferoute.datalayer.precise_pool import PreciseRouting

    assert PreciseRouting.for_pool(Scheduler(resolve_config("llm-d")).plugins.values()) is None
    plugins = [create_plugin("precise-prefix-cache-scorer", "p", {})]
    with pytest.raises(ConfigError, match="kvEvents"):
        PreciseRouting.for_pool(plugins, {"pubPort": "x"})
    with pytest.raises(ConfigError, match="tokenizer"):
        PreciseRouting.for_pool(plugins, {}, {"path": "/nonexistent/tok"})
    assert PreciseRouting.for_pool(plugins, None, None).tokenizer is None
