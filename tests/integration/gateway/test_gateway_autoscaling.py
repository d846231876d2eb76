"""`inferoute serve --autoscaling`: the desired-replicas gauge measures a pool from what the
gateway routes, also when no client streams (the answers' ends are all it can time)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai

from inferoute.procs import free_port_range


def test_the_gauge_measures_answers_that_are_not_streamed(harness, web):
    """Two simulated Qwen3-32B replicas, clients that never stream, prompts of 20-400 words
    and answers of 4-60 tokens sent 1 to 8 at a time: the gauge leaves the ready count it
    holds unmeasured (2) for the real count the light load needs (under one replica)."""
    # a Qwen3-32B profile's speeds (a tiny model's steps are lost in the machine's noise)
    base = free_port_range(2)
    sim = harness.start(["inferoute", "sim", "--model", "sim-model", "--port", str(base),
                         "--replicas", "2", "--profile", "qwen3-32b-2xh100"], base)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(2)]
    sim.wait_for_http(urls[1] + "/health")
    gw = harness.gateway({"pools": [{"model": "sim-model", "endpoints": urls}],
                          "autoscaling": {"ttftTarget": "1s", "minReplicas": 0}})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=30)

    def ask(i: int) -> int:
        words = " ".join(f"w{i}x{k}" for k in range(20 + 380 * (i % 5) // 4))
        out = client.completions.create(model="sim-model", prompt=words,
                                         max_tokens=4 + 56 * (i % 3) // 2,
                                         extra_body={"ignore_eos": True})
        return out.usage.completion_tokens

    values = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for round_ in range(40):  # until measured (a few rounds), 1-8 requests at a time
            width = 1 + round_ % 8
            assert all(n > 0 for n in pool.map(ask, range(round_ * 8, round_ * 8 + width)))
            page = web.get(gw.url + "/metrics").text
            values.append(web.metric(page, "inferoute_pool_desired_replicas", name="sim-model"))
            if values[-1] is not None and 0 < values[-1] < 1:
                break
    assert values[-1] is not None and 0 < values[-1] < 1, values
