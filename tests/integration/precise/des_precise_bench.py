"""Precise vs approximate prefix routing in the virtual-time benchmark, until `bench/des.py`
wires KV events itself: a `VirtualBench` whose engines publish KV events, fed to the precise
scorer's index when each engine step completes, with requests tokenized as the simulator does.

    python tests/integration/precise/des_precise_bench.py shared_prefix 40:38
    python tests/integration/precise/des_precise_bench.py multi_turn_chat 40:30 --ttl 10s
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from inferoute.bench.des import SimConfig, VirtualBench
from inferoute.bench.load import LoadSpec, parse_stages
from inferoute.bench.workloads import DEFAULT_LOAD, make_workload
from inferoute.core.kvindex import apply_engine_events
from inferoute.core.plugins.precise import precise_scorers
from inferoute.core.scheduling.config import parse_config
from inferoute.sim.engine import Engine
from inferoute.sim.tokenizer import encode


def precise_policy(ttl: str) -> dict[str, Any]:
    """llm-d's weights (prefix 3, KV cache 2, queue 2) with the precise prefix scorer."""
    return {"plugins": [{"type": "precise-prefix-cache-scorer",
                         "parameters": {"speculativeTtl": ttl}},
                        {"type": "kv-cache-utilization-scorer"}, {"type": "queue-scorer"},
                        {"type": "max-score-picker"}],
            "schedulingProfiles": [{"name": "default", "plugins": [
                {"pluginRef": "precise-prefix-cache-scorer", "weight": 3},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                {"pluginRef": "queue-scorer", "weight": 2},
                {"pluginRef": "max-score-picker"}]}]}


class PreciseBench(VirtualBench):
    def __init__(self, cfg: SimConfig, progress: Any = None) -> None:
        super().__init__(cfg, progress)
        self.engines = [Engine(self.profile, seed=cfg.seed * 1000 + i, name=f"engine-{i}",
                               kv_events=True) for i in range(cfg.replicas)]
        self.scorers = precise_scorers(self.scheduler.plugins.values())
        self._pending: list[list[Any]] = [[] for _ in range(cfg.replicas)]
        for s in self.scorers:
            s.set_tokenizer(lambda r: encode(r.body["prompt"]))

    def _step(self, i: int, now: float) -> None:
        # called when engine i's previous step completes: its blocks exist from now on
        if self._pending[i]:
            for s in self.scorers:
                apply_engine_events(s.index, self.endpoints[i].name, self._pending[i])
        super()._step(i, now)
        self._pending[i] = self.engines[i].drain_kv_events()


def run(policy: str, workload: str, params: dict[str, Any], stages: str, replicas: int,
        profile: str, ttl: str) -> dict[str, Any]:
    wl = make_workload(workload, params, seed=0)
    kind, burst = DEFAULT_LOAD.get(workload, ("poisson", 1.0))
    load = LoadSpec(stages=parse_stages(stages), kind=kind, burstiness=burst, interval=1.0,
                    seed=0)
    precise = policy == "precise"
    cfg = SimConfig(policy=parse_config(precise_policy(ttl)) if precise else policy,
                    replicas=replicas, profile=profile, workload=wl, load=load,
                    model="Qwen/Qwen3-32B")
    res = (PreciseBench if precise else VirtualBench)(cfg).run()
    q = sum(e["prefix_cache_queries"] or 0 for e in res.engines)
    h = sum(e["prefix_cache_hits"] or 0 for e in res.engines)
    m = res.stages[-1]["metrics"]
    return {"policy": policy, "hit_rate": h / q if q else 0.0,
            "requests_per_sec": m["throughput"]["requests_per_sec"],
            "output_tokens_per_sec": m["throughput"]["output_tokens_per_sec"],
            "mean_ttft": m["latency"]["time_to_first_token"]["mean"],
            "mean_request_latency": m["latency"]["request_latency"]["mean"],
            "wall_seconds": res.wall_seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload")
    ap.add_argument("stages")
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--profile", default="qwen3-32b-2xh100")
    ap.add_argument("--params", default="{}", help="workload parameters as JSON")
    ap.add_argument("--policies", default="llm-d,precise")
    ap.add_argument("--ttl", default="2s", help="speculativeTtl of the precise scorer")
    args = ap.parse_args()
    for pol in args.policies.split(","):
        r = run(pol, args.workload, json.loads(args.params), args.stages, args.replicas,
                args.profile, args.ttl)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in r.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
