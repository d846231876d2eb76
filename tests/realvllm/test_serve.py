"""`inferoute serve` in front of two real vLLM replicas: the openai SDK's chat and completions,
streamed and not; a shared prefix sticks to one replica and the engine's own prefix-cache
counters and `cached_tokens` show it; distinct prefixes spread over both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from inferoute.core.endpoint import Endpoint
from inferoute.core.metricsparse import parse_metrics
from inferoute.core.plugins.common import kv_capacity_blocks

from .conftest import BLOCK, MODEL, Engines, Gateway, gateway_for, late_scrapes_ok, pool, words

SERVED = "x-gateway-destination-endpoint-served"


@pytest.fixture(scope="module")
def gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with gateway_for(tmp_path_factory.mktemp("serve"), pool(engines, late_scrapes_ok("llm-d"))) as gw:
        yield gw


def hits(engines: Engines) -> dict[str, float]:
    """Each replica's vllm:prefix_cache_hits (tokens), read from its own /metrics."""
    import urllib.request

    out = {}
    for r in engines.replicas:
        with urllib.request.urlopen(r.url + "/metrics", timeout=10) as resp:
            m = parse_metrics(resp.read().decode(), "vllm")
        assert m.prefix_cache_hits is not None
        out[r.name] = m.prefix_cache_hits
    return out


def test_completions_and_chat_plain_and_streamed(client: openai.OpenAI, engines: Engines):
    prompt = words(1, 40)
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=prompt, max_tokens=8)
    assert raw.headers[SERVED] in [r.name for r in engines.replicas]
    done = raw.parse()
    assert done.choices[0].text.strip()
    # no BOS: one token per word, as in the simulator and the workloads
    assert done.usage.prompt_tokens == 40
    assert done.usage.completion_tokens <= 8

    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=8,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(text.split()) >= 1
    assert chunks[-1].usage.completion_tokens == 8

    chat = client.chat.completions.create(
        model=MODEL, max_tokens=6, messages=[{"role": "system", "content": words(2, 20)},
                                             {"role": "user", "content": words(3, 10)}])
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content
    # the chat template: a role marker and a newline per message, then the generation prompt
    assert chat.usage.prompt_tokens == 20 + 10 + 3

    stream = client.chat.completions.create(
        model=MODEL, max_tokens=6, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": words(4, 30)}], extra_body={"ignore_eos": True})
    got = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices).strip()
    assert got[-1].usage.completion_tokens == 6


def test_shared_prefix_sticks_and_the_engine_hits_its_cache(client: openai.OpenAI,
                                                             engines: Engines):
    system = words(10, 5 * BLOCK)     # five full blocks of 128 tokens
    before = hits(engines)
    served, cached = [], []
    for i in range(5):
        raw = client.completions.with_raw_response.create(
            model=MODEL, prompt=system + " " + words(100 + i, 40), max_tokens=2)
        served.append(raw.headers[SERVED])
        details = raw.parse().usage.prompt_tokens_details
        cached.append(details.cached_tokens if details else None)
    assert len(set(served)) == 1, served
    # vLLM counts whole blocks only: the first request computes, the others reuse five blocks
    assert cached[0] in (0, None) and cached[1:] == [5 * BLOCK] * 4, cached
    after = hits(engines)
    holder = served[0]
    other = next(r.name for r in engines.replicas if r.name != holder)
    assert after[holder] - before[holder] >= 4 * 5 * BLOCK
    assert after[other] == before[other]


def test_distinct_prefixes_spread(client: openai.OpenAI, engines: Engines):
    served = set()
    for i in range(12):
        raw = client.completions.with_raw_response.create(
            model=MODEL, prompt=words(1000 + i, 2 * BLOCK + 10), max_tokens=1)
        served.add(raw.headers[SERVED])
    assert served == {r.name for r in engines.replicas}


def test_gateway_scrapes_the_real_pages(gateway: Gateway):
    import urllib.request

    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    # both endpoints ready from real scrapes, their KV usage and queues exported
    ready = [ln for ln in text.splitlines()
             if ln.startswith("inferoute_endpoint_ready{") and ln.endswith(" 1.0")]
    assert len(ready) == 2, text


def test_the_real_pages_parse(engines: Engines, tmp_path: Path):
    """Every family the scorers read is on a real page and parses: queues, KV usage,
    cache_config_info with the real block size, LoRA state, prefix-cache counters."""
    import json
    import urllib.request

    # one request first: the engine writes its LoRA state only once it has stepped, so the
    # test does not depend on the module's other tests having run before it
    req = urllib.request.Request(
        engines.urls[0] + "/v1/completions", headers={"Content-Type": "application/json"},
        data=json.dumps({"model": MODEL, "prompt": words(5, 8), "max_tokens": 1}).encode())
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
    with urllib.request.urlopen(engines.urls[0] + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for family in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                   "vllm:kv_cache_usage_perc", "vllm:cache_config_info",
                   "vllm:lora_requests_info", "vllm:prefix_cache_queries",
                   "vllm:prefix_cache_hits"):
        assert f"\n{family}" in text, family
    m = parse_metrics(text)
    assert m.block_size == BLOCK
    assert m.num_blocks and m.num_blocks > 0
    # the scorers that count in 16-token blocks see the engine's capacity in tokens, not its
    # block count (read as 16-token blocks, inferoute's prefix index held an eighth of it)
    ep = Endpoint(host="127.0.0.1", port=1, metrics=m)
    assert kv_capacity_blocks(ep, 16, 1) * 16 == m.num_blocks * BLOCK
    assert 0.0 <= m.kv_usage <= 1.0
    assert m.waiting == 0 and m.running == 0
    assert m.max_lora == 2
    assert m.prefix_cache_queries is not None and m.prefix_cache_queries >= 0
