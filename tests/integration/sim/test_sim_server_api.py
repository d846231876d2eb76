"""The simulator's OpenAI API, LoRA endpoints and /metrics against a real `inferoute sim`."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families


def _client(sim, i: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url(i) + "/v1", api_key="unused", max_retries=0)


def _words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def test_completion_non_streaming_counts_tokens_exactly(sim):
    prompt = _words(37)
    r = _client(sim).completions.create(model="sim-model", prompt=prompt, max_tokens=9,
                                        extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.usage.prompt_tokens == 37
    assert r.usage.completion_tokens == 9 == len(r.choices[0].text.split())
    assert r.usage.total_tokens == 46
    assert r.choices[0].finish_reason == "length"


def test_completion_streaming_one_token_per_chunk_with_usage(sim):
    stream = _client(sim).completions.create(
        model="sim-model", prompt=_words(20), max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == 12
    assert all(len(c.choices[0].text.split()) == 1 for c in token_chunks)
    assert token_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in token_chunks[:-1])
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.prompt_tokens == 20
    assert usage.completion_tokens == 12


def test_chat_streaming_and_deterministic_text(sim):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    client = _client(sim)
    stream = client.chat.completions.create(model="sim-model", messages=msgs, max_tokens=8,
                                            stream=True, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(text.split()) == 8
    assert chunks[-1].choices[0].finish_reason == "length"
    full = client.chat.completions.create(model="sim-model", messages=msgs, max_tokens=8,
                                          extra_body={"ignore_eos": True})
    assert full.choices[0].message.content == text           # same prompt, same words
    # rendered "<|system|>\nbe brief\n<|user|>\nhello there\n<|assistant|>": 7 words
    assert full.usage.prompt_tokens == 7


def test_natural_length_respects_max_tokens(sim):
    r = _client(sim).completions.create(model="sim-model", prompt=_words(5, "n"), max_tokens=40)
    assert 1 <= r.usage.completion_tokens <= 40
    assert r.choices[0].finish_reason in ("stop", "length")
    assert len(r.choices[0].text.split()) == r.usage.completion_tokens


def test_repeated_long_prompt_hits_prefix_cache(sim):
    prompt = _words(200, "cache")
    client = _client(sim, 1)
    first = client.completions.create(model="sim-model", prompt=prompt, max_tokens=2)
    second = client.completions.create(model="sim-model", prompt=prompt, max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    # all full blocks but the one holding the last token: (200 - 1) // 16 * 16
    assert second.usage.prompt_tokens_details.cached_tokens == 192


def test_prompt_as_token_ids(sim):
    r = _client(sim).completions.create(model="sim-model", prompt=[1001, 1002, 1003],
                                        max_tokens=2, extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 2


def test_unknown_model_is_404_and_bad_body_is_400(sim):
    with pytest.raises(openai.NotFoundError) as err:
        _client(sim).completions.create(model="no-such-model", prompt="x")
    assert err.value.body["code"] == 404 and err.value.body["type"] == "NotFoundError"
    with pytest.raises(openai.BadRequestError):
        _client(sim).completions.create(model="sim-model", prompt="x", max_tokens=-3)
    with pytest.raises(openai.BadRequestError) as err:
        _client(sim).completions.create(model="sim-model", prompt=_words(900), max_tokens=500)
    assert "maximum context length" in err.value.body["message"]


async def test_raw_errors_and_replica_header(sim):
    async with aiohttp.ClientSession() as s:
        async with s.post(sim.url(1) + "/v1/completions", data=b"{not json") as r:
            assert r.status == 400
            body = await r.json()
            assert body["error"]["code"] == 400
            assert r.headers["x-inferoute-sim-replica"].endswith(f":{sim.port + 1}")
        async with s.post(sim.url(0) + "/v1/chat/completions",
                          json={"model": "sim-model", "messages": "nope"}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "messages"
        async with s.get(sim.url(0) + "/health") as r:
            assert r.status == 200
            assert r.headers["x-inferoute-sim-replica"].endswith(f":{sim.port}")


def test_lora_load_list_serve_unload(sim):
    import urllib.error
    import urllib.request

    def post(path: str, body: dict) -> tuple[int, str]:
        req = urllib.request.Request(sim.url(0) + path, data=orjson.dumps(body),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    client = _client(sim)
    ids = [m.id for m in client.models.list().data]
    assert ids == ["sim-model", "adapter-a"]
    status, text = post("/v1/load_lora_adapter", {"lora_name": "adapter-b",
                                                   "lora_path": "/loras/b"})
    assert status == 200 and "adapter-b" in text
    assert post("/v1/load_lora_adapter", {"lora_name": "adapter-b",
                                          "lora_path": "/loras/b"})[0] == 400
    assert post("/v1/load_lora_adapter", {"lora_name": "x"})[0] == 400
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"sim-model", "adapter-a", "adapter-b"}
    assert models["adapter-b"].model_extra["parent"] == "sim-model"
    r = client.completions.create(model="adapter-b", prompt="lora prompt", max_tokens=3,
                                  extra_body={"ignore_eos": True})
    assert r.model == "adapter-b" and r.usage.completion_tokens == 3
    status, _ = post("/v1/unload_lora_adapter", {"lora_name": "adapter-b"})
    assert status == 200
    assert post("/v1/unload_lora_adapter", {"lora_name": "adapter-b"})[0] == 404
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="adapter-b", prompt="x", max_tokens=1)


async def _scrape(session: aiohttp.ClientSession, url: str) -> dict[str, list]:
    async with session.get(url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(fams: dict, name: str) -> float:
    return fams[name][0].value


async def test_metrics_parse_and_reflect_running_and_waiting(sim):
    url = sim.url(1)
    async with aiohttp.ClientSession() as s:
        # slow this replica down so the batch stays put while we look at it
        async with s.post(url + "/admin/latency", json={"time_scale": 20}) as r:
            assert r.status == 200
        body = {"model": "sim-model", "prompt": _words(8, "m"), "max_tokens": 400,
                "ignore_eos": True}
        tasks = [asyncio.create_task(s.post(url + "/v1/completions", json=body))
                 for _ in range(11)]   # the tiny profile runs at most 8 sequences
        try:
            fams: dict = {}
            # all 11 arrived and the engine stepped since (on a busy machine they may arrive
            # over several steps, the first ones running alone for a while)
            deadline = asyncio.get_running_loop().time() + 60
            while asyncio.get_running_loop().time() < deadline:
                fams = await _scrape(s, url)
                if _value(fams, "vllm:num_requests_running") == 8 and \
                        _value(fams, "vllm:num_requests_waiting") == 3:
                    break
                await asyncio.sleep(0.05)
            assert _value(fams, "vllm:num_requests_running") == 8
            assert _value(fams, "vllm:num_requests_waiting") == 3
            assert 0 < _value(fams, "vllm:kv_cache_usage_perc") <= 1
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            async with s.post(url + "/admin/latency", json={"time_scale": 1}) as r:
                assert r.status == 200
        # the cancelled requests were aborted: the engine drains
        for _ in range(100):
            fams = await _scrape(s, url)
            if _value(fams, "vllm:num_requests_running") == 0:
                break
            await asyncio.sleep(0.05)
        assert _value(fams, "vllm:num_requests_running") == 0
        assert _value(fams, "vllm:num_requests_waiting") == 0
        success = {smp.labels["finished_reason"]: smp.value
                   for smp in fams["vllm:request_success"] if smp.name.endswith("_total")}
        assert success["abort"] >= 11
        info = fams["vllm:cache_config_info"][0]
        assert info.labels["block_size"] == "16" and info.labels["num_gpu_blocks"] == "64"
        assert info.value == 1
        lora = fams["vllm:lora_requests_info"][0]
        assert lora.labels["max_lora"] == "2" and lora.value > 1e9
        ttft = fams["vllm:time_to_first_token_seconds"]
        les = [smp.labels["le"] for smp in ttft if smp.name.endswith("_bucket")]
        assert les[0] == "0.001" and les[-2] == "2560.0" and les[-1] == "+Inf"
        assert {smp.labels["model_name"] for smp in ttft} == {"sim-model"}
        assert {smp.labels["engine"] for smp in ttft} == {"0"}
        for name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits",
                     "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:num_preemptions"):
            assert fams[name][0].name == name + "_total"



def _sum_count(fams: dict, name: str) -> tuple[float, float]:
    samples = fams[name]
    return (next(x.value for x in samples if x.name == name + "_sum"),
            next(x.value for x in samples if x.name == name + "_count"))


async def test_queue_and_prefill_times_split_each_requests_time_to_first_token(sim):
    # vLLM's request_queue_time / request_prefill_time: arrival to first scheduling, and to the
    # first token; 12 requests against 8 seats, so some wait
    url = sim.url(0)
    names = ("vllm:time_to_first_token_seconds", "vllm:request_queue_time_seconds",
             "vllm:request_prefill_time_seconds")
    async with aiohttp.ClientSession() as s:
        before = await _scrape(s, url)

        async def one(i: int) -> None:
            body = {"model": "sim-model", "prompt": _words(30, f"q{i}-"), "max_tokens": 6,
                    "ignore_eos": True}
            async with s.post(url + "/v1/completions", json=body) as r:
                assert r.status == 200
                await r.read()

        await asyncio.gather(*(one(i) for i in range(12)))
        after = await _scrape(s, url)
    (ttft, n_ttft), (queue, n_queue), (prefill, n_prefill) = (
        tuple(a - b for a, b in zip(_sum_count(after, n), _sum_count(before, n)))
        for n in names)
    assert n_ttft == n_queue == n_prefill == 12
    assert queue > 0 and prefill > 0
    assert queue + prefill == pytest.approx(ttft, rel=1e-6)


async def test_stream_disconnect_aborts_the_engine_request(sim):
    url = sim.url(0)
    async with aiohttp.ClientSession() as s:
        before = await _scrape(s, url)
        aborted_before = {smp.labels["finished_reason"]: smp.value
                          for smp in before["vllm:request_success"]
                          if smp.name.endswith("_total")}["abort"]
        body = {"model": "sim-model", "prompt": _words(10, "d"), "max_tokens": 900,
                "ignore_eos": True, "stream": True}
        async with s.post(url + "/v1/completions", json=body) as r:
            assert r.status == 200
            await r.content.readline()             # the first token arrived
        # leaving the block without reading closes the connection mid-stream
        for _ in range(100):
            fams = await _scrape(s, url)
            aborted = {smp.labels["finished_reason"]: smp.value
                       for smp in fams["vllm:request_success"]
                       if smp.name.endswith("_total")}["abort"]
            if aborted == aborted_before + 1:
                break
            await asyncio.sleep(0.05)
        assert aborted == aborted_before + 1
        assert _value(fams, "vllm:num_requests_running") == 0
