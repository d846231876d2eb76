"""The simulator against several real fidelity runs: the real mean and range per figure, the
simulated mean's error against it, and the counts."""

from __future__ import annotations

import json

import pytest

from inferoute.bench.fidelity_runs import compare_runs, load_run, runs_table
from inferoute.cli import main


def stage(rate: float, ttft: float, itl: float, out_tps: float, hit: float) -> dict:
    return {"rate": rate, "metrics": {
        "latency": {"time_to_first_token": {"mean": ttft, "p90": ttft},
                    "inter_token_latency": {"mean": itl}, "request_latency": {"mean": 1.0}},
        "throughput": {"requests_per_sec": rate, "input_tokens_per_sec": 0.0,
                       "output_tokens_per_sec": out_tps, "total_tokens_per_sec": out_tps},
        "prefix_cache": {"hit_rate": hit}, "requests": {"failures": 0}}}


def write_run(directory, real_ttft: float, sim_ttft: float, matched_ttft: float) -> None:
    directory.mkdir(parents=True)
    for kind, ttft in (("vllm", real_ttft), ("sim", sim_ttft),
                       ("sim-host-matched", matched_ttft)):
        report = {"stages": [stage(1, ttft, 0.010, 30.0, 0.5)]}
        (directory / f"{kind}-llm-d.json").write_text(json.dumps(report))


def test_a_run_directory_is_read_by_kind_and_policy(tmp_path):
    write_run(tmp_path / "r", 0.5, 0.6, 0.7)
    run = load_run(tmp_path / "r")
    assert sorted(run) == ["sim", "sim-host-matched", "vllm"]
    assert list(run["sim"]) == ["llm-d"]  # not "host-matched-llm-d"
    assert run["sim-host-matched"]["llm-d"]["stages"][0]["metrics"]["latency"][
        "time_to_first_token"]["mean"] == 0.7


def test_the_simulated_mean_is_held_against_the_real_mean_and_range(tmp_path):
    """Real TTFTs 0.40, 0.50, 0.60 (mean 0.50, range 40% of it); simulated 0.45 and 0.55 and
    0.50 (mean 0.50: +0%, inside); host-matched 0.70 each (+40%, outside)."""
    for k, (real, sim) in enumerate(((0.40, 0.45), (0.50, 0.55), (0.60, 0.50))):
        write_run(tmp_path / f"run-{k + 1}", real, sim, 0.70)
    figures = compare_runs([load_run(tmp_path / f"run-{k + 1}") for k in range(3)])
    ttft = next(f for f in figures if f.key == "ttft")
    assert ttft.real == (0.40, 0.50, 0.60)
    assert ttft.error(ttft.sim) == pytest.approx(0.0)
    assert ttft.inside(ttft.sim) is True
    assert ttft.error(ttft.matched) == pytest.approx(0.4)
    assert ttft.inside(ttft.matched) is False
    assert ttft.spread == pytest.approx(0.4)
    table = runs_table(figures, 3)
    row = table.splitlines()[2].split("|")[1:-1]
    assert [c.strip() for c in row[:7]] == ["llm-d", "1", "0.500 (0.400-0.600)", "0.500 *",
                                           "+0%", "0.700", "+40%"]
    # TTFT within 15% as fitted and not host-matched; the other three figures equal in
    # every run: within and inside both ways; only the TTFT's real range is over 15%
    assert table.splitlines()[-1] == (
        "3 runs, 4 figures. Within 15% of the real mean: 4 as fitted, 3 host-matched; inside "
        "the real runs' range (*): 4 as fitted, 3 host-matched. The real runs' own range "
        "exceeds 15% of their mean on 1 of the 4.")


def test_more_than_one_run_needs_fidelity(capsys):
    assert main(["demo", "--engine", "vllm", "--runs", "2"]) == 2
    assert "--runs" in capsys.readouterr().err
    assert main(["demo", "--engine", "vllm", "--fidelity", "--runs", "0"]) == 2
