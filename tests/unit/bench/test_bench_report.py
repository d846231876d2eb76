"""Reports on disk, stage choice and the comparison table."""

import pytest

from inferoute.bench.compare import (compare_reports, compare_table, llm_d_run_table,
                                     seed_table)
from inferoute.bench.metrics import RequestRecord, summarize
from inferoute.bench.report import ReportError, load_report, pick_stage, save_report


def _report(label: str, speed: float) -> dict:
    stages = []
    for i, rate in enumerate((10.0, 40.0)):
        recs = []
        for k in range(4):
            r = RequestRecord(key=f"{k}", stage=i, start=float(k), prompt_tokens=100,
                              cached_tokens=50)
            r.on_tokens(k + 0.5 / speed)
            r.on_tokens(k + 1.0 / speed)
            r.end = k + 1.0 / speed
            recs.append(r)
        stages.append(summarize(recs, stage=i, rate=rate))
    return {"config": {"label": label}, "stages": stages}


def test_save_load_roundtrip(tmp_path) -> None:
    rep = _report("a", 1.0)
    for name in ("r.json", "r.yaml"):
        p = save_report(rep, tmp_path / "sub" / name)
        assert load_report(p) == rep
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ReportError, match="not a benchmark report"):
        load_report(tmp_path / "bad.json")
    with pytest.raises(ReportError, match="cannot read"):
        load_report(tmp_path / "missing.json")


def test_pick_stage() -> None:
    rep = _report("a", 1.0)
    assert pick_stage(rep, rate=40)["rate"] == 40
    assert pick_stage(rep, index=0)["rate"] == 10
    with pytest.raises(ReportError):
        pick_stage(rep, rate=7)


def test_compare_table_deltas() -> None:
    table = compare_table([("k8s", {"requests_per_sec": 6.3374, "ttft": 27.695}),
                           ("llmd", {"requests_per_sec": 15.3932, "ttft": 0.113})])
    lines = table.splitlines()
    assert lines[0] == "| Metric | k8s | llmd | Δ llmd | Δ% |"
    assert "| Requests/s | 6.3374 | 15.3932 | +9.0558 | +142.9% |" in table
    assert "| TTFT, mean (s) | 27.695 | 0.113 | -27.582 | -99.6% |" in table
    assert lines[-1].startswith("Δ: change from k8s;")
    text = compare_reports([("slow", _report("slow", 1.0)), ("fast", _report("fast", 2.0))],
                           rate=40)
    assert "TTFT, mean (s) | 0.500 | 0.250 | -0.250 | -50.0% |" in text


def test_a_hit_rate_changes_in_points_not_percent() -> None:
    table = compare_table([("rr", {"prefix_cache_hit_rate": 0.54}),
                           ("inf", {"prefix_cache_hit_rate": 0.90})])
    assert "| Cache hit rate (%) | 54.0 | 90.0 | +36.0 pp |  |" in table   # not +66.7%
    seed = seed_table({"round-robin": {"prefix_cache_hit_rate": 0.2},
                       "llm-d": {"prefix_cache_hit_rate": 0.997},
                       "inferoute": {"prefix_cache_hit_rate": 0.994}})
    assert seed.splitlines()[-1].endswith("| 99.4 | -0.3 pp |")


def test_compare_table_fits_80_columns_unwrapped() -> None:
    from io import StringIO

    from rich.console import Console
    from rich.markdown import Markdown

    wide = {"requests_per_sec": 15.3932, "input_tokens_per_sec": 116621.97,
            "output_tokens_per_sec": 14533.22, "total_tokens_per_sec": 131155.2,
            "request_latency": 105.413, "ttft": 34.914, "ttft_p90": 154.983, "itl": 0.06953,
            "prefix_cache_hit_rate": 0.194}
    other = {k: v * 0.5 for k, v in wide.items()}
    buf = StringIO()
    Console(file=buf, width=80).print(Markdown(compare_table([("round-robin", wide),
                                                              ("inferoute", other)])))
    out = buf.getvalue().splitlines()
    assert max(len(line.rstrip()) for line in out) <= 80
    for label in ("Requests/s", "Input tokens/s", "Cache hit rate (%)", "TTFT, p90 (s)"):
        row = next(line for line in out if label in line)   # each row on one line, whole
        assert row.split()[-1].endswith(("%", "pp")), row
    header = next(line for line in out if "Metric" in line)
    assert header.split() == ["Metric", "round-robin", "inferoute", "Δ", "inferoute", "Δ%"]


def test_seed_table_has_the_seed_runs_two_published_stages() -> None:
    ours = {"round-robin": {"requests_per_sec": 5.7306, "ttft": 69.829},
            "llm-d": {"requests_per_sec": 15.85353, "ttft": 0.1203, "ttft_p90": 0.18096}}
    at60 = seed_table(ours, rate=60)
    assert "| Requests/s | 5.7306 | 5.7306 | +0.0% | 14.4123 | 15.8535 | +10.0% |" in at60
    assert "| TTFT, mean (s) | 34.914 | 69.829 | +100.0% | 0.120 | 0.120 | +0.0% |" in at60
    assert "| TTFT, p90 (s) | - | - | - | 0.181 | 0.181 | +0.0% |" in at60
    at40 = seed_table(ours)  # the seed document's own table
    assert "| Requests/s | 6.3374 | 5.7306 | -9.6% | 15.3932 | 15.8535 | +3.0% |" in at40
    with pytest.raises(ReportError, match="rates 40 and 60 only, not 50"):
        seed_table(ours, rate=50)


def test_llm_d_run_table_pairs_each_stage_with_the_published_arm() -> None:
    rep = _report("round-robin", 1.0)  # stages at 10 and 40 req/s; TTFT 0.5 s, 24 tokens/s
    out40 = pick_stage(rep, rate=40)["metrics"]["throughput"]["output_tokens_per_sec"]
    table = llm_d_run_table("round-robin", rep)
    assert "| 40 | 6,228 | " + f"{out40:,.0f}" + " | " in table
    assert "| 20 s | 0.50 s | 37.9 s | 0.50 s |" in table  # TTFT p50, p90 at rate 40
    assert "| 10 | 4,944 | " in table and "| 3 | 1,889 | - | - | - | - | - | - |" in table
    rows = [ln for ln in llm_d_run_table("llm-d-optimized", rep).splitlines()
            if ln[:3].strip("| ").isdigit()]
    assert len(rows) == 16  # every published stage, 3 to 60 req/s
    with pytest.raises(ReportError, match="arms for round-robin and llm-d-optimized only"):
        llm_d_run_table("inferoute", rep)
