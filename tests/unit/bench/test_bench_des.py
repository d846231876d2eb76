"""The virtual-time benchmark: repeatable to the bit, and it accounts every request."""

import pytest

from inferoute.bench.des import SimConfig, run_virtual
from inferoute.bench.load import LoadSpec, parse_stages
from inferoute.bench.workloads import shared_prefix


def _cfg(policy: str, seed: int = 1, stages: str = "5:4,10:4") -> SimConfig:
    w = shared_prefix(num_groups=6, num_prompts_per_group=4, system_prompt_len=200,
                      question_len=40, output_len=20, seed=seed)
    return SimConfig(policy=policy, replicas=3, profile="tiny", workload=w,
                     load=LoadSpec(parse_stages(stages), seed=seed), seed=seed)


@pytest.mark.parametrize("policy", ["llm-d", "inferoute", "llm-d-optimized"])
def test_same_seed_same_summary(policy: str) -> None:
    a = run_virtual(_cfg(policy)).to_dict()
    b = run_virtual(_cfg(policy)).to_dict()
    for r in (a, b):
        r.pop("wall_seconds")
    assert a == b
    c = run_virtual(_cfg(policy, seed=2)).to_dict()
    c.pop("wall_seconds")
    assert c["stages"] != a["stages"]


def test_every_request_is_accounted_and_finishes() -> None:
    res = run_virtual(_cfg("round-robin"))
    assert [len(r) for r in res.records] == [20, 40]
    for recs in res.records:
        for r in recs:
            assert r.ok and r.output_tokens == 20 and r.ttft is not None and r.ttft > 0
            assert len(r.itl) == 19
    s = res.stages[1]["metrics"]
    assert s["requests"]["total"] == 40 and s["requests"]["failures"] == 0
    assert s["throughput"]["requests_per_sec"] > 0
    # the next stage starts only after the previous one drained (inference-perf semantics)
    end0 = max(r.end for r in res.records[0])
    assert min(r.start for r in res.records[1]) >= end0 + 1.0 - 1e-9


def test_each_stage_replays_the_shared_prefix_list_from_the_top() -> None:
    # inference-perf builds a new data generator per stage: stage 1 (40 requests over a list
    # of 24) sends items 0..23, 0..15, as stage 0 (20 requests) sent 0..19
    res = run_virtual(_cfg("round-robin"))
    w = _cfg("round-robin").workload
    keys = [[r.key for r in sorted(recs, key=lambda r: r.start)] for recs in res.records]
    assert keys[0] == [w.items[i].key for i in range(20)]
    assert keys[1] == [w.items[i % 24].key for i in range(40)]
    # a multi-turn run keeps cycling: its conversations go on growing in the next stage
    turns = shared_prefix(num_groups=6, num_prompts_per_group=4, system_prompt_len=200,
                          question_len=40, output_len=20, multi_turn=True, seed=1)
    assert not turns.restart_each_stage
    assert turns.next_item(0, 20) is turns.items[20]


def test_round_robin_spreads_and_prefix_policy_hits_cache() -> None:
    rr = run_virtual(_cfg("round-robin"))
    counts: dict[str, int] = {}
    for r in rr.records[1]:
        counts[r.endpoint] = counts.get(r.endpoint, 0) + 1
    assert sorted(counts.values()) == [13, 13, 14]
    llmd = run_virtual(_cfg("llm-d"))
    hit = llmd.stages[1]["metrics"]["prefix_cache"]["hit_rate"]
    assert hit > rr.stages[1]["metrics"]["prefix_cache"]["hit_rate"]


def test_concurrency_stage_keeps_n_in_flight() -> None:
    res = run_virtual(_cfg("least-request", stages="c2:10"))
    recs = res.records[0]
    assert len(recs) == 10 and all(r.ok for r in recs)
    events = sorted([(r.start, 1) for r in recs] + [(r.end, -1) for r in recs])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak <= 2
