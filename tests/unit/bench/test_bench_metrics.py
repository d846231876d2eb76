"""inference-perf style summaries from known request records."""


import numpy as np
import pytest

from inferoute.bench.metrics import (
    PERCENTILES,
    RequestRecord,
    distribution,
    headline,
    percentile_key,
    summarize,
)


def _record(key: str, start: float, token_times: list[float], prompt: int = 100,
            cached: int | None = None, stage: int = 0) -> RequestRecord:
    r = RequestRecord(key=key, stage=stage, start=start, prompt_tokens=prompt,
                      cached_tokens=cached)
    for t in token_times:
        r.on_tokens(t)
    r.end = token_times[-1]
    return r


def test_percentile_keys_match_inference_perf() -> None:
    assert [percentile_key(p) for p in PERCENTILES] == [
        "p0p1", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99", "p99p9"]


def test_distribution_of_1_to_101() -> None:
    d = distribution(list(range(1, 102)), "s")
    assert d is not None
    assert d["min"] == 1 and d["max"] == 101 and d["mean"] == 51
    assert d["p50"] == 51 and d["p90"] == pytest.approx(91) and d["p1"] == pytest.approx(2)
    assert d["p0p1"] == pytest.approx(1.1) and d["p99p9"] == pytest.approx(100.9)
    assert d["units"] == "s"
    assert distribution([], "s") is None


def test_request_metrics() -> None:
    # sent at 10, tokens at 10.5, 10.6, 10.8, 11.1 -> TTFT .5, ITLs .1 .2 .3, TPOT .2, NTPOT 1.1/4
    r = _record("a", 10.0, [10.5, 10.6, 10.8, 11.1])
    assert r.ttft == pytest.approx(0.5)
    assert r.tpot == pytest.approx(0.2)
    assert r.latency == pytest.approx(1.1)
    assert list(np.round(np.frombuffer(r.itl, dtype=np.float32), 5)) == \
        pytest.approx([0.1, 0.2, 0.3])


def test_chunk_with_several_tokens_has_zero_gaps_inside() -> None:
    r = RequestRecord(key="b", stage=0, start=0.0)
    r.on_tokens(1.0, 2)
    r.on_tokens(1.5, 3)
    assert r.output_tokens == 5
    assert list(r.itl) == pytest.approx([0.0, 0.5, 0.0, 0.0])


def test_stage_summary_throughput_as_inference_perf() -> None:
    recs = [
        _record("a", 0.0, [1.0, 2.0, 3.0], prompt=100, cached=50),
        _record("b", 1.0, [1.5, 2.5, 4.0], prompt=300, cached=0),
        RequestRecord(key="c", stage=0, start=2.0, prompt_tokens=10, error="HTTP 500"),
    ]
    s = summarize(recs, stage=0, rate=1.0)
    m = s["metrics"]
    assert s["stage"] == 0 and s["rate"] == 1.0
    assert m["requests"]["total"] == 3 and m["requests"]["failures"] == 1
    # 2 successes over first send (0) .. last end (4): 0.5 req/s; 400 prompt, 6 output tokens
    assert m["throughput"]["requests_per_sec"] == pytest.approx(0.5)
    assert m["throughput"]["input_tokens_per_sec"] == pytest.approx(100)
    assert m["throughput"]["output_tokens_per_sec"] == pytest.approx(1.5)
    assert m["throughput"]["total_tokens_per_sec"] == pytest.approx(101.5)
    assert m["latency"]["time_to_first_token"]["mean"] == pytest.approx(0.75)
    assert m["latency"]["request_latency"]["max"] == pytest.approx(3.0)
    # pooled ITL gaps: 1, 1, 1, 1.5
    assert m["latency"]["inter_token_latency"]["mean"] == pytest.approx(1.125)
    assert m["latency"]["time_per_output_token"]["mean"] == pytest.approx((1.0 + 1.25) / 2)
    assert m["prefix_cache"]["hit_rate"] == pytest.approx(50 / 400)
    h = headline(s)
    assert h["requests_per_sec"] == pytest.approx(0.5) and h["ttft"] == pytest.approx(0.75)


def test_summary_of_only_failures_has_no_distributions() -> None:
    s = summarize([RequestRecord(key="x", stage=0, start=0.0, error="boom")])
    assert s["metrics"]["requests"]["failures"] == 1
    assert s["metrics"]["latency"]["time_to_first_token"] is None
    assert s["metrics"]["throughput"]["requests_per_sec"] == 0.0
