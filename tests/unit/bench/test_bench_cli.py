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
    assert "| Metric | round-robin | inferoute | Δ inferoute | Δ% |" in table
    assert main(["bench", "compare", str(a), "--with-llm-d-run"]) == 0
    assert "**round-robin** beside llm-d's v0.8.0 run" in capsys.readouterr().out
    assert main(["bench", "compare", str(b), "--with-llm-d-run"]) == 2  # no inferoute arm
    assert "arms for round-robin and llm-d-optimized only" in capsys.readouterr().err
    assert main(["bench", "plot", str(a), str(b), "--out", str(tmp_path / "q")]) == 0


def test_sim_with_clients_that_do_not_stream(tmp_path) -> None:
    """`--no-stream`: the same requests, each answered whole; the engine's first token is
    still what the records time, and the report says how the clients asked."""
    out = {}
    for flag in ([], ["--no-stream"]):
        path = tmp_path / f"run{len(flag)}.json"
        assert main(["bench", "sim", "--policy", "inferoute", *SMALL, *flag, "-o",
                     str(path)]) == 0
        out[bool(flag)] = json.loads(path.read_text())
    assert out[False]["config"]["stream"] is True and out[True]["config"]["stream"] is False
    for data in out.values():
        top = data["stages"][1]["metrics"]
        assert top["requests"]["total"] == 24 and top["requests"]["failures"] == 0
        assert top["latency"]["time_to_first_token"]["mean"] > 0


def test_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["bench", "sim", "--policy", "no-such-policy", *SMALL]) == 2
    assert "no-such-policy" in capsys.readouterr().err
    assert main(["bench", "sim", "--stages", "nonsense", *SMALL[:-3]]) == 2
    assert main(["bench", "compare", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot read report" in err and "Traceback" not in err
    missing = str(tmp_path / "missing.json")  # the seed rate is checked before reports are read
    assert main(["bench", "compare", missing, "--with-seed", "--rate", "50"]) == 2
    assert "published the stages at rates 40 and 60 only" in capsys.readouterr().err
    assert main(["bench", "compare", missing, "--with-seed", "--stage", "9"]) == 2
    assert "not --stage" in capsys.readouterr().err
    assert main(["bench", "compare", missing, "--with-llm-d-run", "--rate", "40"]) == 2
    assert "compares every stage" in capsys.readouterr().err


def test_an_error_without_a_message_still_says_what_went_wrong(capsys) -> None:
    # a timeout's message is empty: the line must not end at "error: "
    from inferoute.bench.command import _guard

    def fails(exc: BaseException):
        def run(args) -> int:
            raise exc
        return run

    class Args:
        command = "demo"

    assert _guard(fails(TimeoutError()))(Args()) == 2
    assert capsys.readouterr().err.strip() == \
        "inferoute demo: error: timed out waiting for a server"
    assert _guard(fails(ConnectionRefusedError()))(Args()) == 2
    assert capsys.readouterr().err.strip() == "inferoute demo: error: ConnectionRefusedError"
    assert _guard(fails(ValueError("bad value")))(Args()) == 2
    assert capsys.readouterr().err.strip() == "inferoute demo: error: bad value"


def test_engine_overrides_change_the_fleet_and_are_recorded(tmp_path, capsys) -> None:
    plain, slow = tmp_path / "plain.json", tmp_path / "slow.json"
    assert main(["bench", "sim", "--policy", "round-robin", *SMALL, "-o", str(plain)]) == 0
    assert main(["bench", "sim", "--policy", "round-robin", *SMALL, "-o", str(slow),
                 "--engine", "frontend_fixed_ms=500"]) == 0
    a, b = json.loads(plain.read_text()), json.loads(slow.read_text())
    assert a["config"]["profile_overrides"] == {}
    assert b["config"]["profile_overrides"] == {"frontend_fixed_ms": 500}
    ttft = [r["stages"][0]["metrics"]["latency"]["time_to_first_token"]["mean"] for r in (a, b)]
    assert ttft[1] > ttft[0] + 0.45  # every request reaches its engine 0.5 s later
    capsys.readouterr()
    assert main(["bench", "sim", *SMALL, "--engine", "num_blocks"]) == 2
    assert "engine override 'num_blocks' must look like name=value" in capsys.readouterr().err
    assert main(["bench", "sim", *SMALL, "--engine", "no_such_field=1"]) == 2
    assert "unknown profile field(s) no_such_field" in capsys.readouterr().err
