"""Metrics parser tests on realistic /metrics pages of vLLM (V1 and older), SGLang and
TensorRT-LLM.

Written by hand in each engine's exposition format (HELP/TYPE lines, labels, histogram
buckets, `_created` samples); values are made up.
"""

from __future__ import annotations

_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
            7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)


def _histogram(name: str, labels: str) -> str:
    lines = [f"# HELP {name} Histogram of {name}.", f"# TYPE {name} histogram"]
    count = 0
    for le in _BUCKETS:
        count += 3
        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {float(count)}')
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(count)}')
    lines.append(f"{name}_count{{{labels}}} {float(count)}")
    lines.append(f"{name}_sum{{{labels}}} 12.5")
    lines.append(f"{name}_created{{{labels}}} 1.7321e+09")
    return "\n".join(lines)


_L = 'engine="0",model_name="Qwen/Qwen3-32B"'

VLLM_V1 = "\n".join([
    "# HELP python_gc_objects_collected_total Objects collected during gc",
    "# TYPE python_gc_objects_collected_total counter",
    'python_gc_objects_collected_total{generation="0"} 15034.0',
    "# HELP vllm:num_requests_running Number of requests in model execution batches.",
    "# TYPE vllm:num_requests_running gauge",
    f"vllm:num_requests_running{{{_L}}} 7.0",
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
    "# TYPE vllm:num_requests_waiting gauge",
    f"vllm:num_requests_waiting{{{_L}}} 3.0",
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
    "# TYPE vllm:kv_cache_usage_perc gauge",
    f"vllm:kv_cache_usage_perc{{{_L}}} 0.4213",
    "# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.",
    "# TYPE vllm:prefix_cache_queries counter",
    f"vllm:prefix_cache_queries_total{{{_L}}} 120000.0",
    f"vllm:prefix_cache_queries_created{{{_L}}} 1.7321e+09",
    "# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.",
    "# TYPE vllm:prefix_cache_hits counter",
    f"vllm:prefix_cache_hits_total{{{_L}}} 90000.0",
    f"vllm:prefix_cache_hits_created{{{_L}}} 1.7321e+09",
    "# HELP vllm:lora_requests_info Running stats on lora requests.",
    "# TYPE vllm:lora_requests_info gauge",
    'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora,chat-lora",'
    'waiting_lora_adapters=""} 1.7321000100e+09',
    'vllm:lora_requests_info{max_lora="4",running_lora_adapters="old-lora",'
    'waiting_lora_adapters="x"} 1.7321000050e+09',
    'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora",'
    'waiting_lora_adapters="tool-lora"} 1.7321000200e+09',
    "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
    "# TYPE vllm:cache_config_info gauge",
    'vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",'
    'cpu_offload_gb="0",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",'
    'is_attention_free="False",num_cpu_blocks="None",num_gpu_blocks="17296",'
    'num_gpu_blocks_override="None",prefix_caching_hash_algo="sha256",sliding_window="None",'
    'swap_space="4",swap_space_bytes="4294967296"} 1.0',
    "# HELP vllm:request_success_total Count of successfully processed requests.",
    "# TYPE vllm:request_success_total counter",
    f'vllm:request_success_total{{{_L},finished_reason="stop"}} 880.0',
    f'vllm:request_success_total{{{_L},finished_reason="length"}} 12.0',
    _histogram("vllm:time_to_first_token_seconds", _L),
    _histogram("vllm:inter_token_latency_seconds", _L),
    _histogram("vllm:e2e_request_latency_seconds", _L),
    _histogram("vllm:request_prompt_tokens", _L),
    _histogram("vllm:request_generation_tokens", _L),
    "",
])

#: an older vLLM: gpu_cache_usage_perc, counters typed with `_total`, no label on some lines,
#: a sample timestamp, and two data-parallel engines.
VLLM_OLD = "\n".join([
    "# TYPE vllm:num_requests_running gauge",
    'vllm:num_requests_running{model_name="m",engine="0"} 2.0',
    'vllm:num_requests_running{model_name="m",engine="1"} 5.0',
    "# TYPE vllm:num_requests_waiting gauge",
    'vllm:num_requests_waiting{model_name="m",engine="0"} 1.0 1732100000000',
    'vllm:num_requests_waiting{model_name="m",engine="1"} 0.0 1732100000000',
    "# TYPE vllm:gpu_cache_usage_perc gauge",
    'vllm:gpu_cache_usage_perc{model_name="m",engine="0"} 0.2',
    'vllm:gpu_cache_usage_perc{model_name="m",engine="1"} 0.6',
    "# TYPE vllm:prefix_cache_queries_total counter",
    "vllm:prefix_cache_queries_total 400",
    "# TYPE vllm:prefix_cache_hits_total counter",
    "vllm:prefix_cache_hits 100",
    'vllm:cache_config_info{block_size="32",num_gpu_blocks="None"} 1',
    _histogram("vllm:time_to_first_token_seconds", 'model_name="m"'),
])

SGLANG = "\n".join([
    "# HELP sglang:num_running_reqs The number of running requests.",
    "# TYPE sglang:num_running_reqs gauge",
    'sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0',
    "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.",
    "# TYPE sglang:num_queue_reqs gauge",
    'sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0',
    "# HELP sglang:token_usage The token usage.",
    "# TYPE sglang:token_usage gauge",
    'sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.73',
    "# HELP sglang:cache_hit_rate The prefix cache hit rate.",
    "# TYPE sglang:cache_hit_rate gauge",
    'sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.51',
    'sglang:cache_config_info{num_pages="300000",page_size="1"} 1.0',
    _histogram("sglang:time_to_first_token_seconds",
               'model_name="meta-llama/Llama-3.1-8B-Instruct"'),
    "",
])

TRTLLM = "\n".join([
    "# HELP trtllm_num_requests_running Number of running requests.",
    "# TYPE trtllm_num_requests_running gauge",
    'trtllm_num_requests_running{model_name="llama",engine_type="trtllm"} 9',
    "# HELP trtllm_num_requests_waiting Number of waiting requests.",
    "# TYPE trtllm_num_requests_waiting gauge",
    'trtllm_num_requests_waiting{model_name="llama",engine_type="trtllm"} 2',
    "# HELP trtllm_kv_cache_utilization KV cache utilization.",
    "# TYPE trtllm_kv_cache_utilization gauge",
    'trtllm_kv_cache_utilization{model_name="llama",engine_type="trtllm"} 0.35',
    _histogram("trtllm_time_to_first_token_seconds", 'model_name="llama"'),
])


# --------------------------------------------------------------------------- tests

import math  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from inferoute.core.metricsparse import (  # noqa: E402
    detect_engine, find_samples, parse_labels, parse_metrics)


def test_vllm_v1_page():
    m = parse_metrics(VLLM_V1, "vllm", scraped_at=12.5)
    assert (m.waiting, m.running) == (3, 7)
    assert m.kv_usage == pytest.approx(0.4213)
    assert (m.block_size, m.num_blocks) == (16, 17296)
    assert m.prefix_cache_queries == 120000.0 and m.prefix_cache_hits == 90000.0
    assert m.scraped_at == 12.5


def test_the_page_names_the_served_model():
    from inferoute.core.metricsparse import PageHints
    hints = PageHints()
    for _ in range(2):  # with and without remembered labels
        assert parse_metrics(VLLM_V1, "vllm", hints=hints).model_names == ("Qwen/Qwen3-32B",)
    assert parse_metrics(VLLM_OLD).model_names == ("m",)  # two engines, one model
    assert parse_metrics("vllm:num_requests_waiting 2\n", "vllm").model_names == ()


def test_lora_info_newest_sample_wins_whatever_its_position():
    m = parse_metrics(VLLM_V1, "vllm")
    assert m.max_lora == 4
    assert m.running_loras == ("sql-lora",)
    assert m.waiting_loras == ("tool-lora",)


def test_old_vllm_sums_engines_and_averages_usage():
    m = parse_metrics(VLLM_OLD)
    assert (m.waiting, m.running) == (1, 7)
    assert m.kv_usage == pytest.approx(0.4)  # gpu_cache_usage_perc fallback, mean of 0.2, 0.6
    assert m.block_size == 32 and m.num_blocks is None  # "None" before memory profiling
    assert m.max_lora is None and m.running_loras == ()


@pytest.mark.parametrize("sample", ["vllm:prefix_cache_queries_total 400",
                                    "vllm:prefix_cache_queries 400"])
@pytest.mark.parametrize("type_line", ["# TYPE vllm:prefix_cache_queries counter",
                                       "# TYPE vllm:prefix_cache_queries_total counter"])
def test_counter_with_or_without_total(type_line, sample):
    text = f"{type_line}\n{sample}\nvllm:prefix_cache_queries_created 1.7e9\n"
    assert parse_metrics(text, "vllm").prefix_cache_queries == 400.0


def test_sglang_page():
    assert detect_engine(SGLANG) == "sglang"
    m = parse_metrics(SGLANG)
    assert (m.waiting, m.running) == (4, 12)
    assert m.kv_usage == pytest.approx(0.73)
    assert (m.block_size, m.num_blocks) == (1, 300000)
    assert m.prefix_cache_queries is None


def test_trtllm_page():
    assert detect_engine(TRTLLM) == "trtllm"
    m = parse_metrics(TRTLLM)
    assert (m.waiting, m.running, m.kv_usage) == (2, 9, pytest.approx(0.35))
    assert m.block_size is None and m.num_blocks is None


def test_missing_families_leave_defaults():
    text = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 2\n"
    m = parse_metrics(text, "vllm", scraped_at=1.0)
    assert (m.running, m.waiting, m.kv_usage, m.block_size, m.max_lora) == (2, 0, 0.0, None, None)
    assert m.prefix_cache_queries is None
    assert parse_metrics("", "vllm").running == 0
    assert detect_engine("process_cpu_seconds_total 3.0\n") is None


def test_similar_names_and_comments_do_not_match():
    text = ("# HELP vllm:num_requests_waiting help text vllm:num_requests_waiting 99\n"
            "vllm:num_requests_waiting_by_reason{reason=\"x\"} 50\n"
            "vllm:num_requests_waiting 4\n")
    assert parse_metrics(text, "vllm").waiting == 4


def test_nan_and_garbage_values_are_ignored():
    text = ("vllm:kv_cache_usage_perc{engine=\"0\"} NaN\n"
            "vllm:kv_cache_usage_perc{engine=\"1\"} 0.5\n"
            "vllm:num_requests_running{engine=\"0\"} oops\n"
            "vllm:num_requests_running{engine=\"1\"} 3\n")
    m = parse_metrics(text, "vllm")
    assert m.kv_usage == 0.5 and m.running == 3
    assert math.isfinite(m.kv_usage)


def test_label_values_with_escapes_and_braces():
    labels = parse_labels(r'a="x,y",b="say \"hi\"",c="}{",d="line\nbreak"')
    assert labels == {"a": "x,y", "b": 'say "hi"', "c": "}{", "d": "line\nbreak"}
    text = 'vllm:lora_requests_info{running_lora_adapters="a}b",max_lora="2"} 5\n'
    (s,) = find_samples(text, "vllm:lora_requests_info")
    assert s.value == 5.0 and s.labels["running_lora_adapters"] == "a}b"


def test_parse_is_fast_enough_for_16_endpoints_every_50ms():
    """Budget check with a wide margin (not a timing flake): 320 parses must fit in 1 s."""
    text = VLLM_V1 * 1  # ~20 kB, like a real page
    n = 320
    t0 = time.process_time()
    for _ in range(n):
        parse_metrics(text, "vllm")
    spent = time.process_time() - t0
    assert spent < 1.0, f"{n} parses took {spent:.3f}s of CPU"


def test_hints_give_the_same_result_on_changing_pages():
    """Values change and families move around; every family stays present."""
    from inferoute.core.metricsparse import PageHints

    hints = PageHints(recheck=3)
    lookalike = 'vllm:num_requests_waiting_by_reason{r="x"} 50\n' + "# " + "x" * 3000 + "\n"
    pages = [VLLM_V1,
             VLLM_V1.replace("} 3.0\n", "} 17.0\n").replace("0.4213", "0.9"),
             # a big family inserted before everything moves every offset
             _histogram("vllm:new_family_seconds", _L) + "\n" + VLLM_V1,
             # a look-alike line right where the real family used to be
             lookalike + VLLM_V1,
             VLLM_V1.replace("vllm:num_requests_waiting{", "vllm:num_requests_waiting{x=\"1\","
                             ) + f"vllm:num_requests_waiting{{{_L}}} 5.0\n",
             VLLM_V1]
    for page in pages:
        assert parse_metrics(page, "vllm", hints=hints) == parse_metrics(page, "vllm")


def test_hints_recheck_absent_families_every_n_parses():
    from inferoute.core.metricsparse import PageHints

    hints = PageHints(recheck=2)
    without = "vllm:num_requests_running 1\n"
    with_lora = without + 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a"} 5\n'
    assert parse_metrics(without, "vllm", hints=hints).max_lora is None
    seen = [parse_metrics(with_lora, "vllm", hints=hints).max_lora for _ in range(3)]
    assert seen == [None, None, 2]  # absent for 2 more parses, then found again
