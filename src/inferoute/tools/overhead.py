"""`inferoute overhead`: how much latency and CPU the gateway adds, measured in one run.

It starts a stand-in model server (`standin.py`, answers at once) and `inferoute serve` in
front of it, each as its own process, then sends non-streaming completions at a fixed rate to
the gateway and, offset by half a period, the same requests directly to the server. Both
latency distributions come from the same run on the same machine, so the difference of their
percentiles is the gateway's cost (parse, schedule, proxy, account). It also reports the
gateway process's CPU use during the load, its CPU per relayed SSE event (streams from a second
stand-in that sends an event every 5 ms), the CPU cost of scraping 16 endpoints every 50 ms,
and the scheduling decision latency for an 8k-token prompt with 16 endpoints
(`inferoute.bench.decision`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import aiohttp
import yaml

from ..aiotasks import run_async
from ..procs import ChildProcess, free_port


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))]


@dataclass
class Latencies:
    direct_ms: list[float]
    gateway_ms: list[float]
    errors: int
    gateway_user: float
    gateway_sys: float
    seconds: float


async def _load(direct: str, gateway: str, rate: float, duration: float, prompt_chars: int,
                gateway_pid: int) -> Latencies:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        words = " ".join(f"word{i}" for i in range(prompt_chars // 6 + 1))[:prompt_chars]
        direct_ms: list[float] = []
        gateway_ms: list[float] = []
        errors = 0

        async def one(base: str, out: list[float] | None, i: int) -> None:
            nonlocal errors
            body = {"model": "m", "prompt": f"{i} {words}", "max_tokens": 8}
            t0 = time.perf_counter()
            try:
                async with session.post(base + "/v1/completions", json=body) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            if not ok:
                errors += 1
            elif out is not None:
                out.append((time.perf_counter() - t0) * 1e3)

        loop = asyncio.get_running_loop()
        period = 1.0 / rate
        warmup = min(1.0, duration / 5)
        tasks: list[asyncio.Task[None]] = []
        start = loop.time()
        cpu0 = None
        i = 0
        while True:
            t = start + i * period
            if t - start >= warmup + duration:
                break
            measuring = t - start >= warmup
            if measuring and cpu0 is None:
                cpu0 = _cpu_seconds(gateway_pid), time.monotonic()
            delay = t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(gateway, gateway_ms if measuring else None, i)))
            delay = t + period / 2 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(direct, direct_ms if measuring else None, i)))
            i += 1
        await asyncio.gather(*tasks)
        assert cpu0 is not None
        (u0, s0), t0 = cpu0
        u1, s1 = _cpu_seconds(gateway_pid)
        wall = time.monotonic() - t0
        return Latencies(direct_ms, gateway_ms, errors, (u1 - u0) / wall, (s1 - s0) / wall,
                         duration)


async def _scrape_cost(port: int, endpoints: int = 16, interval: float = 0.05,
                       seconds: float = 3.0) -> tuple[float, float]:
    """(user, system) CPU fractions of one core this process spends scraping `endpoints`
    pages every `interval` (all pointed at the stand-in, which serves a vLLM-sized page)."""
    from ..core.endpoint import Endpoint
    from ..datalayer.scrape import Scraper

    eps = [Endpoint(host="127.0.0.1", port=port) for _ in range(endpoints)]
    scrapers = [Scraper(ep, interval=interval, engine="vllm") for ep in eps]
    for s in scrapers:
        s.start()
    await asyncio.sleep(0.5)
    c0, t0 = os.times(), time.monotonic()
    await asyncio.sleep(seconds)
    c1, wall = os.times(), time.monotonic() - t0
    cpu = ((c1.user - c0.user) / wall, (c1.system - c0.system) / wall)
    for s in scrapers:
        await s.stop()
    if not all(ep.metrics.scraped_at for ep in eps) or any(s.failures for s in scrapers):
        raise RuntimeError("some scrapes failed")
    return cpu


async def _stream_cost(gateway: str, gateway_pid: int, streams: int = 80,
                       concurrency: int = 16, tokens: int = 200) -> tuple[float, int]:
    """Gateway CPU microseconds per relayed SSE event, over `streams` streams of `tokens`
    events each from a stand-in that sends one event every 5 ms (so every event is its own
    chunk, as from a real model server)."""
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        sem = asyncio.Semaphore(concurrency)
        events = 0

        async def one(i: int) -> None:
            nonlocal events
            async with sem:
                async with session.post(gateway + "/v1/completions", json={
                        "model": "slow", "prompt": f"{i}", "max_tokens": tokens,
                        "stream": True}) as r:
                    async for line in r.content:
                        if line.startswith(b"data: {"):
                            events += 1

        u0, s0 = _cpu_seconds(gateway_pid)
        await asyncio.gather(*(one(i) for i in range(streams)))
        u1, s1 = _cpu_seconds(gateway_pid)
    if not events:
        raise RuntimeError("no stream events came through the gateway")
    return (u1 - u0 + s1 - s0) / events * 1e6, events


def main(args: argparse.Namespace) -> int:

    server_port, slow_port, gw_port = free_port(), free_port(), free_port()
    server = ChildProcess.module("inferoute.tools.standin", "--port", str(server_port),
                                 "--model", "m", keep=200)
    slow = ChildProcess.module("inferoute.tools.standin", "--port", str(slow_port),
                               "--model", "slow", "--token-delay", "0.005", keep=200)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump({"host": "127.0.0.1", "port": gw_port, "pools": [
            {"model": "m", "endpoints": [f"http://127.0.0.1:{server_port}"],
             "scheduler": args.scheduler},
            {"model": "slow", "endpoints": [f"http://127.0.0.1:{slow_port}"],
             "scheduler": args.scheduler}]}, fh)
    gateway = ChildProcess.inferoute("serve", "--config", fh.name, "--log-level", "warning",
                                     keep=200)
    children = (gateway, server, slow)
    try:
        server.wait_for_http(f"http://127.0.0.1:{server_port}/health", 20)
        gateway.wait_for_http(f"http://127.0.0.1:{gw_port}/ready", 20)
        res: Latencies = run_async(_load(
            f"http://127.0.0.1:{server_port}", f"http://127.0.0.1:{gw_port}", args.rate,
            args.duration, args.prompt_chars, gateway.pid))
        per_event, events = run_async(_stream_cost(f"http://127.0.0.1:{gw_port}",
                                                   gateway.pid))
        gateway.stop(timeout=5)
        scrape_cpu = run_async(_scrape_cost(server_port))
    except RuntimeError as exc:
        print(f"inferoute overhead: {exc}", file=sys.stderr)
        for child in children:
            child.stop(timeout=5)
            if (out := child.tail()) and out not in str(exc):
                print(f"-- {child.name}:\n{out}", file=sys.stderr)
        return 1
    finally:
        for child in children:
            child.stop(timeout=5)
        os.unlink(fh.name)
    d, g = sorted(res.direct_ms), sorted(res.gateway_ms)
    if not d or not g:
        print("inferoute overhead: no successful requests", file=sys.stderr)
        return 1
    print(f"load: {args.rate:g} req/s through the gateway + {args.rate:g} req/s direct, "
          f"{res.seconds:g} s, {len(g)} + {len(d)} requests measured, {res.errors} errors, "
          f"{args.prompt_chars}-char prompts, 8 output tokens, non-streaming")
    print(f"direct   latency: p50 {statistics.median(d):.3f} ms  p99 {_pct(d, 0.99):.3f} ms")
    print(f"gateway  latency: p50 {statistics.median(g):.3f} ms  p99 {_pct(g, 0.99):.3f} ms")
    print(f"added by gateway: p50 {statistics.median(g) - statistics.median(d):.3f} ms  "
          f"p99 {_pct(g, 0.99) - _pct(d, 0.99):.3f} ms")
    print(f"gateway CPU: {(res.gateway_user + res.gateway_sys) * 100:.1f}% of one core at "
          f"{args.rate:g} req/s (user {res.gateway_user * 100:.1f}%, kernel "
          f"{res.gateway_sys * 100:.1f}%; includes scraping its 2 endpoints)")
    print(f"streaming relay: {per_event:.1f} us of gateway CPU per SSE event "
          f"({events} events, 16 concurrent streams, one event per chunk)")
    print(f"scraping 16 endpoints every 50 ms: {sum(scrape_cpu) * 100:.1f}% of one core "
          f"(user {scrape_cpu[0] * 100:.1f}%, kernel {scrape_cpu[1] * 100:.1f}%; "
          "~20 kB vLLM-format pages)")
    if not args.skip_decision:
        try:
            from ..bench.decision import decision_costs
        except ImportError:
            print("scheduling decision latency: inferoute.bench.decision is not available")
        else:
            print(decision_costs([args.scheduler]))  # 8k/32k/100k-token prompts, 16 endpoints
    return 0 if res.errors == 0 else 1


def register(sub: argparse._SubParsersAction) -> None:
    o = sub.add_parser(
        "overhead", help="measure the latency the gateway adds and the scheduling decision time",
        description="Start a stand-in model server and the gateway in front of it, send "
                    "requests at a fixed rate alternately direct and through the gateway, and "
                    "print both latency distributions; then time scheduling decisions for an "
                    "8k-token prompt with 16 endpoints.")
    o.add_argument("--rate", type=float, default=200.0, help="gateway requests/s (the same "
                   "number again goes direct, interleaved; default 200)")
    o.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    o.add_argument("--scheduler", default=None, help="policy for the gateway (default: serve's, "
                   "inferoute)")
    o.add_argument("--prompt-chars", type=int, default=2000,
                   help="prompt size of the measured requests (default 2000 chars)")
    o.add_argument("--skip-decision", action="store_true",
                   help="do not run the scheduling-decision benchmark")
    o.set_defaults(func=main)
