"""End to end: `inferoute sim` + `inferoute serve` + the live benchmark client, on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from inferoute.bench.client import LiveConfig, live_report, run_live
from inferoute.bench.demo import _free_base, _Proc, _wait
from inferoute.bench.load import LoadSpec, parse_stages
from inferoute.bench.workloads import shared_prefix

MODEL = "bench-model"


@pytest.fixture
def fleet():
    procs: list[_Proc] = []
    base = _free_base(2)
    sim = _Proc(["sim", "--model", MODEL, "--port", str(base), "--replicas", "2",
                 "--profile", "tiny"], "inferoute sim")
    procs.append(sim)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(2)]
    try:
        for u in urls:
            _wait(u + "/health", sim, timeout=30)
        gw_port = _free_base(0)
        args = ["serve", "--model", MODEL, "--port", str(gw_port), "--host", "127.0.0.1",
                "--scheduler", "inferoute", "--log-level", "warning"]
        for u in urls:
            args += ["--endpoint", u]
        gw = _Proc(args, "inferoute serve")
        procs.append(gw)
        _wait(f"http://127.0.0.1:{gw_port}/ready", gw, timeout=30)
        yield f"http://127.0.0.1:{gw_port}"
    finally:
        for p in reversed(procs):
            p.stop()


def test_live_benchmark_through_gateway(fleet: str, tmp_path: Path) -> None:
    w = shared_prefix(num_groups=2, num_prompts_per_group=3, system_prompt_len=120,
                      question_len=20, output_len=8)
    cfg = LiveConfig(target=fleet, model=MODEL, workload=w,
                     load=LoadSpec(parse_stages("4:2,c2:4"), seed=1), ignore_eos=True,
                     timeout=30.0)
    records = asyncio.run(run_live(cfg))
    assert [len(r) for r in records] == [8, 4]
    for recs in records:
        for r in recs:
            assert r.error is None, r.error
            assert r.output_tokens == 8 and r.prompt_tokens == 140
            assert r.ttft is not None and 0 < r.ttft <= r.latency
            assert len(r.itl) == 7
    report = live_report(cfg, records)
    m = report["stages"][0]["metrics"]
    assert m["requests"]["failures"] == 0 and m["throughput"]["requests_per_sec"] > 0
    # the shared prefixes were served from cache at least once
    assert m["prefix_cache"]["cached_tokens"] > 0


def test_bench_run_cli_reports_errors_cleanly(tmp_path: Path) -> None:
    port = _free_base(0)
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "inferoute", "bench", "run", "--target",
                           f"http://127.0.0.1:{port}", "--model", "m", "--stages", "2:1",
                           "--param", "num_groups=1", "--param", "system_prompt_len=10",
                           "--param", "question_len=5", "--param", "output_len=2",
                           "-o", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["stages"][0]["metrics"]["requests"]["failures"] == 2
    assert "Traceback" not in proc.stderr


def test_live_chat_api_through_gateway(fleet: str) -> None:
    w = shared_prefix(num_groups=1, num_prompts_per_group=2, system_prompt_len=50,
                      question_len=10, output_len=5)
    cfg = LiveConfig(target=fleet, model=MODEL, workload=w, api="chat",
                     load=LoadSpec(parse_stages("c1:2")), ignore_eos=True, timeout=30.0)
    (recs,) = asyncio.run(run_live(cfg))
    assert len(recs) == 2
    for r in recs:
        assert r.error is None, r.error
        assert r.output_tokens == 5 and r.ttft is not None


def test_live_trace_replay_through_gateway(fleet: str, tmp_path: Path) -> None:
    from inferoute.bench.traces import load_trace

    trace = tmp_path / "t.jsonl"
    rows = [{"timestamp": 100 * i, "input_length": 200 + 10 * i, "output_length": 4,
             "hash_ids": [7, 100 + i]} for i in range(6)]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wl, load = load_trace(trace, speed=5.0, block_tokens=128)
    cfg = LiveConfig(target=fleet, model=MODEL, workload=wl, load=load, ignore_eos=True,
                     timeout=30.0)
    records = asyncio.run(run_live(cfg))
    assert [len(r) for r in records] == [6]
    recs = sorted(records[0], key=lambda r: r.start)
    assert [r.key for r in recs] == [i.key for i in wl.items]  # sent in trace order
    for r, row in zip(recs, rows):
        assert r.error is None, r.error
        assert r.prompt_tokens == row["input_length"] and r.output_tokens == 4
    # hash id 7 (the first 128 words) is shared by every request: served from cache
    assert live_report(cfg, records)["stages"][0]["metrics"]["prefix_cache"]["cached_tokens"] > 0
