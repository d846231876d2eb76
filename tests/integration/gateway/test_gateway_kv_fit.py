"""`inferoute serve` with the `inferoute` policy measures whether its servers' caches thrash
from their `vllm:prefix_cache_hits` counters alone (servers that, like a default vLLM, put no
cached tokens in usage), and holds requests in the gateway only while they do
(`inferoute_pool_kv_fit_holding`)."""

from __future__ import annotations

import openai

from inferoute.procs import free_port_range


def _prompt(family: int, request: int, prefix_words: int) -> str:
    """A family's prefix of three-letter words (one token each on the simulator, four
    characters with the space as the gateway counts them) and a question of the request's."""
    prefix = " ".join(f"{chr(97 + family % 26)}{k % 100:02d}" for k in range(prefix_words))
    question = " ".join(f"q{(request * 7 + k) % 100:02d}" for k in range(8))
    return f"{prefix} {question}"


def test_the_hit_counters_tell_a_thrash_from_a_fit(harness, web):
    base = free_port_range(2)  # two tiny replicas: 64 KV blocks of 16 tokens each
    sim = harness.start(["inferoute", "sim", "--model", "sim-model", "--port", str(base),
                         "--replicas", "2", "--profile", "tiny", "--no-prompt-tokens-details"],
                        base)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(2)]
    sim.wait_for_http(urls[1] + "/health")
    gw = harness.gateway({"pools": [{"model": "sim-model", "endpoints": urls,
                                     "scheduler": "inferoute"}]})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=30)

    def ask(family: int, request: int, prefix_words: int) -> None:
        stream = client.completions.create(model="sim-model", stream=True, max_tokens=2,
                                           prompt=_prompt(family, request, prefix_words))
        assert "".join(c.choices[0].text for c in stream if c.choices)

    # the servers report no cached tokens: usage cannot tell the gateway what was cached
    whole = client.completions.create(model="sim-model", max_tokens=1, prompt="a b c")
    assert whole.usage is not None and whole.usage.prompt_tokens_details is None

    def metrics() -> tuple[float | None, float | None]:
        page = web.get(gw.url + "/metrics").text
        return (web.metric(page, "inferoute_pool_prefix_recompute_ratio", name="sim-model"),
                web.metric(page, "inferoute_pool_kv_fit_holding", name="sim-model"))

    # one family of a 320-token prefix, asked again and again: its prefix stays cached
    for i in range(600):  # until a scrape has measured it (the policy scrapes once a second)
        ask(0, i, 320)
        ratio, holding = metrics()
        if ratio is not None and i >= 20:
            break
    assert ratio is not None and ratio < 0.1 and holding == 0, (i, ratio, holding)

    # twelve families of 480-token prefixes in turn: two fit a replica's 1,024 tokens, so
    # each comes back to find its prefix evicted
    for i in range(1200):
        ask(1 + i % 12, i, 480)
        ratio, holding = metrics()
        if holding == 1:
            break
    assert holding == 1 and ratio is not None and ratio >= 0.1, (i, ratio, holding)
