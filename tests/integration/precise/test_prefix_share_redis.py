"""Gateway replicas sharing approximate prefix routing and in-flight load through a real
redis-server: two replicas converge to the same index and the same decisions, a late joiner
catches up from the stream, load is summed across replicas, and a dead Redis never fails routing."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis

from inferoute.core.endpoint import Endpoint
from inferoute.core.plugins.blockhash import block_hashes
from inferoute.core.request import InferenceRequest
from inferoute.core.scheduling.config import parse_config
from inferoute.core.scheduling.scheduler import Scheduler
from inferoute.datalayer.prefix_share import PrefixShare, share_scorer_index

from .conftest import free_ports, until

CONFIG = {"plugins": [{"type": "prefix-cache-scorer"}, {"type": "max-score-picker"}],
          "schedulingProfiles": [{"name": "default", "plugins": [
              {"pluginRef": "prefix-cache-scorer", "weight": 1},
              {"pluginRef": "max-score-picker"}]}]}


class Replica:
    """One gateway replica: its own scheduler, endpoint objects and Redis connection."""

    def __init__(self, url: str, model: str, seed: int) -> None:
        self.sched = Scheduler(parse_config(CONFIG), seed=seed)
        self.scorer = self.sched.plugins["prefix-cache-scorer"]
        self.index = share_scorer_index(self.scorer)
        self.eps = [Endpoint(host="10.0.0.1", port=8000 + i) for i in range(4)]
        self.client = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self.share = PrefixShare(self.client, model, self.index, lambda: self.eps,
                                 flush_interval=0.01, inflight_interval=0.05, block_ms=100)

    def route(self, text: str, rid: str, now: float = 0.0) -> Endpoint:
        req = InferenceRequest(request_id=rid, api="completions", model="m", body={},
                               headers={}, prefix_text=text)
        return self.sched.schedule(req, self.eps, now).target

    async def close(self) -> None:
        await self.share.stop()
        await self.client.aclose()


def prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(10_000)}" for _ in range(200)) for _ in range(n)]


def view(rep: Replica, texts: list[str]) -> list[list[int]]:
    names = [e.name for e in rep.eps]
    return [rep.index.match(block_hashes(t, "m", 64, 256), names) for t in texts]


async def test_two_replicas_converge_and_a_late_joiner_catches_up(redis_url):
    model = f"m{random.randrange(10**9)}"
    a, b = Replica(redis_url, model, 1), Replica(redis_url, model, 2)
    texts_a, texts_b = prompts(20, 1), prompts(20, 2)
    try:
        chosen = {t: a.route(t, f"a{i}") for i, t in enumerate(texts_a)}
        for i, t in enumerate(texts_b):
            b.route(t, f"b{i}")
        assert view(a, texts_b) != view(b, texts_b)  # before sharing they disagree
        await a.share.flush()
        await b.share.flush()
        assert await a.share.poll() == 20 and await b.share.poll() == 20
        assert view(a, texts_a + texts_b) == view(b, texts_a + texts_b)
        # B now sends A's prompts where A did, as a single gateway would
        for i, t in enumerate(texts_a[:5]):
            assert b.route(t, f"again{i}").name == chosen[t].name
        c = Replica(redis_url, model, 3)  # starts late
        try:
            await c.share.poll()
            await c.share.poll()  # B's re-routes too
            assert view(c, texts_a + texts_b) == view(a, texts_a + texts_b)
        finally:
            await c.close()
    finally:
        await a.close()
        await b.close()


async def test_running_tasks_share_inserts_and_in_flight_load(redis_url):
    model = f"m{random.randrange(10**9)}"
    a, b = Replica(redis_url, model, 1), Replica(redis_url, model, 2)
    await a.share.start()
    await b.share.start()
    try:
        text = prompts(1, 7)[0]
        target = a.route(text, "r1")
        names = [e.name for e in b.eps]

        hashes = block_hashes(text, "m", 64, 256)
        await until(lambda: max(b.index.match(hashes, names)) == len(hashes))
        assert b.route(text, "r2").name == target.name

        ep_a = a.eps[0]
        for _ in range(3):
            ep_a.on_dispatch(100)
        b.eps[0].on_dispatch(10)  # B's own request there
        await until(lambda: b.eps[0].in_flight_requests == 4)
        assert b.eps[0].in_flight_tokens == 310
        assert b.share.remote_in_flight(ep_a.name) == (3, 300)
        await until(lambda: a.eps[0].in_flight_requests == 4)  # A sees B's one too
        for _ in range(3):
            ep_a.on_finish(100)
        await until(lambda: b.eps[0].in_flight_requests == 1)
        assert a.eps[0].in_flight_requests == 1  # only B's request remains, seen from A
    finally:
        await a.close()
        await b.close()


async def test_redis_down_never_fails_routing():
    port = free_ports(1)  # nothing listens there
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.2,
                               socket_timeout=0.5)
    rep = Replica.__new__(Replica)
    rep.sched = Scheduler(parse_config(CONFIG), seed=1)
    rep.scorer = rep.sched.plugins["prefix-cache-scorer"]
    rep.index = share_scorer_index(rep.scorer)
    rep.eps = [Endpoint(host="10.0.0.1", port=8000 + i) for i in range(2)]
    rep.client = client
    rep.share = PrefixShare(client, "m", rep.index, lambda: rep.eps, retry_delay=0.05)
    await rep.share.start()
    try:
        text = prompts(1, 3)[0]
        first = rep.route(text, "r1")
        await asyncio.sleep(0.3)
        assert rep.route(text, "r2") is first  # local knowledge still routes
        assert rep.share.errors >= 1 and len(rep.index.outbox) >= 1  # kept for later
    finally:
        await asyncio.wait_for(rep.close(), 5)
