"""Does the other replica's work slow a confined vLLM-CPU replica's decode step?

    python benchmarks/vllm_sibling.py [--rounds 3] [--engine-model small] [--idle 0.3] [--paths]

The simulator's profile is calibrated on one replica while its sibling is idle; in the demo's
ladder both replicas serve at once, each confined to its own core of the two, and the real
decode step at 1-2 requests/s came out 13-19% slower than calibrated (docs/real-vllm.md,
section 8). This starts two confined replicas of the random Llama (KV cache 160 blocks of 128
tokens) and measures replica A, per round, with replica B in three states:

- asleep: idle for over a second (vLLM-CPU's worker busy-polls for a second after each
  message, then sleeps);
- spinning: one 1-token request every 0.5 s, so B's worker polls its core without computing;
- busy: four 256-token streams decoding without pause.

For each state: A's decode step over a window of a batch of 1 and of 4 streams at a 1,088-token
context (a cached 1,000-token prefix plus 64 new words; `decode_window`, what the calibration
reads), and the mean gap between tokens of ten lone 32-token requests at that context, `--idle`
seconds apart (the demo's ladder sends 32-token requests).

With `--paths` it sends instead, per round, 60 such requests at Poisson arrivals along four
paths, as the ladder's lowest stages do (prompts over four cached 1,000-word prefixes): to A
alone at 0.5 a second, to A and B in turn at 1 a second, and through an `inferoute serve`
gateway with the round-robin and with llm-d's policy at 1 a second; and prints the client's
mean gap between tokens and each engine's mean time per output token over the run.

It prints; it asserts nothing. Every process it starts is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
from pathlib import Path

import aiohttp

from inferoute.bench.demo import start_gateway
from inferoute.bench.vllm_fleet import (MODEL, MODEL_SHAPES, NO_VENV, build_model,
                                        start_replicas, stop_replicas, vllm_python,
                                        wait_gateway_ready)
from inferoute.sim.measure import (RandomWords, decode_step, server_tpot, stream_body,
                                   stream_times)

STATES = ("asleep", "spinning", "busy")


async def keep(url: str, state: str, stop: asyncio.Event, words: RandomWords) -> None:
    """Hold the sibling at `state` until `stop` is set."""
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def decoding() -> None:
            while not stop.is_set():
                await stream_times(session, url, stream_body(MODEL, words(400), 256))

        if state == "busy":
            await asyncio.gather(*(decoding() for _ in range(4)))
        elif state == "spinning":
            while not stop.is_set():
                await stream_times(session, url, stream_body(MODEL, words(8), 1))
                await asyncio.sleep(0.5)


async def measure(session: aiohttp.ClientSession, url: str, words: RandomWords, prefix: str,
                  idle: float) -> tuple[float, float, float]:
    """(window step at batch 1, at batch 4, lone requests' mean gap), seconds."""
    steps = []
    for batch in (1, 4):
        step = await decode_step(session, url, MODEL,
                                 [f"{prefix} {words(64)}" for _ in range(batch)], 64)
        steps.append(step if step is not None else float("nan"))
    gaps: list[float] = []
    for _ in range(10):
        _, times, _ = await stream_times(session, url,
                                         stream_body(MODEL, f"{prefix} {words(64)}", 32))
        gaps += [b - a for a, b in zip(times, times[1:])]
        await asyncio.sleep(idle)
    return steps[0], steps[1], statistics.mean(gaps)


async def rounds(a: str, b: str, n: int, idle: float) -> None:
    words = RandomWords(11)
    prefix = words(1000)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await stream_times(session, a, stream_body(MODEL, f"{prefix} {words(64)}", 2))
        await stream_times(session, b, stream_body(MODEL, words(64), 2))
        for r in range(n):
            for state in STATES:
                stop = asyncio.Event()
                sibling = asyncio.create_task(keep(b, state, stop, RandomWords(100 + r)))
                await asyncio.sleep(2.5)  # asleep: past the worker's second of polling
                b1, b4, lone = await measure(session, a, words, prefix, idle)
                stop.set()
                await sibling
                print(f"round {r}, sibling {state:<8}: window batch 1 {b1 * 1e3:6.2f} ms, "
                      f"batch 4 {b4 * 1e3:6.2f} ms; lone requests' mean gap {lone * 1e3:6.2f} ms",
                      flush=True)


async def poisson(targets: list[str], engines: list[str], rate: float, words: RandomWords,
                  prefixes: list[str], seed: int, count: int = 60) -> tuple[float, list[float]]:
    """(the client's mean gap between tokens, each engine's mean TPOT over the run), seconds:
    `count` 32-token requests at Poisson `rate`, sent to `targets` in turn."""
    rng = random.Random(seed)
    gaps: list[float] = []
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        before = [await server_tpot(session, u) for u in engines]

        async def one(i: int) -> None:
            prompt = f"{prefixes[rng.randrange(len(prefixes))]} {words(64)}"
            _, times, _ = await stream_times(session, targets[i % len(targets)],
                                             stream_body(MODEL, prompt, 32))
            gaps.extend(b - a for a, b in zip(times, times[1:]))

        sent = []
        for i in range(count):
            sent.append(asyncio.create_task(one(i)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*sent)
        after = [await server_tpot(session, u) for u in engines]
    tpot = [(a[0] - b[0]) / (a[1] - b[1]) for a, b in zip(after, before)
            if a is not None and b is not None and a[1] > b[1]]
    return statistics.mean(gaps), tpot


def paths(urls: list[str], n: int) -> None:
    words = RandomWords(3)
    prefixes = [words(1000) for _ in range(4)]

    async def warm() -> None:
        async with aiohttp.ClientSession() as session:
            for u in urls:
                for p in prefixes:
                    await stream_times(session, u, stream_body(MODEL, f"{p} {words(64)}", 2))

    asyncio.run(warm())
    for r in range(n):
        runs: list[tuple[str, list[str], float]] = [("A alone, 0.5/s", urls[:1], 0.5),
                                                    ("A and B in turn, 1/s", urls, 1.0)]
        for label, targets, rate in runs:
            show(r, label, asyncio.run(poisson(targets, urls, rate, words, prefixes, r)))
        for policy in ("round-robin", "llm-d"):
            gw = start_gateway(urls, policy, MODEL, timeout=120)
            try:
                wait_gateway_ready(gw.url, len(urls))
                show(r, f"gateway {policy}, 1/s",
                     asyncio.run(poisson([gw.url], urls, 1.0, words, prefixes, r)))
            finally:
                gw.stop()


def show(r: int, label: str, result: tuple[float, list[float]]) -> None:
    gap, tpot = result
    print(f"round {r}, {label:<26}: client's mean gap {gap * 1e3:6.2f} ms; engines' TPOT "
          + " / ".join(f"{t * 1e3:.2f}" for t in tpot) + " ms", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the three states (3)")
    ap.add_argument("--engine-model", choices=tuple(MODEL_SHAPES), default="small",
                    help="the random Llama served (small)")
    ap.add_argument("--idle", type=float, default=0.3,
                    help="seconds between the lone requests (0.3)")
    ap.add_argument("--paths", action="store_true",
                    help="Poisson arrivals direct and through a gateway instead")
    args = ap.parse_args()
    python = vllm_python()
    if python is None:
        print(NO_VENV)
        return 2
    with tempfile.TemporaryDirectory(prefix="inferoute-tiny-") as tmp:
        model_dir, lora_dir = build_model(python, Path(tmp), *MODEL_SHAPES[args.engine_model][0])
        replicas = start_replicas(python, model_dir, lora_dir, n=2, max_len=4096,
                                  extra=("--num-gpu-blocks-override", "160"), dev_mode=True,
                                  confine=True)
        try:
            if args.paths:
                paths([r.url for r in replicas], args.rounds)
            else:
                asyncio.run(rounds(replicas[0].url, replicas[1].url, args.rounds, args.idle))
        finally:
            stop_replicas(replicas)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
