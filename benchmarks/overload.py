"""Overload benchmark: offered load at 2x capacity with mixed priorities, admission on vs off.

    python benchmarks/overload.py [--replicas 2] [--time-scale 10] [--duration 6] [--load 2.0]
                                  [--queue-depth N] [--reserve N] [--admission-only]

Starts `inferoute sim` (tiny replicas, slowed by --time-scale so a 2-core machine keeps up) and
`inferoute serve` in front of it, as real processes on 127.0.0.1. Capacity is measured, not
assumed: one request's end-to-end time alone gives `replicas x max_num_seqs / e2e` requests/s.
Then the same seeded Poisson arrivals at `--load` x capacity (20% critical, 40% standard, 40%
sheddable, chosen by `x-gateway-inference-objective`; streaming completions of fixed length)
go through the gateway twice: with an `admission:` section (flow control + shedding; the
saturation detector's `queueDepthThreshold` the product's default unless --queue-depth sets
it; `flowControl.reserve`, the batch slots kept free on each replica for the top priority,
the product's default `auto` unless --reserve sets a number) and without one. Prints, per
run and objective: requests, completed, shed (429 with Retry-After), other failures, and
client-side TTFT p50/p90; and critical TTFT p90 against its unloaded value (critical requests
one at a time through the same gateway, before the load): the target is at most 2x with
admission on.

`run()` is also used by tests/integration/reliability/test_overload_admission.py.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import yaml

from inferoute.core.metricsparse import find_samples
from inferoute.procs import ChildProcess, free_port, free_port_range

MODEL = "sim-model"
MAX_NUM_SEQS = 8  # the tiny profile's batch limit
OBJECTIVES = [{"name": "critical", "priority": 10}, {"name": "standard", "priority": 0},
              {"name": "sheddable", "priority": -1}]
MIX = [("critical", 0.2), ("standard", 0.4), ("sheddable", 0.4)]
UNLOADED_SAMPLES = 30  # the reference p90: 10 samples moved it by +-20% from run to run


@dataclass
class Result:
    objective: str
    status: int = 0
    ttft: float | None = None
    complete: bool = False
    retry_after: str | None = None
    error: str | None = None

    @property
    def shed(self) -> bool:
        return self.status == 429 and self.retry_after is not None

    @property
    def failed(self) -> bool:
        return not self.complete and not self.shed


@dataclass
class Run:
    admission: bool
    capacity: float
    rate: float
    results: list[Result] = field(default_factory=list)
    #: critical TTFTs one request at a time through the same gateway, before the load
    unloaded: list[float] = field(default_factory=list)
    #: the gateway's `inferoute_flow_control_reserved_slots` once the load is over (None:
    #: admission off)
    reserved: float | None = None
    #: critical requests of the load that found no free batch slot, and all of them, by the
    #: gateway's counters (admission on)
    without_slot: tuple[float, float] | None = None

    def of(self, objective: str) -> list[Result]:
        return [r for r in self.results if r.objective == objective]


def _spawn(*args: str) -> ChildProcess:
    """`python -m inferoute ARGS`, without a developer's INFEROUTE_API_KEYS."""
    return ChildProcess.inferoute(*args, unset_env=("INFEROUTE_API_KEYS",))


async def _one(session: aiohttp.ClientSession, url: str, objective: str, i: int,
               max_tokens: int) -> Result:
    body = {"model": MODEL, "prompt": f"question {i}: " + " ".join(["word"] * 20),
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    res = Result(objective)
    t0 = time.perf_counter()
    try:
        async with session.post(url + "/v1/completions", data=orjson.dumps(body), headers={
                "Content-Type": "application/json",
                "x-gateway-inference-objective": objective}) as r:
            res.status = r.status
            res.retry_after = r.headers.get("Retry-After")
            if r.status != 200:
                res.error = (await r.read()).decode(errors="replace")[:200]
                return res
            buf = b""
            async for chunk in r.content.iter_any():
                if res.ttft is None:
                    res.ttft = time.perf_counter() - t0
                buf += chunk
            events = [line[5:].strip() for line in buf.split(b"\n") if line.startswith(b"data:")]
            res.complete = bool(events) and events[-1] == b"[DONE]" and not any(
                e.startswith(b'{"error"') for e in events)
            if not res.complete:
                res.error = "stream ended without a clean [DONE]"
    except (TimeoutError, aiohttp.ClientError) as exc:
        res.error = type(exc).__name__
    return res


async def _drive(url: str, rate: float, duration: float, max_tokens: int, seed: int
                 ) -> list[Result]:
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        x, acc = rng.random(), 0.0
        for name, share in MIX:
            acc += share
            if x < acc:
                break
        arrivals.append((t, name))
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        tasks = []
        for i, (at, name) in enumerate(arrivals):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, url, name, i, max_tokens)))
        return list(await asyncio.gather(*tasks))


FLOW_METRICS = ("inferoute_flow_control_reserved_slots",
                "inferoute_flow_control_top_priority_without_free_slot_total",
                "inferoute_flow_control_top_priority_requests_total")


async def _flow_metrics(url: str) -> dict[str, float]:
    """The pool's flow-control figures by the gateway's /metrics (FLOW_METRICS, when
    exported)."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as r:
        page = await r.text()
    return {name: smp.value for name in FLOW_METRICS for smp in find_samples(page, name)
            if smp.labels.get("inference_pool") == MODEL}


async def _capacity(url: str, replicas: int, max_tokens: int) -> float:
    """Requests/s the replicas complete at full batch: replicas x seqs / one request's e2e."""
    async with aiohttp.ClientSession() as session:
        e2e = []
        for i in range(2):
            t0 = time.perf_counter()
            r = await _one(session, url, "critical", 10_000 + i, max_tokens)
            assert r.complete, r
            e2e.append(time.perf_counter() - t0)
    return replicas * MAX_NUM_SEQS / min(e2e)


async def _unloaded(url: str, max_tokens: int, n: int = UNLOADED_SAMPLES) -> list[float]:
    """TTFT of `n` critical requests sent one at a time (nothing else running)."""
    async with aiohttp.ClientSession() as session:
        out = []
        for i in range(n):
            r = await _one(session, url, "critical", 20_000 + i, max_tokens)
            assert r.complete and r.ttft is not None, r
            out.append(r.ttft)
    return out


def run(*, replicas: int = 2, time_scale: float = 10.0, duration: float = 6.0,
        load: float = 2.0, max_tokens: int = 24, seed: int = 1, queue_depth: int | None = None,
        scrape_interval: str = "50ms", modes: tuple[bool, ...] = (True, False),
        reserve: int | str = "auto", reserve_miss: float | None = None) -> list[Run]:
    """One run per mode (admission on/off) with the same arrivals; processes are stopped and
    their stderr checked for tracebacks. `queue_depth` None: the product's default threshold."""
    out: list[Run] = []
    capacity = 0.0
    base = free_port_range(replicas)
    sim = _spawn("sim", "--model", MODEL, "--port", str(base), "--replicas", str(replicas),
                 "--profile", "tiny", "--time-scale", str(time_scale), "--seed", str(seed))
    logs = ""
    try:
        for admission in modes:
            gw_port = free_port()
            cfg: dict = {"host": "127.0.0.1", "port": gw_port, "scrapeInterval": scrape_interval,
                         "pools": [{"model": MODEL, "endpoints": [
                             f"http://127.0.0.1:{base + i}" for i in range(replicas)]}]}
            if admission:
                cfg["admission"] = {"objectives": OBJECTIVES, "defaultObjective": "standard",
                                    "flowControl": {"ttl": "60s", "retryAfter": "1s",
                                                    "reserve": reserve}}
                if reserve_miss is not None:
                    cfg["admission"]["flowControl"]["reserveMiss"] = reserve_miss
                if queue_depth is not None:
                    cfg["admission"]["saturationDetector"] = {"queueDepthThreshold": queue_depth}
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
                yaml.safe_dump(cfg, fh)
            gw = _spawn("serve", "--config", fh.name, "--log-level", "error")
            url = f"http://127.0.0.1:{gw_port}"

            async def go(url: str, admission: bool, capacity: float) -> Run:
                cap = capacity or await _capacity(url, replicas, max_tokens)
                idle = await _unloaded(url, max_tokens)
                before = await _flow_metrics(url)
                res = await _drive(url, load * cap, duration, max_tokens, seed)
                after = await _flow_metrics(url)
                run_ = Run(admission, cap, load * cap, res, idle)
                if admission:
                    run_.reserved = after.get(FLOW_METRICS[0])
                    missed, all_ = (after.get(m, 0.0) - before.get(m, 0.0)
                                    for m in FLOW_METRICS[1:])
                    run_.without_slot = (missed, all_)
                return run_

            try:
                for i in range(replicas):
                    sim.wait_for_http(f"http://127.0.0.1:{base + i}/health")
                gw.wait_for_http(url + "/ready")
                r = asyncio.run(go(url, admission, capacity))
            finally:
                gw.stop(timeout=15)
                logs += gw.log()
                Path(fh.name).unlink(missing_ok=True)
            capacity = r.capacity  # the second run offers exactly the same load
            out.append(r)
    finally:
        sim.stop(timeout=15)
        logs += sim.log()
    if "Traceback" in logs:
        raise RuntimeError("a process logged a traceback:\n" + logs)
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, round(q / 100 * len(v) + 0.5) - 1))
    return v[k]


def table(runs: list[Run]) -> str:
    lines = [("| admission | objective | requests | completed | shed 429 | failed | "
              "TTFT p50 s | TTFT p90 s |"), "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run_ in runs:
        for name, _ in MIX:
            rs = run_.of(name)
            ttfts = [r.ttft for r in rs if r.complete and r.ttft is not None]
            p50, p90 = percentile(ttfts, 50), percentile(ttfts, 90)
            lines.append(
                f"| {'on' if run_.admission else 'off'} | {name} | {len(rs)} | "
                f"{sum(r.complete for r in rs)} | {sum(r.shed for r in rs)} | "
                f"{sum(r.failed for r in rs)} | "
                f"{'-' if p50 is None else f'{p50:.3f}'} | {'-' if p90 is None else f'{p90:.3f}'} |")
    return "\n".join(lines)


def critical_ratio(run_: Run) -> tuple[float | None, float | None, float | None]:
    """(unloaded critical TTFT p90, loaded critical TTFT p90, loaded / unloaded)."""
    idle = percentile(run_.unloaded, 90)
    loaded = percentile([r.ttft for r in run_.of("critical") if r.complete and r.ttft], 90)
    ratio = loaded / idle if idle and loaded is not None else None
    return idle, loaded, ratio


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--time-scale", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=6.0, help="seconds of arrivals per run")
    p.add_argument("--load", type=float, default=2.0, help="offered load / capacity")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--queue-depth", type=int, default=None,
                   help="saturationDetector.queueDepthThreshold with admission on (default: "
                        "the product's, 5)")
    p.add_argument("--reserve", type=lambda v: v if v == "auto" else int(v), default="auto",
                   help="flowControl.reserve with admission on: batch slots kept free on each "
                        "replica for the top priority, or auto (the product's default)")
    p.add_argument("--reserve-miss", type=float, default=None,
                   help="flowControl.reserveMiss with reserve auto (default: the product's)")
    p.add_argument("--admission-only", action="store_true",
                   help="skip the run without admission")
    a = p.parse_args()
    runs = run(replicas=a.replicas, time_scale=a.time_scale, duration=a.duration, load=a.load,
               max_tokens=a.max_tokens, seed=a.seed, queue_depth=a.queue_depth,
               modes=(True,) if a.admission_only else (True, False), reserve=a.reserve,
               reserve_miss=a.reserve_miss)
    print(f"capacity {runs[0].capacity:.1f} req/s measured; offered {runs[0].rate:.1f} req/s "
          f"({a.load:g}x) for {a.duration:g} s; {a.replicas} tiny replicas, time scale "
          f"{a.time_scale:g}, {a.max_tokens} output tokens, seed {a.seed}, queue depth "
          f"{'default' if a.queue_depth is None else a.queue_depth}, reserve {a.reserve}"
          + ("" if a.reserve_miss is None else f", reserve miss {a.reserve_miss:g}"))
    print(table(runs))
    for run_ in runs:
        idle, loaded, ratio = critical_ratio(run_)
        print(f"admission {'on' if run_.admission else 'off'}: critical TTFT p90 unloaded "
              f"{idle:.3f} s, at {a.load:g}x {loaded:.3f} s: {ratio:.2f}x unloaded"
              + (" (target <= 2x)" if run_.admission else ""))
        if run_.without_slot:
            missed, all_ = run_.without_slot
            print(f"  critical requests that found no free batch slot: {missed:g} of {all_:g}"
                  f" ({missed / all_:.1%}); slots reserved at the end: {run_.reserved}"
                  if all_ else "  no critical request counted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
