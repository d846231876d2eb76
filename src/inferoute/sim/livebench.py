"""`inferoute sim bench-live`: does one simulator process keep up with real-time streaming?

Starts `inferoute sim` with N replicas in a child process (pinned to one CPU core when the
machine has more than one), drives it with C concurrent streaming clients (pinned to another
core) for a while, then compares every request's observed inter-token latency (client side,
time between the first and last token chunks / (tokens - 1)) with the model's (the engine step
durations that produced those tokens, from `GET /admin/timings`). It prints the ratio
distribution, the share of requests within 10% of the model, and the server's CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ..procs import ChildProcess, free_port_range


@dataclass
class _Result:
    rid: str
    port: int
    times: list[float] = field(default_factory=list)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / ticks


async def _client(session: aiohttp.ClientSession, ports: list[int], worker: int, body: bytes,
                  stop_at: float, out: list[_Result], errors: list[str]) -> None:
    loop = asyncio.get_running_loop()
    k = worker
    while loop.time() < stop_at:
        port = ports[k % len(ports)]
        k += 1
        res: _Result | None = None
        try:
            async with session.post(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                    headers={"Content-Type": "application/json"}) as r:
                if r.status != 200:
                    await r.read()
                    errors.append(f"HTTP {r.status}")
                    continue
                async for line in r.content:
                    if not line.startswith(b"data: {"):
                        continue
                    now = loop.time()
                    if res is None:
                        rid = orjson.loads(line[6:])["id"].removeprefix("cmpl-")
                        res = _Result(rid, port)
                    res.times.append(now)
        except aiohttp.ClientError as exc:
            errors.append(type(exc).__name__)
            continue
        if res is not None:
            out.append(res)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _drive(ports: list[int], args: argparse.Namespace, pid: int) -> dict[str, Any]:
    prompt = " ".join(f"w{i % 997}" for i in range(args.prompt_words))
    results: list[_Result] = []
    errors: list[str] = []
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + args.duration
        bodies = [orjson.dumps({"model": "bench-model", "prompt": f"c{i} " + prompt,
                                "max_tokens": args.output_tokens, "ignore_eos": True,
                                "stream": True}) for i in range(args.concurrency)]
        warm = min(5.0, args.duration / 4)
        tasks = [asyncio.create_task(_client(s, ports, i, bodies[i], stop_at, results,
                                                   errors))
                 for i in range(args.concurrency)]
        await asyncio.sleep(warm)
        cpu0, wall0 = _cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        cpu1, wall1 = _cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*tasks, return_exceptions=True)
        timings: dict[str, dict[str, Any]] = {}
        runner_stats = []
        for port in ports:
            async with s.get(f"http://127.0.0.1:{port}/admin/timings") as r:
                timings.update(await r.json())
            async with s.get(f"http://127.0.0.1:{port}/admin/stats") as r:
                runner_stats.append((await r.json())["runner"])
    ratios, observed, model = [], [], []
    for res in results:
        t = timings.get(res.rid)
        n = len(res.times)
        if t is None or n < 3 or t["tokens"] != n:
            continue
        obs = (res.times[-1] - res.times[0]) / (n - 1)
        mod = (t["model_last"] - t["model_first"]) * t["scale"] / (n - 1)
        if mod > 0:
            ratios.append(obs / mod)
            observed.append(obs)
            model.append(mod)
    within = sum(1 for r in ratios if abs(r - 1) <= 0.10)
    return {"requests": len(results), "errors": len(errors), "matched": len(ratios),
            "median_observed_itl_ms": 1e3 * statistics.median(observed) if observed else None,
            "median_model_itl_ms": 1e3 * statistics.median(model) if model else None,
            "ratio_p10": _pct(ratios, 0.10) if ratios else None,
            "ratio_p50": _pct(ratios, 0.50) if ratios else None,
            "ratio_p90": _pct(ratios, 0.90) if ratios else None,
            "ratio_max": max(ratios) if ratios else None,
            "within_10pct": within / len(ratios) if ratios else None,
            "server_cpu_fraction": (cpu1 - cpu0) / (wall1 - wall0),
            "tokens_per_s": sum(len(r.times) for r in results) / args.duration,
            "resyncs": sum(st["resyncs"] for st in runner_stats),
            "max_wakeup_lateness_ms": 1e3 * max(st["max_wakeup_lateness_s"]
                                                for st in runner_stats),
            "mean_wakeup_lateness_ms": 1e3 * statistics.mean(st["mean_wakeup_lateness_s"]
                                                             for st in runner_stats)}


def run_bench_live(args: argparse.Namespace) -> int:
    """Start the simulator, drive it, print the figures; 0 if within 10% for >= 90% of requests."""
    base = free_port_range(args.replicas)
    cmd = [sys.executable, "-m", "inferoute", "sim", "--model", "bench-model", "--port", str(base),
           "--replicas", str(args.replicas), "--profile", args.bench_profile,
           "--time-scale", str(args.bench_time_scale)]
    ncpu = os.cpu_count() or 1
    server_core = {0} if ncpu > 1 else None
    if ncpu > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(1, ncpu)))     # the client stays off the server's core
    preexec = (lambda: os.sched_setaffinity(0, server_core)) if server_core else None
    sim = ChildProcess(cmd, name="inferoute sim", preexec_fn=preexec, keep=200)
    try:
        try:
            line = sim.wait_for_line("serving", 60)
        except RuntimeError as exc:
            print(f"bench-live: the simulator did not start: {exc}", file=sys.stderr)
            return 1
        print(line.strip())
        try:
            import uvloop
            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            fig = runner.run(_drive([base + i for i in range(args.replicas)], args, sim.pid))
    finally:
        sim.stop(signal.SIGINT)
    pinned = "pinned to 1 core" if server_core else "unpinned (1-CPU machine)"
    print(f"{args.replicas} replicas ({args.bench_profile}, time scale {args.bench_time_scale:g}), "
          f"{args.concurrency} concurrent streams, {args.prompt_words}-word prompts, "
          f"{args.output_tokens} output tokens, {args.duration:g} s; server {pinned}")
    for key, value in fig.items():
        print(f"  {key:26s} {value:.4g}" if isinstance(value, float) else f"  {key:26s} {value}")
    ok = fig["within_10pct"] is not None and fig["within_10pct"] >= 0.9
    print("  verdict: token timing within 10% of the model for "
          f"{100 * (fig['within_10pct'] or 0):.1f}% of requests -> {'OK' if ok else 'NOT OK'}")
    return 0 if ok else 1

