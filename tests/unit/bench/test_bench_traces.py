"""Trace replay: Mooncake and Azure files become deterministic workloads sent at the trace's own
times (windowed, sped up), in virtual time and through the CLI."""

import json
from itertools import pairwise
from pathlib import Path

import pytest

from inferoute.bench.des import SimConfig, run_virtual
from inferoute.bench.traces import TraceError, load_trace, read_azure, read_mooncake
from inferoute.cli import main

DATA = Path(__file__).resolve().parents[2] / "data" / "traces"
MOONCAKE, AZURE = DATA / "mooncake-sample.jsonl", DATA / "azure-sample.csv"


def test_mooncake_hash_ids_become_shared_word_blocks(tmp_path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [7, 8]},
        {"timestamp": 1500, "input_length": 1030, "output_length": 9, "hash_ids": [7, 8, 9]},
        {"timestamp": 2500, "input_length": 600, "output_length": 3, "hash_ids": [4, 5]},
    ]) + "\n")
    wl, load = load_trace(f, block_tokens=512)
    a, b, c = (item.prompt.split() for item in wl.items)
    assert [len(a), len(b), len(c)] == [700, 1030, 600]
    assert a == b[:700]  # ids 7, 8 are the same words in both
    assert a[:512] != c[:512]
    assert [i.max_tokens for i in wl.items] == [5, 9, 3]
    assert load.kind == "trace" and load.arrivals(0) == [0.0, 1.5, 2.5]
    again, _ = load_trace(f, block_tokens=512)
    assert [i.prompt for i in again.items] == [i.prompt for i in wl.items]


def test_window_and_speed() -> None:
    rows = list(read_mooncake(MOONCAKE))
    start, dur = 10.0, 20.0
    inside = [r for r in rows if start <= r.arrival < start + dur]
    wl, load = load_trace(MOONCAKE, start=start, duration=dur, speed=4.0)
    assert len(wl) == len(inside) == load.stages[0].count > 5
    times = load.arrivals(0)
    assert times[0] == 0.0
    assert times[-1] == pytest.approx((inside[-1].arrival - inside[0].arrival) / 4.0)
    wl2, _ = load_trace(MOONCAKE, max_requests=7)
    assert len(wl2) == 7


def test_azure_rows() -> None:
    rows = list(read_azure(AZURE))
    assert len(rows) == 100 and rows[0].arrival == 0.0
    assert all(b.arrival >= a.arrival for a, b in pairwise(rows))
    wl, _ = load_trace(AZURE)
    assert [len(i.prompt.split()) for i in wl.items] == [r.input_length for r in rows]
    assert len({i.prompt[:40] for i in wl.items}) == 100  # nothing shared


def test_bad_traces_name_the_line(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1}\n{"timestamp": x\n')
    with pytest.raises(TraceError, match="bad.jsonl:2: not JSON"):
        load_trace(bad)
    neg = tmp_path / "neg.csv"
    neg.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,0,5\n")
    with pytest.raises(TraceError, match="neg.csv:2: ContextTokens must be >= 1"):
        load_trace(neg)
    with pytest.raises(TraceError, match="no request in the window"):
        load_trace(MOONCAKE, start=10**6)
    with pytest.raises(TraceError, match="cannot tell the trace format"):
        load_trace(tmp_path / "trace.txt")


def test_virtual_replay_sends_at_the_trace_times() -> None:
    wl, load = load_trace(MOONCAKE, duration=15.0, speed=2.0)
    res = run_virtual(SimConfig(policy="inferoute", replicas=2, profile="tiny", workload=wl,
                                load=load, seed=0, profile_overrides={"num_blocks": 4096,
                                                                      "max_model_len": 65536}))
    recs = sorted(res.records[0], key=lambda r: r.start)
    t0 = recs[0].start
    assert [r.start - t0 for r in recs] == pytest.approx(load.arrivals(0))
    assert [r.key for r in recs] == [i.key for i in wl.items]
    assert all(r.ok for r in recs)


def test_cli_replays_a_trace_and_rejects_mixed_arguments(tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    assert main(["bench", "sim", "--replicas", "2", "--profile", "tiny", "--engine",
                 "num_blocks=4096", "--engine", "max_model_len=65536", "--trace", str(AZURE),
                 "--trace-duration", "10", "--speed", "2", "--quiet", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["workload"]["format"] == "azure"
    assert report["config"]["load"]["type"] == "trace"
    assert main(["bench", "sim", "--trace", str(AZURE), "--stages", "5:5", "--quiet"]) == 2
    assert "no --workload, --param or --stages" in capsys.readouterr().err


def test_a_request_longer_than_the_context_fails_alone(tmp_path) -> None:
    # a real trace has prompts past a model's context: the engine answers 400, the run goes on
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"timestamp": 0, "input_length": 300, "output_length": 5, "hash_ids": [1]},
        {"timestamp": 100, "input_length": 2000, "output_length": 5, "hash_ids": [1, 2, 3, 4]},
        {"timestamp": 200, "input_length": 400, "output_length": 5, "hash_ids": [1]},
    ]) + "\n")
    wl, load = load_trace(f, block_tokens=512)
    res = run_virtual(SimConfig(policy="inferoute", replicas=2, profile="tiny", workload=wl,
                                load=load, seed=0))  # tiny: a 1,024-token context
    recs = sorted(res.records[0], key=lambda r: r.start)
    assert [r.ok for r in recs] == [True, False, True]
    assert recs[1].error.startswith("400 invalid_request_error: This model's maximum context")
    assert res.stages[0]["metrics"]["requests"]["failures"] == 1
