"""The `inferoute bench` commands in-process, on the tiny profile."""

import json

from inferoute.cli import main

SMALL = ["--replicas", "2", "--profile", "tiny", "--param", "num_groups=3",
         "--param", "system_prompt_len=100", "--param", "question_len=20",
         "--param", "output_len=10", "--stages", "4:3,8:3", "--quiet"]


def test_sim_compare_plot(tmp_path, capsys) -> None:
    a, b = tmp_path / "rr.json", tmp_path / "inf.yaml"
    assert main(["bench", "sim", "--policy", "round-robin", *SMALL, "-o", str(a)]) == 0
    out = capsys.readouterr().out
    assert "| stage 1 (rate 8) |" in out
    assert main(["bench", "sim", "--policy", "inferoute", *SMALL, "-o", str(b),
                 "--plots", str(tmp_path / "p")]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "latency_vs_qps.png", "throughput_vs_qps.png", "ttft_distribution.png"]
    data = json.loads(a.read_text())
    assert data["config"]["policy"] == "round-robin" and len(data["stages"]) == 2
    assert data["stages"][1]["metrics"]["requests"]["total"] == 24
    capsys.readouterr()
    assert main(["bench", "compare", str(a), str(b), "--rate", "8"]) == 0
    table = capsys.readouterr().out
    assert "| Metric | round-robin (Mean) | inferoute (Mean) |" in table
    assert main(["bench", "plot", str(a), str(b), "--out", str(tmp_path / "q")]) == 0


def test_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["bench", "sim", "--policy", "no-such-policy", *SMALL]) == 2
    assert "no-such-policy" in capsys.readouterr().err
    assert main(["bench", "sim", "--stages", "nonsense", *SMALL[:-3]]) == 2
    assert main(["bench", "compare", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot read report" in err and "Traceback" not in err
