"""The virtual benchmark with the gateway's admission section: requests with TTFT targets
(a `SloMix`) overtake the backlog under earliest-deadline-first and meet their targets; in
arrival order they wait behind it and miss. Both with the dispatch budget (`inferoute-slo`: no
release rule) and a release rule (`inferoute`); same seed, same requests targeted."""

from __future__ import annotations

import pytest

from inferoute.bench.des import SimConfig, VirtualBench, run_virtual
from inferoute.bench.load import LoadSpec, parse_stages
from inferoute.bench.slo_mix import SloMix, slo_summary
from inferoute.bench.workloads import make_workload
from inferoute.core.admission import parse_admission_config
from inferoute.core.slo import TTFT_HEADER


def _cfg(policy: str, ordering: str) -> SimConfig:
    # 2 tiny replicas serve about 100 of these requests/s: 140/s for 4 s builds a backlog
    w = make_workload("random", {"input_len": 200, "output_len": 30, "num_prompts": 500,
                                 "input_spread": 0.2, "output_spread": 0.2}, seed=1)
    admission = parse_admission_config({"flowControl": {"ordering": ordering, "ttl": "600s"}})
    return SimConfig(policy=policy, replicas=2, profile="tiny", workload=w, seed=1,
                     load=LoadSpec(parse_stages("140:4"), seed=1), admission=admission,
                     slo=SloMix(share=0.3, ttft_ms=150, seed=1))


@pytest.mark.parametrize("policy", ["inferoute-slo", "inferoute"])
def test_deadline_order_meets_the_targets_arrival_order_misses(policy: str) -> None:
    fcfs, edf = (run_virtual(_cfg(policy, o)) for o in ("fcfs", "edf"))
    (a,), (b,) = (slo_summary(r.records, r.targets) for r in (fcfs, edf))
    assert a["targeted"] == b["targeted"] > 100
    assert b["attainment"] >= 0.95 and a["attainment"] < 0.3
    # the untargeted requests pay: they wait longer, but every request is served
    assert b["untargeted_ttft_p50"] > a["untargeted_ttft_p50"]
    for res in (fcfs, edf):
        assert all(r.ok for r in res.records[0]) and len(res.records[0]) == 560


def test_the_mix_is_the_same_for_every_run_and_admission_is_driven() -> None:
    bench = VirtualBench(_cfg("inferoute", "edf"))
    assert bench.admission is not None and bench.admission.flow.ordering == "edf"
    res = bench.run()
    assert res.targets == run_virtual(_cfg("inferoute", "fcfs")).targets
    share = sum(t is not None for t in res.targets[0]) / len(res.targets[0])
    assert 0.25 < share < 0.35 and {t for t in res.targets[0] if t} == {0.15}
    assert bench.admission.queued() == 0
    assert res.to_dict()["config"]["admission"]["flowControl"]["ordering"] == "edf"
    mix = SloMix(share=1.0, ttft_ms=150, objective="x")
    assert mix.headers(3) == {"x-gateway-inference-objective": "x", TTFT_HEADER: "150"}
