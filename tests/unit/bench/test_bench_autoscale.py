"""Autoscaling in virtual time: the HPA's arithmetic, the day-shaped load, replicas joining and
leaving a run, and a whole autoscaled run on the tiny profile."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from inferoute.bench.autoscale import (
    TRACE_RATE_WINDOW,
    AutoscaleConfig,
    HorizontalPodAutoscaler,
    ShapedLoad,
    run_autoscaled,
    true_rate,
)
from inferoute.bench.autoscale_command import table
from inferoute.bench.des import SimConfig, VirtualBench
from inferoute.bench.load import LoadSpec, Stage, parse_stages
from inferoute.bench.traces import load_trace
from inferoute.bench.workloads import random_prompts

#: 100 requests over 43.7 s
AZURE_SAMPLE = str(Path(__file__).resolve().parents[2] / "data" / "traces" / "azure-sample.csv")


def test_hpa_value_target_tolerance_and_rate_limit() -> None:
    hpa = HorizontalPodAutoscaler(1, 20, 0.5, "Value")
    assert hpa.recommend(0, current=4, ready=4, value=0.54) == 4     # within 10%
    assert hpa.recommend(15, current=4, ready=4, value=0.75) == 6    # ceil(4 x 1.5)
    # a jump is capped at max(+4 pods, double) per sync
    assert hpa.recommend(30, current=2, ready=2, value=5.0) == 6
    assert hpa.recommend(45, current=1, ready=1, value=20.0) == 5


def test_hpa_scale_down_waits_for_the_window() -> None:
    hpa = HorizontalPodAutoscaler(1, 20, 1.0, "AverageValue")
    assert hpa.recommend(0, current=8, ready=8, value=8.0) == 8
    # the gauge drops to 2: held at the highest proposal of the last 300 s
    assert hpa.recommend(15, current=8, ready=8, value=2.0) == 8
    assert hpa.recommend(290, current=8, ready=8, value=2.0) == 8
    assert hpa.recommend(301, current=8, ready=8, value=2.0) == 2
    assert hpa.recommend(316, current=2, ready=2, value=30.0) == 6   # up: capped, then max
    assert HorizontalPodAutoscaler(1, 3, 1.0, "AverageValue").recommend(
        0, current=2, ready=2, value=9.0) == 3


def test_day_load_rises_and_falls() -> None:
    load = ShapedLoad.make(base=1, peak=9, duration=100, seed=3)
    times = load.arrivals(0)
    assert len(times) == load.stages[0].count == 500
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= 100
    middle = sum(1 for t in times if 40 <= t < 60)
    edge = sum(1 for t in times if t < 10 or t >= 90)
    assert middle > 5 * edge
    assert load.rate(50) == pytest.approx(9) and load.rate(0) == pytest.approx(1)
    assert ShapedLoad.make(1, 9, 100, seed=3).arrivals(0) == times


@pytest.mark.parametrize(("shape", "inside", "count"), [("spike", (30, 50), 260),
                                                        ("step", (25, 100), 700)])
def test_spike_and_step_loads(shape: str, inside: tuple[float, float], count: int) -> None:
    load = ShapedLoad.make(base=1, peak=9, duration=100, seed=3, shape=shape)  # type: ignore[arg-type]
    times = load.arrivals(0)
    assert len(times) == count  # the mean rate's count
    lo, hi = inside
    assert load.rate(lo) == load.rate(hi - 1) == 9 and load.rate(lo - 1) == 1
    peak = sum(1 for t in times if lo <= t < hi) / (hi - lo)
    rest = sum(1 for t in times if t < lo or t >= hi) / (100 - (hi - lo))
    assert peak > 5 * rest
    with pytest.raises(ValueError, match="shape"):
        ShapedLoad.make(1, 9, 100, shape="wave")  # type: ignore[arg-type]


def test_a_warmup_runs_the_base_rate_first() -> None:
    """`warmup` seconds at the base rate, then the shape shifted by them; the count is the
    mean rate's over both."""
    load = ShapedLoad.make(base=1, peak=9, duration=100, seed=3, warmup=50)
    assert load.stages[0].duration == 150 and load.stages[0].count == 50 + 500
    assert load.rate(0) == load.rate(49) == 1 and load.rate(100) == pytest.approx(9)
    assert load.rate_at(149) == pytest.approx(load.rate(149)) and load.rate_at(150) == 0.0
    before = sum(1 for t in load.arrivals(0) if t < 50)
    assert 25 <= before <= 80  # ~50 at 1 req/s
    with pytest.raises(ValueError, match="warmup"):
        ShapedLoad.make(1, 9, 100, warmup=-1)


def test_a_warmup_is_not_scored() -> None:
    """The requests sent during the warm-up and the replica-seconds before its end do not
    count: the day is scored from a pool the rule has already sized for the base rate."""
    warm = replace(_autoscaled("kv", kv_target=0.3), scored_from=40.0,
                   load=ShapedLoad.make(2, 50, 100, seed=1, warmup=40))
    res = run_autoscaled(warm)
    total = warm.load.stages[0].count
    assert 0 < res.requests < total  # the warm-up's ~80 requests left out
    assert total - res.requests == pytest.approx(80, abs=40)
    assert res.replica_seconds <= res.peak_replicas * (res.virtual_seconds - 40)
    assert all(s.rate == 2.0 for s in res.timeline if s.t < 40)


def _workload():
    return random_prompts(num_prompts=200, input_len=300, output_len=12, seed=1)


def test_replicas_join_and_leave_a_run() -> None:
    cfg = SimConfig(policy="round-robin", replicas=2, profile="tiny", workload=_workload(),
                    load=LoadSpec(parse_stages("20:6"), seed=1), seed=1)  # 120 requests
    bench = VirtualBench(cfg)
    events: dict[str, float] = {}

    def grow(now: float) -> None:
        events["added"] = now
        events["new"] = bench.add_replica(now).name  # type: ignore[assignment]

    def shrink(now: float) -> None:
        events["removed"] = now
        bench.remove_replica(bench.endpoints[0].name)
        assert not bench.drained(bench.endpoints[1].name)  # never removed

    bench.call_at(2.0, grow)
    bench.call_at(4.0, shrink)
    result = bench.run()
    records = result.records[0]
    assert len(records) == 120 and all(r.ok for r in records)
    first, new = bench.endpoints[0].name, events["new"]
    assert any(r.endpoint == new for r in records)
    assert all(r.start >= events["added"] for r in records if r.endpoint == new)
    assert all(r.start < events["removed"] for r in records if r.endpoint == first)
    assert bench.drained(first) and len(result.engines) == 3


def _autoscaled(rule: str, **kw) -> AutoscaleConfig:
    return AutoscaleConfig(rule=rule, workload=_workload(),  # type: ignore[arg-type]
                           load=ShapedLoad.make(2, 50, 100, seed=1), profile="tiny",
                           policy="round-robin", ttft_target=0.02, cold_start=15,
                           max_replicas=6, scale_down_window=15, **kw)


@pytest.mark.parametrize("rule", ["gauge", "kv"])
def test_an_autoscaled_run_adds_and_removes_replicas(rule: str) -> None:
    res = run_autoscaled(_autoscaled(rule, kv_target=0.3))
    assert res.requests == 2600 and res.failed == 0
    asked = [s.asked for s in res.timeline]
    assert max(asked) > 1 and res.peak_replicas == max(asked) <= 6
    assert asked[-1] < max(asked)  # the load fell: the pool shrank
    # replica-seconds: at least one replica all along, at most the peak all along
    assert res.virtual_seconds <= res.replica_seconds <= res.peak_replicas * res.virtual_seconds
    assert 0 < res.ttft_p50 <= res.ttft_p90
    if rule == "gauge":
        again = run_autoscaled(_autoscaled(rule))
        assert again.row() == res.row() and again.timeline == res.timeline  # deterministic
    # each sync shows the load's true rate now and a cold start plus a sync on (0 after the
    # load), and the gauge's forecast of it (none for the KV rule)
    load = ShapedLoad.make(2, 50, 100, seed=1)
    for s in res.timeline:
        assert s.rate == (load.rate(s.t) if s.t < 100 else 0.0)
        assert s.rate_ahead == (load.rate(s.t + 30) if s.t + 30 < 100 else 0.0)
        assert math.isnan(s.forecast) == (rule == "kv")
    if rule == "gauge":  # the forecast follows the load: highest near its peak (t = 50)
        top = max(res.timeline, key=lambda s: s.forecast)
        assert 30 <= top.t <= 75 and top.forecast > 10 * min(s.forecast for s in res.timeline)


def test_a_pool_whose_clients_do_not_stream_scales_down() -> None:
    """Whole answers: the gateway times no first token, yet the gauge measures the speeds
    from the answers' ends, follows the load up and lets the pool shrink after its peak
    (before, it held the ready replicas: up only where every replica queued, never down)."""
    res = run_autoscaled(_autoscaled("gauge", stream=False))
    assert res.requests == 2600 and res.failed == 0
    asked = [s.asked for s in res.timeline]
    assert max(asked) > 1 and asked[-1] < max(asked)
    # the engine's first tokens are still what is scored
    assert 0 < res.ttft_p50 <= res.ttft_p90 < 1.0
    top = max(res.timeline, key=lambda s: s.metric)
    assert 30 <= top.t <= 75


def test_table_marks_the_best_threshold() -> None:
    from inferoute.bench.autoscale import AutoscaleResult

    def r(rule, kv, rs, p90, over=3):
        return AutoscaleResult(rule, kv, rs, 100, 0, p90, 0.1, over, 4, 10.0, 1.0)
    text = table([r("gauge", None, 900, 0.4), r("kv", 0.2, 1200, 0.5, 2), r("kv", 0.4, 1000, 0.8),
                  r("kv", 0.6, 800, 1.5, 30)], ttft_target=1.0)
    assert "| KV utilisation 0.4 (best) | 1,000 |" in text
    assert "(best)" not in text.split("KV utilisation 0.4")[0]
    assert "| desired-replicas gauge | 900 | 4 | 0.100 | 0.400 | 3 (3.0%) | 100 |" in text
    verdict, equal = text.split("\n")[-2:]
    assert verdict == ("gauge: meets the target, -10.0% replica-seconds against the best KV "
                       "threshold (0.4)")
    # at the gauge's 900 replica-seconds only KV 0.6 ran (30 over); as few over (3) cost
    # KV 0.4 1,000
    assert equal == ("at equal cost: with no more replica-seconds (900), a KV threshold has at "
                     "best 30 (30.0%) requests over (KV 0.6; the gauge 3 (3.0%)); with no more "
                     "requests over (3), a KV threshold used at best 1,000 replica-seconds "
                     "(KV 0.4, +11.1%)")
    assert table([r("gauge", None, 900, 0.4)], 1.0).endswith(
        "gauge: meets the target; no KV run to compare with")
    assert table([r("gauge", None, 900, 0.4), r("kv", 0.2, 800, 1.5, 9)], 1.0).endswith(
        "gauge: meets the target; no KV threshold of the sweep does\nat equal cost: with no "
        "more replica-seconds (900), a KV threshold has at best 9 (9.0%) requests over (KV "
        "0.2; the gauge 3 (3.0%)); no KV threshold had as few requests over (3)")
    edge = table([r("gauge", None, 900, 1.2, 20), r("kv", 0.2, 1000, 0.9)], ttft_target=1.0)
    assert ("gauge: misses the target, -10.0% replica-seconds against the best KV threshold "
            "(0.2) (the sweep's highest threshold: a higher one might be cheaper)\nat equal "
            "cost: no KV threshold used as few replica-seconds (900); with no more requests "
            "over (20), a KV threshold used at best 1,000 replica-seconds (KV 0.2, +11.1%)"
            ) in edge


def test_the_command_prints_the_table_and_writes_timelines(tmp_path, capsys) -> None:
    from inferoute.cli import main

    out = tmp_path / "autoscale.json"
    argv = ["bench", "autoscale", "--profile", "tiny", "--policy", "round-robin",
            "--param", "num_prompts=100", "--param", "input_len=300", "--param",
            "output_len=12", "--base", "1", "--peak", "20", "--duration", "60",
            "--cold-start", "10", "--ttft-target", "0.02", "--max-replicas", "4",
            "--kv-targets", "0.2,0.4", "-o", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| desired-replicas gauge |" in table and "| KV utilisation 0.4" in table
    report = json.loads(out.read_text())
    assert [r["rule"] for r in report["runs"]] == ["gauge", "kv", "kv"]
    assert all(r["requests"] == 630 and r["timeline"] for r in report["runs"])
    gauge, kv = report["runs"][0]["timeline"], report["runs"][1]["timeline"]
    assert all(s["forecast"] is not None and (s["rate"] >= 1 or s["t"] >= 60) for s in gauge)
    assert all(s["forecast"] is None and set(s) == set(gauge[0]) for s in kv)
    assert main([*argv[:-2], "--kv-targets", "1.5"]) == 2  # a utilisation above 1
    # clients that do not stream: the same requests, the report says how they were sent
    assert main([*argv, "--rules", "gauge", "--no-stream"]) == 0
    report = json.loads(out.read_text())
    assert report["args"]["no_stream"] is True
    assert [r["requests"] for r in report["runs"]] == [630] and report["runs"][0]["failed"] == 0


def test_the_command_replays_a_trace(tmp_path, capsys) -> None:
    from inferoute.cli import main

    out = tmp_path / "trace.json"
    argv = ["bench", "autoscale", "--trace", AZURE_SAMPLE, "--speed", "4", "--warmup", "3",
            "--cold-start", "5", "--kv-targets", "0.3", "-o", str(out)]
    assert main(argv) == 0
    assert "| desired-replicas gauge |" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [r["requests"] for r in report["runs"]] == [76, 76]  # arrivals from 3 s on
    # the shape's flags and a synthetic workload's do not mix with a trace
    for extra, flags in ((["--base", "2"], "--base"), (["--param", "input_len=9"], "--param"),
                         (["--workload", "mixed"], "--workload")):
        assert main([*argv, *extra]) == 2
        assert f"trace's own requests and times: no {flags}" in capsys.readouterr().err


def test_a_traces_true_rate_is_its_arrivals_around_the_time() -> None:
    """A trace has no rate of its own: the timeline shows its arrivals per second over the
    minute around each time (less at the start, 0 after its end)."""
    times = [i / 2 for i in range(200)]  # 2 req/s for 100 s
    load = LoadSpec([Stage(duration=100, rate=2.0, num_requests=200)], kind="trace",
                    extra={"times": times})
    rate = true_rate(load)
    assert TRACE_RATE_WINDOW == 60
    assert rate(50) == 2.0  # [20, 80): 120 arrivals over 60 s
    assert rate(10) == 2.0  # [0, 40): the window cut at the start
    assert rate(90) == pytest.approx(80 / 60)  # [60, 120): the last 40 s hold 80 arrivals
    assert rate(200) == 0.0
    shaped = ShapedLoad.make(2, 8, 100)
    assert true_rate(shaped)(50) == shaped.rate(50)
    with pytest.raises(ValueError, match="shaped load .* or a trace"):
        true_rate(LoadSpec(parse_stages("5:10")))


@pytest.mark.parametrize("rule", ["gauge", "kv"])
def test_an_autoscaled_run_replays_a_trace(rule: str) -> None:
    """Azure's sample at 4x: its own 100 requests at its own times, the warm-up's left out."""
    workload, load = load_trace(AZURE_SAMPLE, speed=4)
    cfg = AutoscaleConfig(rule=rule, workload=workload, load=load,  # type: ignore[arg-type]
                          cold_start=5, kv_target=0.3)
    res = run_autoscaled(cfg)
    assert res.requests == 100 and res.failed == 0 and res.timeline
    rate = true_rate(load)
    assert [s.rate for s in res.timeline] == [rate(s.t) for s in res.timeline]
    assert [s.rate_ahead for s in res.timeline] == [rate(s.t + 20) for s in res.timeline]
    warm = run_autoscaled(replace(cfg, scored_from=3.0))
    assert warm.requests == sum(1 for t in load.arrivals(0) if t >= 3.0) < 100
    assert warm.replica_seconds < res.replica_seconds
