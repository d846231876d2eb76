"""`sim calibrate --from` against a real vLLM replica: the decode step comes from the engine's
own time per output token (a busy API server streams tokens in bursts, which gave 0.01-ms
steps), the mean over the batch's requests."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from inferoute.sim.fit import DecodePoint
from inferoute.sim.measure import RandomWords, measure_decode, server_tpot

from .conftest import MODEL, Engines


def test_decode_steps_come_from_the_engines_time_per_output_token(engines: Engines) -> None:
    url = engines.urls[0]

    async def run() -> tuple[tuple[float, float] | None, tuple[float, float] | None,
                             list[DecodePoint]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            before = await server_tpot(s, url)
            points = await measure_decode(s, url, MODEL, [4], [64], 32, float("inf"),
                                          RandomWords(7), lambda _: None)
            return before, await server_tpot(s, url), points

    before, after, points = asyncio.run(run())
    assert before is not None and after is not None, "no vllm:request_time_per_output_token"
    assert after[1] - before[1] == 4  # the batch's four requests, and nothing else
    [point] = points
    assert point.batch == 4
    # the engine's own mean, not the gaps between streamed chunks
    assert point.itl == pytest.approx((after[0] - before[0]) / 4)
    assert 0.002 < point.itl < 1.0  # milliseconds a step on a CPU, never a burst's microseconds
