"""Precise prefix routing in the virtual-time benchmark: the engines' KV events reach the
precise scorer's index, and runs stay repeatable to the bit."""

import json
from typing import Any

from inferoute.bench.des import SimConfig, VirtualBench, run_virtual
from inferoute.bench.load import LoadSpec, parse_stages
from inferoute.bench.workloads import shared_prefix
from inferoute.cli import main
from inferoute.core.scheduling.config import parse_config


def _policy(speculative: bool = True) -> Any:
    """llm-d's weights with the precise prefix scorer."""
    return parse_config({
        "plugins": [{"type": "precise-prefix-cache-scorer",
                     "parameters": {"speculative": speculative}},
                    {"type": "kv-cache-utilization-scorer"}, {"type": "queue-scorer"},
                    {"type": "max-score-picker"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "precise-prefix-cache-scorer", "weight": 3},
            {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
            {"pluginRef": "queue-scorer", "weight": 2},
            {"pluginRef": "max-score-picker"}]}]})


def _cfg(policy: Any, seed: int = 1) -> SimConfig:
    w = shared_prefix(num_groups=6, num_prompts_per_group=4, system_prompt_len=200,
                      question_len=40, output_len=20, seed=seed)
    return SimConfig(policy=policy, replicas=3, profile="tiny", workload=w,
                     load=LoadSpec(parse_stages("5:4,10:4"), seed=seed), seed=seed)


def _hit_rate(res: Any, stage: int) -> float:
    return res.stages[stage]["metrics"]["prefix_cache"]["hit_rate"]


def test_precise_run_is_repeatable() -> None:
    a = run_virtual(_cfg(_policy())).to_dict()
    b = run_virtual(_cfg(_policy())).to_dict()
    for r in (a, b):
        r.pop("wall_seconds")
    assert a == b
    assert a["kv_index"]["precise-prefix-cache-scorer"]["stored_events"] > 0
    c = run_virtual(_cfg(_policy(), seed=2)).to_dict()
    assert c["stages"] != a["stages"]


def test_index_learns_from_engine_events_only() -> None:
    # without speculative entries every index hit comes from the engines' BlockStored events
    bench = VirtualBench(_cfg(_policy(speculative=False)))
    assert all(e.kv.events_enabled for e in bench.engines)
    res = bench.run()
    stats = res.kv_index["precise-prefix-cache-scorer"]
    assert stats["stored_events"] > 0 and stats["blocks"] > 0
    assert stats["speculative"] == 0 and stats["confirmed_speculative"] == 0
    assert stats["blocks_hit"] > 0 and stats["lookups"] == 60
    # requests carried token ids: nothing was scored blind
    assert bench.precise[0].untokenized == 0
    # the index's knowledge turns into engine cache hits, well above round robin's
    rr = run_virtual(_cfg("round-robin"))
    assert _hit_rate(res, 1) > _hit_rate(rr, 1) + 0.2
    assert all(r.ok for recs in res.records for r in recs)


def test_approximate_policies_publish_no_events() -> None:
    bench = VirtualBench(_cfg("llm-d"))
    assert bench.precise == [] and not any(e.kv.events_enabled for e in bench.engines)
    res = bench.run()
    assert res.kv_index is None and "kv_index" not in res.to_dict()


def test_cli_packaged_precise_policy(tmp_path, capsys) -> None:
    small = ["--replicas", "2", "--profile", "tiny", "--param", "num_groups=3",
             "--param", "system_prompt_len=100", "--param", "question_len=20",
             "--param", "output_len=10", "--stages", "4:3,8:3", "--quiet"]
    out = tmp_path / "precise.json"
    assert main(["bench", "sim", "--policy", "precise", *small, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| stage 1 (rate 8) |" in captured.out
    assert "precise-prefix-cache-scorer: " in captured.err and " BlockStored / " in captured.err
    data = json.loads(out.read_text())
    assert data["config"]["policy"] == "precise"
    index = data["kv_index"]["precise-prefix-cache-scorer"]
    assert index["stored_events"] > 0 and index["lookups"] == 36
    assert data["stages"][1]["metrics"]["prefix_cache"]["hit_rate"] > 0.5
