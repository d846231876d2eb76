"""The learned latency model in virtual time: trained from the simulated engines' first tokens
and ends through the same router hooks as in the gateway, its error falls as it learns."""

import yaml

from inferoute.bench.command import latency_model_line, latency_models
from inferoute.bench.des import SimConfig, VirtualBench
from inferoute.bench.load import LoadSpec, parse_stages
from inferoute.bench.workloads import shared_prefix
from inferoute.configfiles import resolve_config
from inferoute.core.scheduling.config import parse_config


def _policy(window: int):
    """The packaged inferoute-slo policy with a short error window."""
    data = resolve_config("inferoute-slo").model_dump(by_alias=True, exclude_none=True)
    for plugin in data["plugins"]:
        if plugin["type"] == "latency-slo-scorer":
            plugin["parameters"] = {"errorWindow": window}
    return parse_config(yaml.safe_load(yaml.safe_dump(data)))


def test_the_prediction_error_falls_as_the_model_learns() -> None:
    w = shared_prefix(num_groups=8, num_prompts_per_group=8, system_prompt_len=600,
                      question_len=120, output_len=40, seed=2)
    cfg = SimConfig(policy=_policy(8), replicas=3, profile="tiny", workload=w,
                    load=LoadSpec(parse_stages("4:30,8:30"), seed=2), seed=2)
    bench = VirtualBench(cfg)
    result = bench.run()
    assert sum(s["metrics"]["requests"]["failures"] for s in result.stages) == 0
    (name, st), = latency_models(bench.scheduler).items()
    assert st["window"] == 8
    assert st["ttft_checks"] >= 300 and st["tpot_checks"] >= 300
    # the first 8 predictions come from a model still learning, the last 8 from a trained one
    # (this engine's TPOT barely moves: one request teaches it, so only TTFT shows the fall)
    assert st["ttft_error"] < 0.5 * st["ttft_error_first"]
    assert st["ttft_error"] < 0.1 and st["tpot_error"] < 0.1
    assert st["shed"] == 0
    assert latency_model_line(name, st).startswith(
        "latency-slo-scorer: median absolute error of the last 8 predictions: TTFT ")
