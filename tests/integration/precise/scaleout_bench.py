"""Scale-out figures: K picker replicas behind round robin against a live simulated fleet.

Each picker is what one gateway replica runs (its own Scheduler, endpoint objects, and either
KV-event subscribers for precise scoring or a Redis-shared index for approximate scoring);
request i goes to picker i % K, which picks a replica and sends the request there directly.
The fleet's prefix-cache hit rate is the engines' own count (cached prompt tokens / prompt
tokens from the responses' usage).

    python tests/integration/precise/scaleout_bench.py --pickers 1,2,4
    (modes precise, precise-redis: speculative entries shared, approx-redis: index shared,
    approx: nothing shared; the -redis modes need redis-server on PATH)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from inferoute.bench.workloads import shared_prefix
from inferoute.core.endpoint import Endpoint
from inferoute.core.request import parse_request
from inferoute.core.scheduling.config import parse_config
from inferoute.core.scheduling.scheduler import Scheduler
from inferoute.procs import ChildProcess, free_port_range, start_redis


def policy(prefix_type: str) -> dict[str, Any]:
    params = {"speculativeTtl": "2s"} if prefix_type.startswith("precise") else {}
    return {"plugins": [{"type": prefix_type, "parameters": params},
                        {"type": "in-flight-scorer"}, {"type": "max-score-picker"}],
            "schedulingProfiles": [{"name": "default", "plugins": [
                {"pluginRef": prefix_type, "weight": 3},
                {"pluginRef": "in-flight-scorer", "weight": 1},
                {"pluginRef": "max-score-picker"}]}]}


@dataclass
class Picker:
    sched: Scheduler
    eps: list[Endpoint]
    closers: list[Any] = field(default_factory=list)


async def make_picker(mode: str, seed: int, ports: list[int], kv: tuple[int, int],
                      redis_url: str | None, model: str) -> Picker:
    from inferoute.datalayer.precise_pool import PreciseRouting
    from inferoute.datalayer.prefix_share import PrefixShare, share_scorer_index

    eps = [Endpoint(host="127.0.0.1", port=p) for p in ports]
    closers: list[Any] = []
    precise = mode.startswith("precise")
    sched = Scheduler(parse_config(policy("precise-prefix-cache-scorer" if precise
                                          else "prefix-cache-scorer")), seed=seed)
    scorer = next(iter(sched.plugins.values()))
    if mode.endswith("-redis"):
        import redis.asyncio as aioredis

        assert redis_url is not None
        client = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
        # before the subscribers exist: they must feed the shared index
        share = PrefixShare(client, model, share_scorer_index(scorer), lambda: eps,
                            flush_interval=0.005, inflight_interval=0.05, block_ms=100)
        await share.start()
        closers += [share.stop, client.aclose]
    if precise:
        routing = PreciseRouting.for_pool(
            sched.plugins.values(), {"pubPortOffset": kv[0], "replayPortOffset": kv[1]}, "words")
        assert routing is not None
        for ep in eps:
            routing.add(ep)
        closers.insert(0, routing.close)
    return Picker(sched, eps, closers)


def workload(groups: int, per_group: int, system: int, question: int, seed: int) -> list[str]:
    """The package's shared-prefix prompts (words: one token each for the simulator)."""
    return [it.prompt for it in shared_prefix(
        num_groups=groups, num_prompts_per_group=per_group, system_prompt_len=system,
        question_len=question, output_len=1, seed=seed).items]


async def run_fleet(mode: str, k: int, base: str, ports: list[int], kv: tuple[int, int],
                    redis_url: str | None, prompts: list[str], concurrency: int,
                    rate: float | None = None, model: str = "M",
                    seed: int = 0) -> dict[str, float]:
    shared_name = f"{model}-{mode}-{k}-{time.time_ns()}"  # one Redis stream per run
    pickers = [await make_picker(mode, i + 1, ports, kv, redis_url, shared_name)
               for i in range(k)]
    await asyncio.sleep(0.5)  # subscribers connect and catch up
    cached = prompt_tokens = 0
    sem = asyncio.Semaphore(concurrency)
    next_i = 0

    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def one(i: int, text: str) -> None:
                nonlocal cached, prompt_tokens
                async with sem:
                    p = pickers[i % k]
                    body = {"model": model, "prompt": text, "max_tokens": 4}
                    req = parse_request("completions", body, request_id=f"{mode}{k}-{i}",
                                        arrival_time=time.monotonic())
                    now = time.monotonic()
                    target = p.sched.schedule(req, p.eps, now).target
                    target.on_dispatch(req.prompt_tokens_estimate)
                    try:
                        async with session.post(target.url + "/v1/completions", json=body) as r:
                            out = await r.json()
                    finally:
                        target.on_finish(req.prompt_tokens_estimate)
                        p.sched.on_finished(req, target, time.monotonic(), None)
                    usage = out["usage"]
                    prompt_tokens += usage["prompt_tokens"]
                    cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0

            tasks = []
            arrivals = random.Random(seed)
            for text in prompts:
                tasks.append(asyncio.create_task(one(next_i, text)))
                next_i += 1
                if rate:  # Poisson arrivals; without a rate, a burst limited by `concurrency`
                    await asyncio.sleep(arrivals.expovariate(rate))
            await asyncio.gather(*tasks)
    finally:  # even when a request failed: no redis tasks or subscribers left behind
        for p in pickers:
            for close in p.closers:
                await close()
    return {"hit_rate": cached / prompt_tokens if prompt_tokens else 0.0,
            "requests": float(len(prompts))}


def start_sim(replicas: int, profile: str,
              time_scale: float) -> tuple[subprocess.Popen[str], int, int]:
    """A simulated fleet with KV events; (its process, first port, first KV-event port)."""
    port, kv = free_port_range(replicas), free_port_range(2 * replicas)
    child = ChildProcess.inferoute(
        "sim", "--model", "M", "--port", str(port), "--replicas", str(replicas),
        "--profile", profile, "--time-scale", str(time_scale), "--kv-events",
        "--kv-events-port", str(kv), "--kv-replay-port", str(kv + replicas))
    child.wait_for_line("serving")
    return child.proc, port, kv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pickers", default="1,2,4")
    ap.add_argument("--modes", default="precise,precise-redis,approx-redis,approx")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--profile", default="llama3-8b-h100")
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--groups", type=int, default=24)
    ap.add_argument("--per-group", type=int, default=6)
    ap.add_argument("--system", type=int, default=800)
    ap.add_argument("--question", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", type=float, default=20.0,
                    help="Poisson arrival rate, requests/s (0: one burst)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    workdir = tempfile.TemporaryDirectory()
    redis = start_redis(Path(workdir.name))
    redis_url = None if redis is None else redis.url
    try:
        for mode in args.modes.split(","):
            if mode.endswith("-redis") and redis_url is None:
                print(f"{mode}: skipped (redis-server not on PATH)")
                continue
            for k in (int(x) for x in args.pickers.split(",")):
                # a fresh fleet per run: every run starts from empty caches
                proc, port, kv = start_sim(args.replicas, args.profile, args.time_scale)
                try:
                    ports = [port + i for i in range(args.replicas)]
                    prompts = workload(args.groups, args.per_group, args.system, args.question,
                                       args.seed)
                    t0 = time.monotonic()
                    res = asyncio.run(run_fleet(mode, k, "", ports, (kv - port,
                                                kv + args.replicas - port), redis_url, prompts,
                                                args.concurrency, args.rate or None,
                                                seed=args.seed))
                    print(f"{mode:13s} pickers={k} requests={int(res['requests'])} "
                          f"fleet_hit_rate={res['hit_rate']:.4f} wall={time.monotonic() - t0:.1f}s",
                          flush=True)
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
    finally:
        if redis is not None:
            redis.stop()
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
