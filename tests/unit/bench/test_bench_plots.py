"""What the plots are drawn from: per-request TTFTs, the set-up title, the demo's caption."""

from __future__ import annotations

import numpy as np

from inferoute.bench.demo import _demo_load, cold_start_caption, first_sights
from inferoute.bench.metrics import MAX_SAMPLES, RequestRecord, samples, summarize
from inferoute.bench.plots import setup_title, ttft_cdf, write_plots


def _stage(ttfts: list[float], rate: float = 5.0) -> dict:
    recs = []
    for i, t in enumerate(ttfts):
        r = RequestRecord(key=str(i), stage=0, start=0.0)
        r.on_tokens(t)
        r.end = t + 0.1
        recs.append(r)
    return summarize(recs, stage=0, rate=rate)


def test_a_stage_keeps_its_requests_ttfts_sorted():
    stage = _stage([0.3, 0.1, 0.2])
    assert stage["samples"]["time_to_first_token"] == [0.1, 0.2, 0.3]


def test_many_ttfts_thin_to_evenly_spaced_order_statistics():
    values = np.random.default_rng(1).exponential(1.0, 10_000).tolist()
    kept = samples(values)
    assert len(kept) == MAX_SAMPLES and kept == sorted(kept)
    assert kept[0] == round(min(values), 4) and kept[-1] == round(max(values), 4)
    assert abs(kept[MAX_SAMPLES // 2] - np.median(values)) < 0.01


def test_the_cdf_is_drawn_from_every_request_not_the_percentiles():
    ttfts = [0.05 * (i + 1) for i in range(40)]
    xs, ys, exact = ttft_cdf(_stage(ttfts))
    assert exact and xs == [round(t, 4) for t in ttfts]
    assert ys[0] == 1 / 40 and ys[-1] == 1.0 and len(ys) == 40
    old = _stage(ttfts)
    del old["samples"]     # a report saved before stages kept their TTFTs
    xs, ys, exact = ttft_cdf(old)
    assert not exact and len(xs) == 13 and (ys[0], ys[-1]) == (0.0, 1.0)


def test_plots_are_titled_with_the_setup_and_written(tmp_path):
    report = {"config": {"replicas": 4, "profile": "qwen3-32b-2xh100", "mode": "live",
                         "workload": {"name": "shared_prefix", "num_groups": 64,
                                      "num_prompts_per_group": 5, "system_prompt_len": 6000,
                                      "question_len": 600, "output_len": 100}},
              "stages": [_stage([0.2, 0.4], rate=3.0), _stage([0.1, 0.3], rate=6.0)]}
    assert setup_title(report) == ("4 x qwen3-32b-2xh100 (simulated) · shared prefix: 64 "
                                   "groups x 5, 6000+600 prompt, 100 output tokens · live")
    paths = write_plots([("a", report), ("b", report)], tmp_path, rate=6.0, caption="why")
    assert [p.name for p in paths] == ["latency_vs_qps.png", "throughput_vs_qps.png",
                                       "ttft_distribution.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_demo_caption_counts_the_cold_requests_of_each_stage():
    workload, load = _demo_load(50.0, 0)
    firsts = first_sights(workload, load)
    assert sum(firsts) == 64 and firsts[0] > firsts[1] > firsts[2]   # 64 system prompts
    assert f"{firsts[0]} of {load.stages[0].count}" in cold_start_caption(workload, load)
