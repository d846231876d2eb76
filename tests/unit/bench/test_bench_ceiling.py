"""The unlimited-KV ceiling: `bench sim --ceiling` and `bench matrix --ceiling` run the same load
with a KV cache that never evicts and report each policy's % of it."""

import json

from inferoute.bench import matrix, scenarios
from inferoute.bench.ceiling import MAX_CEILING_BLOCKS, unlimited_blocks
from inferoute.bench.workloads import shared_prefix
from inferoute.cli import main

# 6 families of 400 + 20 tokens over 2 replicas of 64 blocks (1,024 tokens) each: they overflow
STARVED = ["--replicas", "2", "--profile", "tiny", "--engine", "num_blocks=64",
           "--param", "num_groups=6", "--param", "system_prompt_len=400",
           "--param", "question_len=20", "--param", "output_len=10", "--stages", "4:3,8:3",
           "--quiet"]


def test_unlimited_blocks_hold_every_request_of_the_list_and_are_bounded() -> None:
    w = shared_prefix(num_groups=2, num_prompts_per_group=2, system_prompt_len=100,
                      question_len=20, output_len=12, seed=0)
    # 4 requests x 132 tokens = 528 tokens = 33 blocks of 16, + 4 + the profile's 64
    assert unlimited_blocks(w, 16, 64) == 33 + 4 + 64
    assert unlimited_blocks(w, 16, 10**9) == MAX_CEILING_BLOCKS


def test_sim_ceiling_reports_the_unlimited_run_and_the_share_of_it(tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    assert main(["bench", "sim", "--policy", "round-robin", *STARVED, "--ceiling",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    ceiling = report["ceiling"]
    assert ceiling["num_blocks"] > 64 and ceiling["evictions"] == 0
    assert sum(e["evictions"] for e in report["engines"]) > 0  # the finite run did evict
    best = max(s["metrics"]["throughput"]["output_tokens_per_sec"] for s in report["stages"])
    assert ceiling["pct_of_ceiling"] == best / ceiling["output_tokens_per_sec"] * 100
    assert f"this run {ceiling['pct_of_ceiling']:.1f}% of it" in text
    assert len(ceiling["stages_output_tokens_per_sec"]) == 2


def test_matrix_ceiling_table(tmp_path, monkeypatch) -> None:
    tiny = scenarios.Scenario("shared_prefix", {"num_groups": 6, "system_prompt_len": 400,
                                                    "question_len": 20, "output_len": 10},
                              "4:3,8:3", replicas=2, profile="tiny",
                              engine={"num_blocks": 64}, about="tiny, starved")
    monkeypatch.setitem(scenarios.SCENARIOS, "tiny-overflow", tiny)
    table = matrix.run_matrix(["round-robin", "inferoute"], ["tiny-overflow"],
                              out_dir=str(tmp_path), ceiling=True)
    assert (tmp_path / "tiny-overflow" / "inferoute.unlimited.json").exists()
    rows = [line for line in table.splitlines()
            if line.startswith(("| round-robin", "| inferoute"))]
    assert len(rows) == 2 and "ceiling" in table.splitlines()[0]
    for row in rows:
        pct_ceiling = float(row.split("|")[4].strip().rstrip("%"))
        assert 0 < pct_ceiling <= 100.5
