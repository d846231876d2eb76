"""Pure parts of the simulator shell: request validation, SSE chunks, faults, KV-event encoding,
the metrics exposition."""

from __future__ import annotations

from types import SimpleNamespace

import msgpack
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferoute.core.errors import BadRequest
from inferoute.core.metricsparse import parse_metrics
from inferoute.sim.blocks import AllBlocksCleared, BlockRemoved, BlockStored
from inferoute.sim.faults import FaultInjector
from inferoute.sim.kvevents import encode_batch, topic_for
from inferoute.sim.metrics import ReplicaMetrics, build_1_2_5_buckets
from inferoute.sim.openai_api import (DEFAULT_COMPLETION_MAX_TOKENS, ChunkWriter, error_body,
                                      full_response, parse_sim_request, usage_dict)


def _sse(chunk: bytes) -> dict:
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
    return orjson.loads(chunk[6:-2])


# -- requests ---------------------------------------------------------------------------------

def test_completion_defaults_and_fields():
    r = parse_sim_request("completions", orjson.dumps({"model": "m", "prompt": "a b"}))
    assert r.max_tokens == DEFAULT_COMPLETION_MAX_TOKENS and not r.stream
    r = parse_sim_request("completions", {"model": "m", "prompt": ["a b c"], "max_tokens": 3,
                                          "stream": True, "ignore_eos": True,
                                          "stream_options": {"include_usage": True}})
    assert (r.prompt_text, r.max_tokens, r.include_usage, r.ignore_eos) == ("a b c", 3, True, True)
    r = parse_sim_request("completions", {"model": "m", "prompt": [5, 6, 7]})
    assert r.prompt_token_ids == [5, 6, 7]


def test_chat_renders_deterministically_with_generation_prompt():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi you"}],
            "max_completion_tokens": 4}
    a = parse_sim_request("chat", body)
    b = parse_sim_request("chat", orjson.dumps(body))
    assert a.prompt_text == b.prompt_text == "<|user|>\nhi you\n<|assistant|>"
    assert a.max_tokens == 4
    assert parse_sim_request("chat", {"model": "m", "messages": body["messages"]}).max_tokens \
        is None   # the server fills in max_model_len - prompt


@pytest.mark.parametrize("kind,body,param", [
    ("completions", {"prompt": "x"}, "model"),
    ("completions", {"model": "m"}, "prompt"),
    ("completions", {"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("completions", {"model": "m", "prompt": ["a", "b"]}, "prompt"),
    ("completions", {"model": "m", "prompt": "x", "n": 2}, "n"),
    ("completions", {"model": "m", "prompt": "x", "stream_options": {"include_usage": True}},
     "stream_options"),
    ("completions", {"model": "m", "prompt": "x", "ignore_eos": "yes"}, "ignore_eos"),
    ("chat", {"model": "m", "messages": []}, "messages"),
])
def test_bad_bodies_name_the_field(kind, body, param):
    with pytest.raises(BadRequest) as err:
        parse_sim_request(kind, body)
    assert err.value.param == param


def test_invalid_json_is_bad_request():
    with pytest.raises(BadRequest):
        parse_sim_request("completions", b"{nope")


# -- responses --------------------------------------------------------------------------------

def test_completion_chunks_match_vllm_shape():
    w = ChunkWriter("completions", "cmpl-1", "m", created=7)
    tok = _sse(w.token(" hello"))
    assert tok == {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m",
                   "choices": [{"index": 0, "text": " hello", "logprobs": None,
                                "finish_reason": None, "stop_reason": None}],
                   "usage": None}
    fin = _sse(w.final(' "q"', "length"))
    assert fin["choices"][0]["text"] == ' "q"' and fin["choices"][0]["finish_reason"] == "length"
    usage = _sse(w.usage(usage_dict(5, 2, 3)))
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 5, "total_tokens": 7, "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 3}}
    assert _sse(w.token("x", usage_dict(1, 1, 0)))["usage"]["total_tokens"] == 2


def test_chat_chunks_match_vllm_shape():
    w = ChunkWriter("chat", "chatcmpl-1", "m", created=7)
    assert "usage" not in _sse(w.token("x"))
    assert _sse(ChunkWriter("chat", "c", "m", include_usage=True).token("x"))["usage"] is None
    role = _sse(w.open())
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert _sse(w.token("hi"))["choices"][0]["delta"] == {"content": "hi"}
    fin = _sse(w.final("", "stop"))["choices"][0]
    assert fin["delta"] == {} and fin["finish_reason"] == "stop"


def test_full_response_and_error_body():
    body = orjson.loads(full_response("chat", "chatcmpl-1", "m", "a b", "stop",
                                      usage_dict(3, 2, 0), created=1))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "a b"
    assert body["usage"]["completion_tokens"] == 2
    err = orjson.loads(error_body(404, "The model `x` does not exist.", param="model"))
    assert err == {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",
                             "param": "model", "code": 404}}


# -- faults -----------------------------------------------------------------------------------

def test_fault_header_forces_and_rate_draws():
    f = FaultInjector(seed=1)
    assert f.draw({}) is None
    assert f.draw({"x-inferoute-sim-fault": "DROP"}) == "drop"
    assert f.draw({"x-inferoute-sim-fault": "none"}) is None
    with pytest.raises(BadRequest):
        f.draw({"x-inferoute-sim-fault": "418"})
    f.update({"rate": 0.5, "kinds": ["429", "slow"]})
    draws = [f.draw({}) for _ in range(2000)]
    assert set(draws) == {None, "429", "slow"}
    assert 850 < draws.count(None) < 1150
    f.update({"rate": 1.0})
    assert None not in {f.draw({}) for _ in range(50)}


@pytest.mark.parametrize("patch", [{"rate": 2}, {"rate": True}, {"kinds": []},
                                   {"kinds": ["oops"]}, {"slow_delay": -1}, {"bogus": 1},
                                   {"drop_after_tokens": 1.5}])
def test_fault_update_rejects_bad_settings_atomically(patch):
    f = FaultInjector()
    before = f.settings.to_dict()
    with pytest.raises(BadRequest):
        f.update({"rate": 0.3, **patch})
    assert f.settings.to_dict() == before


# -- KV events --------------------------------------------------------------------------------

def test_kv_event_batch_is_vllm_032_tagged_maps():
    events = [BlockStored([11, 12], None, list(range(32)), 16, None),
              BlockStored([13], 12, list(range(32, 48)), 16, 3, lora_name="a1"),
              BlockRemoved([11]), AllBlocksCleared()]
    batch = msgpack.unpackb(encode_batch(events, 12.5, 0), raw=False)
    base = {"block_size": 16, "medium": "GPU", "group_idx": 0}
    assert batch == [12.5, [
        {"type": "BlockStored", "block_hashes": [11, 12], "parent_block_hash": None,
         "token_ids": list(range(32)), "lora_id": None, "lora_name": None,
         "extra_keys": [None, None], **base},
        {"type": "BlockStored", "block_hashes": [13], "parent_block_hash": 12,
         "token_ids": list(range(32, 48)), "lora_id": 3, "lora_name": "a1",
         "extra_keys": [["a1"]], **base},
        {"type": "BlockRemoved", "block_hashes": [11], "medium": "GPU", "group_idx": 0},
        {"type": "AllBlocksCleared"}], 0]
    assert topic_for("10.0.0.1", 8000, "m") == "kv@10.0.0.1:8000@m"


def test_large_block_hashes_survive_msgpack():
    h = 2**64 - 5
    batch = msgpack.unpackb(encode_batch([BlockRemoved([h])], 1.0), raw=False)
    assert batch[1][0]["block_hashes"] == [h]


# -- metrics ----------------------------------------------------------------------------------

def _stats(**kw):
    base = dict(running=3, waiting=2, kv_usage=0.25, prefix_cache_queries=100,
                prefix_cache_hits=40, preemptions=1, max_lora=2, running_loras=["a", "b"],
                waiting_loras=["c"])
    base.update(kw)
    return SimpleNamespace(**base)


def test_metrics_exposition_parses_with_vllm_names():
    m = ReplicaMetrics("m", _stats, block_size=16, num_gpu_blocks=64, max_model_len=1024,
                       lora_enabled=True)
    m.ttft.observe(0.03)
    m.itl.observe(0.02)
    m.prompt_tokens.inc(10)
    m.request_finished("length", 10, 4, 0.5, decode_seconds=0.3)
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert fams["vllm:num_requests_running"].type == "gauge"
    assert fams["vllm:num_requests_running"].samples[0].value == 3
    assert fams["vllm:num_requests_waiting"].samples[0].value == 2
    assert fams["vllm:kv_cache_usage_perc"].samples[0].value == 0.25
    q = fams["vllm:prefix_cache_queries"]
    assert q.type == "counter" and q.samples[0].name == "vllm:prefix_cache_queries_total"
    assert q.samples[0].value == 100 and q.samples[0].labels == {"model_name": "m", "engine": "0"}
    assert fams["vllm:prefix_cache_hits"].samples[0].value == 40
    succ = {s.labels["finished_reason"]: s.value for s in fams["vllm:request_success"].samples
            if s.name.endswith("_total")}
    assert succ == {"stop": 0, "length": 1, "abort": 0}
    lora = fams["vllm:lora_requests_info"].samples[0]
    # as vLLM 0.32: both labels list every adapter with requests, waiting or running
    assert lora.labels == {"max_lora": "2", "waiting_lora_adapters": "a,b,c",
                           "running_lora_adapters": "a,b,c"}
    itl = [s for s in fams["vllm:inter_token_latency_seconds"].samples
           if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in itl][:3] == ["0.01", "0.025", "0.05"] and len(itl) == 20
    e2e = [s for s in fams["vllm:e2e_request_latency_seconds"].samples
           if s.name.endswith("_bucket")]
    assert len(e2e) == 22 and e2e[0].labels["le"] == "0.3"
    tpot = {s.name: s.value for s in fams["vllm:request_time_per_output_token_seconds"].samples}
    assert tpot["vllm:request_time_per_output_token_seconds_count"] == 1
    assert abs(tpot["vllm:request_time_per_output_token_seconds_sum"] - 0.1) < 1e-9
    cache = fams["vllm:cache_config_info"].samples[0]
    assert cache.value == 1 and cache.labels["num_gpu_blocks"] == "64"


def test_lora_info_keeps_past_label_sets_and_the_newest_is_current():
    """As a real vLLM 0.32 page after an adapter's request finished: the old series stays with
    its older time, the empty one is newer; the parser takes the newest, with the page's idle
    request counts."""
    state = {"st": _stats(running=1, waiting=0, running_loras=["a1"], waiting_loras=[])}
    m = ReplicaMetrics("m", lambda: state["st"], block_size=16, num_gpu_blocks=64,
                       max_model_len=1024, lora_enabled=True)
    busy = parse_metrics(m.render().decode(), "vllm")
    assert busy.running_loras == busy.waiting_loras == ("a1",)
    state["st"] = _stats(running=0, waiting=0, running_loras=[], waiting_loras=[])
    text = m.render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    series = {s.labels["running_lora_adapters"]: s.value
              for s in fams["vllm:lora_requests_info"].samples}
    assert set(series) == {"a1", ""} and series[""] >= series["a1"]
    idle = parse_metrics(text, "vllm")
    assert idle.running_loras == () and idle.running == 0
    # an idle engine does not step: its current series keeps its time
    again = {s.labels["running_lora_adapters"]: s.value for f in
             text_string_to_metric_families(m.render().decode())
             if f.name == "vllm:lora_requests_info" for s in f.samples}
    assert again == series


def test_metrics_without_lora_have_no_lora_info():
    m = ReplicaMetrics("m", _stats, block_size=16, num_gpu_blocks=64, max_model_len=1024)
    names = {f.name for f in text_string_to_metric_families(m.render().decode())}
    assert "vllm:lora_requests_info" not in names


def test_token_buckets_follow_1_2_5():
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert build_1_2_5_buckets(1024)[-1] == 1000
