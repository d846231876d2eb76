"""KV events the other way round: the pool binds one SUB socket and the engines connect their PUB
sockets to it (vLLM's `endpoint` without a `*`; `inferoute sim --kv-events-connect`). Each
message's topic (`kv@<host:port>@<model>`) routes it to its endpoint; each endpoint keeps its own
sequence and replay socket, so one that published before the pool bound is caught up."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from inferoute.core.endpoint import parse_endpoint
from inferoute.core.kvindex import KVBlockIndex
from inferoute.datalayer.kvevents import (
    KVEventManager,
    KVEventsConfig,
    endpoint_for_topic,
)
from inferoute.procs import ChildProcess

from .conftest import free_ports, until


def test_topics_name_their_endpoint():
    names = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.2:8001"]
    assert endpoint_for_topic("kv@10.0.0.1:8000@m", names) == "10.0.0.1:8000"
    assert endpoint_for_topic("10.0.0.2:8001", names) == "10.0.0.2:8001"
    assert endpoint_for_topic("kv@10.0.0.1@m", names) == "10.0.0.1:8000"   # one on that host
    assert endpoint_for_topic("kv@10.0.0.2@m", names) is None              # two: ambiguous
    assert endpoint_for_topic("kv-events", names) is None


async def _heard(cond: Callable[[], bool], timeout: float = 1.0) -> bool:
    """Whether `cond` holds within `timeout` seconds (polled every 20 ms)."""
    try:
        await until(cond, timeout)
    except AssertionError:
        return False
    return True


async def _complete(url: str, prompt: str) -> None:
    body = {"model": "M", "prompt": prompt, "max_tokens": 2}
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200


async def test_engines_connect_to_the_pools_bound_socket():
    port, bound, replay = free_ports(2), free_ports(1), free_ports(2)
    sim = ChildProcess.inferoute(
        "sim", "--model", "M", "--port", str(port), "--replicas", "2", "--profile", "tiny",
        "--kv-events", "--kv-events-connect", f"tcp://127.0.0.1:{bound}",
        "--kv-replay-port", str(replay))
    sim.wait_for_line("serving", 30)
    urls = [f"http://127.0.0.1:{port + i}" for i in range(2)]
    eps = [parse_endpoint(u) for u in urls]
    index = KVBlockIndex()
    manager = KVEventManager(index, KVEventsConfig(bind=f"tcp://127.0.0.1:{bound}",
                                                   replayPortOffset=replay - port))
    try:
        # replica 0 publishes before anyone binds: the replay catches the subscriber up
        await _complete(urls[0], " ".join(f"early{i}" for i in range(48)))
        for ep in eps:
            manager.add(ep)
        await until(lambda: index.size(eps[0].name) >= 3)
        # an engine's PUB reconnects every 100 ms, and a PUB drops what it sends before the
        # subscription reaches it: replica 1 publishes until the pool hears it
        for attempt in range(100):
            await _complete(urls[1], " ".join(f"one{attempt}x{i}" for i in range(48)))
            if await _heard(lambda: index.size(eps[1].name) > 0):
                break
        else:
            raise AssertionError("replica 1's events never reached the bound socket")
        before = index.size(eps[1].name)
        # then both publish through it, each to its own endpoint (replica 0's first batch after
        # the replay fills no gap: it follows the replayed one)
        await _complete(urls[0], " ".join(f"zero{i}" for i in range(48)))
        await _complete(urls[1], " ".join(f"one{i}" for i in range(48)))
        await until(lambda: index.size(eps[0].name) == 6
                    and index.size(eps[1].name) == before + 3)
        assert manager.unrouted == 0
        subs = manager.subscribers
        assert subs[eps[0].name].stats.replayed >= 1 and subs[eps[1].name].stats.batches >= 1
        assert all(s.stats.malformed == 0 and s.stats.resyncs == 0 for s in subs.values())
    finally:
        await manager.close()
        assert sim.stop() == 0
        assert "Traceback" not in sim.log()
