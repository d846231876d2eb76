"""`sim calibrate --from` against a real vLLM replica: a decode step is the engine's own mean
gap between tokens over a window in which every stream of the batch decodes. Started together,
the batch's prompts prefill one after another, and a per-request mean counted each sibling's
prefill step as a decode gap; the window holds none of them."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from inferoute.sim.fit import BusyPoint, DecodePoint, PrefillPoint
from inferoute.sim.measure import (STEP_TOKENS, Histogram, RandomWords, StepWindow,
                                   decode_window, histogram_of, measure_busy_hit, measure_decode,
                                   measure_hits, measure_prefill)

from .conftest import BLOCK, MAX_LEN, MODEL, Engines


async def _step_tokens(s: aiohttp.ClientSession, url: str) -> Histogram:
    async with s.get(url + "/metrics") as r:
        h = histogram_of(await r.text(), STEP_TOKENS)
    assert h is not None, f"no {STEP_TOKENS} on the engine's /metrics"
    return h


def test_the_decode_window_holds_no_prefill_step_while_the_batch_had_them(
        engines: Engines) -> None:
    url = engines.urls[0]
    words = RandomWords(7)

    async def run() -> tuple[StepWindow | None, Histogram]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            before = await _step_tokens(s, url)
            window, _ = await decode_window(s, url, MODEL, [words(600) for _ in range(4)], 48)
            return window, (await _step_tokens(s, url)).since(before)

    window, batch = asyncio.run(run())
    # the four 600-token prompts were prefilled in steps of more than 8 tokens...
    assert batch.above(4) >= 1
    assert window is not None, "the engine has no inter-token histogram, or no window opened"
    # ...and none of those steps is in the window: every step there decoded the four streams
    assert window.step_tokens is not None and window.step_tokens.count >= 8
    assert window.step_tokens.above(4) == 0
    assert window.itl.count >= 4 * 8
    step = window.step(4)
    assert step is not None and 0.0005 < step < 1.0  # a CPU step, never a burst's microseconds


def test_measure_decode_reports_the_window_step(engines: Engines) -> None:
    url = engines.urls[0]

    async def run() -> list[DecodePoint]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            return await measure_decode(s, url, MODEL, [1, 4], [64], 32, float("inf"),
                                        RandomWords(3), lambda _: None)

    points = asyncio.run(run())
    assert [p.batch for p in points] == [1, 4]
    for p in points:
        assert 0.0005 < p.itl < 1.0
        assert p.context == pytest.approx(64 + 16, abs=8)  # the prompt plus half the output


def test_prefix_hits_are_measured_with_the_engines_own_cached_count(engines: Engines) -> None:
    """The calibration's hits: the real server reports the cached prompt tokens as whole
    blocks of its block size, a hit is cheaper than the same prompt cold, and a hit is timed
    alone and beside decoding streams. Whether it waits longer beside them is a difference of about one CPU step, which
    other work on a 2-core machine can reverse (17.4 against 18.7 ms in a CI run beside a
    benchmark): `inferoute sim calibrate --from URL` prints both, a test cannot order them."""
    url = engines.urls[1]
    limit = MAX_LEN - 72

    async def run() -> tuple[list[PrefillPoint], list[PrefillPoint], BusyPoint]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            words = RandomWords(11)
            hits = await measure_hits(s, url, MODEL, limit, BLOCK, 1, words, lambda _: None)
            cold = await measure_prefill(s, url, MODEL, [p.prompt_tokens for p in hits], 1,
                                         words, lambda _: None)
            busy = await measure_busy_hit(s, url, MODEL, 512, 64, 1, words, lambda _: None)
            return hits, cold, busy

    hits, cold, busy = asyncio.run(run())
    assert len(hits) == 3
    for hit, alone in zip(hits, cold):
        assert hit.cached > 0 and hit.cached % BLOCK == 0, hit
        assert hit.prompt_tokens - hit.cached in (64 + 1, 256 + 1, 64, 256), hit  # (a BOS)
        assert hit.ttft < alone.ttft, (hit, alone)
    assert busy.cached == 512 and busy.batch == 2
    assert 0 < busy.idle < 1.0 and 0 < busy.busy < 1.0  # timed, each a CPU prefill
