"""A real engine's own errors reach the client as clean OpenAI errors through the gateway, and a
real LoRA adapter is served and routed to the replica that runs it."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from inferoute.core.metricsparse import parse_metrics

from .conftest import LORA, MAX_LEN, MODEL, Engines, Gateway, gateway_for, pool, until, words

SERVED = "x-gateway-destination-endpoint-served"
#: llm-d's lora-affinity scorer alone: 1 where the adapter runs, 0.8 where a slot is free; with
#: a generous staleness threshold, so that a slow /metrics answer from the replica busy with
#: the long request cannot decide the outcome on a loaded machine
LORA_AFFINITY = {
    "saturationDetector": {"metricsStalenessThreshold": "5s"},
    "plugins": [{"type": "lora-affinity-scorer"}, {"type": "max-score-picker"}],
    "schedulingProfiles": [{"name": "default", "plugins": [
        {"pluginRef": "lora-affinity-scorer", "weight": 1}, {"pluginRef": "max-score-picker"}]}]}


@pytest.fixture(scope="module")
def gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # "ghost" is claimed by the pool but loaded on no replica: the engine refuses it
    with gateway_for(tmp_path_factory.mktemp("lora"),
                     pool(engines, LORA_AFFINITY, loraAdapters=[LORA, "ghost"])) as gw:
        yield gw


def test_prompt_over_max_model_len_is_a_clean_400(client: openai.OpenAI, gateway: Gateway):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=MODEL, prompt=words(7, MAX_LEN + 100),
                                      max_tokens=4, stream=stream)
        body = err.value.body
        assert isinstance(body, dict) and body.get("message"), body
        assert str(MAX_LEN) in body["message"]
    # the gateway took the engine's 400 as an answer, not a failure: both stay ready
    ready = json.loads(urllib.request.urlopen(gateway.url + "/ready", timeout=5).read())
    assert ready["ready_endpoints"][MODEL] == 2


def test_unknown_adapter_is_a_clean_404(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="ghost", prompt=words(8, 10), max_tokens=2)
    body = err.value.body
    assert isinstance(body, dict) and "ghost" in body.get("message", ""), body


def test_adapter_is_served(client: openai.OpenAI):
    out = client.completions.create(model=LORA, prompt=words(9, 30), max_tokens=4)
    assert out.model == LORA
    assert out.usage.prompt_tokens == 30


def running_loras(url: str) -> tuple[str, ...]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return parse_metrics(r.read().decode(), "vllm").running_loras


def gateway_metric(gateway: Gateway, name: str, endpoint: str) -> float:
    """A per-endpoint sample of the gateway's /metrics (0 when absent)."""
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") and f'endpoint="{endpoint}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def gateway_running(gateway: Gateway, endpoint: str) -> float:
    """The running requests the gateway last scraped from `endpoint`."""
    return gateway_metric(gateway, "inferoute_endpoint_running_requests", endpoint)


async def rescraped(gateway: Gateway, endpoints: list[str]) -> None:
    """Wait until the gateway has scraped every endpoint from start to end since now: a scrape
    started after a second one has (scrapes of one endpoint run one after the other)."""
    total = "inferoute_endpoint_scrapes_total"
    start = {ep: gateway_metric(gateway, total, ep) for ep in endpoints}
    await until(lambda: all(gateway_metric(gateway, total, ep) >= start[ep] + 2
                            for ep in endpoints))


async def test_adapter_requests_follow_the_replica_running_it(gateway: Gateway,
                                                              engines: Engines):
    long = {"model": LORA, "prompt": words(11, 20), "max_tokens": 1500, "stream": True,
            "ignore_eos": True}
    async with aiohttp.ClientSession() as s:
        # every replica idle and its page's newest lora_requests_info series empty before the
        # adapter's long request starts (a base-model step on each replica makes sure)
        for r in engines.replicas:
            async with s.post(r.url + "/v1/completions",
                              json={"model": MODEL, "prompt": words(10, 8), "max_tokens": 1}) as x:
                assert x.status == 200
        await until(lambda: not any(LORA in running_loras(u) for u in engines.urls))
        await rescraped(gateway, [r.name for r in engines.replicas])  # the gateway sees it too
        async with s.post(gateway.url + "/v1/completions", json=long) as first:
            assert first.status == 200
            holder = engines.by_name(first.headers[SERVED])
            await first.content.readline()
            # the engine reports the adapter running, and the gateway has scraped a page
            # that shows it (the same page counts the request as running)
            await until(lambda: LORA in running_loras(holder.url))
            await until(lambda: gateway_running(gateway, holder.name) >= 1)
            served = []
            for i in range(4):
                body = {"model": LORA, "prompt": words(12 + i, 20), "max_tokens": 2}
                async with s.post(gateway.url + "/v1/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    served.append(r.headers[SERVED])
                    await r.read()
            first.close()
    # every one went where the adapter runs (score 1) rather than to a free slot (0.8)
    assert served == [holder.name] * 4, (served, holder.name)


async def test_a_finished_adapter_stays_on_the_page_but_not_as_running(engines: Engines):
    """vLLM 0.32 keeps every past label set of lora_requests_info on the page, valued with the
    time it was last reported, and lists an adapter with running requests as waiting too; the
    newest series is the current one, and the parser reads that."""
    r = engines.replicas[0]
    async with aiohttp.ClientSession() as s:
        long = {"model": LORA, "prompt": words(21, 20), "max_tokens": 1500, "stream": True,
                "ignore_eos": True}
        async with s.post(r.url + "/v1/completions", json=long) as resp:
            assert resp.status == 200
            await resp.content.readline()
            await until(lambda: LORA in running_loras(r.url))
            busy = _lora_page(r.url)
            assert busy.running == 1 and busy.waiting_loras == (LORA,)   # "waiting" too
        async with s.post(r.url + "/v1/completions",
                          json={"model": MODEL, "prompt": words(22, 8), "max_tokens": 1}) as x:
            assert x.status == 200
    await until(lambda: _lora_page(r.url).running == 0 and not running_loras(r.url))
    with urllib.request.urlopen(r.url + "/metrics", timeout=10) as page:
        series = [line for line in page.read().decode().splitlines()
                  if line.startswith("vllm:lora_requests_info{")]
    assert any(f'running_lora_adapters="{LORA}"' in line for line in series), series


def _lora_page(url: str):  # type: ignore[no-untyped-def]
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return parse_metrics(r.read().decode(), "vllm")
