"""The real-time runner around the tiny engine (asyncio, no sockets).

The tiny profile's steps last about a millisecond; a time scale of 0.01 keeps the tests fast.
No assertion here depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio

from inferoute.sim import tokenizer
from inferoute.sim.engine import Engine, SimRequest
from inferoute.sim.metrics import ReplicaMetrics
from inferoute.sim.profile import load_profile
from inferoute.sim.runner import EngineRunner


def _runner(scale: float = 0.01, kv_events: bool = False, **kw) -> EngineRunner:
    engine = Engine(load_profile("tiny"), seed=3, kv_events=kv_events)
    return EngineRunner(engine, time_scale=scale, kv_events=kv_events, **kw)


def _req(rid: str, n_prompt: int = 20, max_tokens: int = 5, **kw) -> SimRequest:
    ids = tokenizer.encode(" ".join(f"{rid}-{i}" for i in range(n_prompt)))
    return SimRequest(request_id=rid, prompt_tokens=ids, max_tokens=max_tokens,
                      ignore_eos=True, **kw)


async def _drain(handle) -> list:
    outs: list = []
    while not (outs and outs[-1].finished):
        outs += await handle.next_outputs()
    return outs


async def test_outputs_arrive_in_order_and_finish():
    r = _runner()
    r.start()
    try:
        handles = [r.submit(_req(f"r{i}", max_tokens=4 + i)) for i in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*(_drain(h) for h in handles)), 10)
        for i, (h, outs) in enumerate(zip(handles, results)):
            assert sum(o.new_tokens for o in outs) == h.generated == 4 + i
            assert outs[0].first and outs[-1].finished and h.finish_reason == "length"
            assert h.prompt_tokens == 20 and h.cached_tokens == 0
        assert not r.engine.has_work()
        assert r.stats.steps > 0
        timings = r.timings()
        assert set(timings) == {"r0", "r1", "r2"}
        t = timings["r2"]
        assert t["tokens"] == 6 and t["model_last"] > t["model_first"]
    finally:
        await r.stop()


async def test_model_time_advances_by_step_durations():
    """Model timestamps of a request's tokens are sums of the engine's step durations, so the
    runner's clock is the model's clock (scaled), whatever the wake-up jitter."""
    r = _runner(scale=0.05, max_lag=1e9)     # never resynchronise, however late the loop
    r.start()
    try:
        h = r.submit(_req("solo", max_tokens=6))
        await asyncio.wait_for(_drain(h), 10)
        t = r.timings()["solo"]
        decode_step = r.engine.timing.step_seconds(1, 1, 21, 0.0, 0)
        assert t["model_last"] - t["model_first"] > 0
        # five decode steps at about the same context length
        assert abs((t["model_last"] - t["model_first"]) / 5 - decode_step) < 0.2 * decode_step
    finally:
        await r.stop()


async def test_abort_frees_the_engine_and_is_counted():
    r = _runner(scale=1.0)
    m = ReplicaMetrics("m", r.engine.stats, block_size=16, num_gpu_blocks=64, max_model_len=1024)
    r.metrics = m
    r.start()
    try:
        h = r.submit(_req("long", max_tokens=500))
        await h.next_outputs()
        r.abort("long")
        assert h.finished and h.finish_reason == "abort"
        r.abort("long")                      # idempotent
        stats = r.engine.stats()
        assert stats.running == 0 and stats.waiting == 0
        assert m.success["abort"]._value.get() == 1
    finally:
        await r.stop()


async def test_kv_events_are_published_per_step():
    batches: list[list] = []
    r = _runner(kv_events=True, publish=batches.append)
    r.start()
    try:
        h = r.submit(_req("kv", n_prompt=40, max_tokens=2))
        await asyncio.wait_for(_drain(h), 10)
    finally:
        await r.stop()
    stored = [ev for b in batches for ev in b if type(ev).__name__ == "BlockStored"]
    assert sum(len(ev.block_hashes) for ev in stored) == 2   # 40 + 2 tokens: two full blocks


async def test_time_scale_change_keeps_model_time_continuous():
    r = _runner(scale=1.0)
    r.start()
    try:
        before = r.model_now()
        r.time_scale = 0.5
        after = r.model_now()
        assert after >= before and after - before < 0.1
    finally:
        await r.stop()
