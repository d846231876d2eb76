"""The virtual benchmark with admission: a policy with a release rule (`inferoute`'s)
holds requests in the gateway's queue and releases them as room frees; other policies run
without admission."""

from importlib.resources import files

import yaml

from inferoute.bench.des import SimConfig, VirtualBench, run_virtual
from inferoute.core.scheduling.config import EndpointPickerConfig, parse_config
from inferoute.bench.load import LoadSpec, parse_stages
from inferoute.bench.workloads import shared_prefix
from inferoute.core.admission import Ticket


#: `inferoute`'s policy with its release rule set to hold always: whether the caches thrash
#: is tested elsewhere, the admission it brings here
HOLDING = "inferoute-holding"


def _policy(name: str) -> str | EndpointPickerConfig:
    if name != HOLDING:
        return name
    data = yaml.safe_load(files("inferoute.configs").joinpath("inferoute.yaml").read_text())
    for plugin in data["plugins"]:
        if plugin["type"] == "kv-fit-filter":
            plugin["parameters"] = {"recomputeToHold": 0}
    return parse_config(data)


def _cfg(policy: str, seed: int = 3) -> SimConfig:
    # 12 families of 400-token prefixes over 2 replicas of 64 blocks (1,024 tokens each)
    w = shared_prefix(num_groups=12, num_prompts_per_group=4, system_prompt_len=400,
                      question_len=40, output_len=30, seed=seed)
    return SimConfig(policy=_policy(policy), replicas=2, profile="tiny", workload=w,
                     load=LoadSpec(parse_stages("20:3"), seed=seed), seed=seed,
                     profile_overrides={"num_blocks": 64})


def test_a_release_rule_brings_admission_and_every_request_finishes() -> None:
    bench = VirtualBench(_cfg(HOLDING))
    assert bench.admission is not None and bench.admission.release is not None
    waited = []
    admit = bench.admission.admit

    def spy(request, pool, now):  # type: ignore[no-untyped-def]
        res = admit(request, pool, now)
        waited.append(isinstance(res, Ticket))
        return res

    bench.admission.admit = spy  # type: ignore[method-assign]
    res = bench.run()
    recs = res.records[0]
    assert len(recs) == 60 and all(r.ok and r.output_tokens == 30 for r in recs)
    assert any(waited) and not all(waited)  # some went at once, some waited in the gateway
    assert bench.admission.queued() == 0


def test_with_admission_the_run_is_still_repeatable_to_the_bit() -> None:
    a = run_virtual(_cfg(HOLDING)).to_dict()
    b = run_virtual(_cfg(HOLDING)).to_dict()
    for r in (a, b):
        r.pop("wall_seconds")
    assert a == b


def test_a_policy_without_a_release_rule_runs_without_admission() -> None:
    assert VirtualBench(_cfg("llm-d")).admission is None


def test_a_release_rules_admission_is_driven_as_the_gateway_drives_it() -> None:
    """Told of every send and end (a `SlotFeed` on the router), as the gateway's admission
    driver tells it, so the dispatch budget frees a slot when a request ends, not at the next
    scrape: the benchmark and the gateway run one admission, not two."""
    from inferoute.core.admission.slot_feed import SlotFeed

    bench = VirtualBench(_cfg(HOLDING))
    assert bench.admission is not None
    assert any(isinstance(li, SlotFeed) and li.controller is bench.admission
               for li in bench.router.listeners)
    ended = []
    finished = bench.admission.finished

    def spy(pool, ep, now):  # type: ignore[no-untyped-def]
        ended.append(now)
        finished(pool, ep, now)

    bench.admission.finished = spy  # type: ignore[method-assign]
    res = bench.run()
    assert len(ended) == len(res.records[0]) == 60


def test_bench_sim_takes_the_gateways_admission_file(tmp_path) -> None:
    """`bench sim --admission FILE` runs any policy behind the gateway's admission, recorded
    in the report; a bad file is a clean error, not a traceback."""
    import json

    from inferoute.cli import main

    adm = tmp_path / "admission.yaml"
    adm.write_text("saturationDetector: {kvCacheRule: always}\n"
                   "flowControl: {ttl: 600s}\n")
    out = tmp_path / "r.json"
    args = ["bench", "sim", "--policy", "inferoute", "--replicas", "2", "--profile", "tiny",
            "--engine", "num_blocks=64", "--param", "num_groups=6",
            "--param", "system_prompt_len=400", "--param", "question_len=20",
            "--param", "output_len=10", "--stages", "8:3", "--quiet"]
    assert main([*args, "--admission", str(adm), "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    sat = report["config"]["admission"]["saturationDetector"]
    assert sat["kvCacheRule"] == "always"
    assert report["config"]["admission"]["flowControl"]["ttl"] == 600.0
    assert report["stages"][0]["metrics"]["requests"]["failures"] == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("saturationDetector: {kvCacheRule: sometimes}\n")
    assert main([*args, "--admission", str(bad)]) == 2
