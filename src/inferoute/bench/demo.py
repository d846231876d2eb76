"""`inferoute demo`: round-robin vs inferoute, live on a simulated fleet, in about two minutes.

It starts `inferoute sim` (4 simulated Qwen3-32B replicas by default), then for each policy an
`inferoute serve` gateway in front of them, clears the replicas' prefix caches so both policies
start cold, drives a short shared-prefix benchmark through the gateway, and stops the gateway.
It prints the comparison table and writes the reports and plots into `--out`. Every process it
starts is stopped on exit, error or Ctrl-C.

`inferoute demo --virtual` runs the seed's full benchmark in virtual time instead (round-robin,
llm-d, inferoute; a few minutes of CPU) and prints our rate-40 figures beside the seed's.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.metricsparse import find_samples
from ..procs import ChildProcess, free_port, free_port_range, http_status

if TYPE_CHECKING:
    from .load import LoadSpec
    from .workloads import Workload

MODEL = "demo-model"
PROFILE = "qwen3-32b-2xh100"
DEMO_POLICIES = ("round-robin", "inferoute")


def first_sights(workload: Workload, load: LoadSpec) -> list[int]:
    """Per stage, how many requests are the first of their prompt group: the prefills no policy
    can avoid, as every stage sends new questions on the same system prompts."""
    seen: set[str | None] = set()
    out, sent = [], 0
    for stage in load.stages:
        first = 0
        for i in range(stage.count):
            group = workload.next_item(i, sent).group
            sent += 1
            if group not in seen:
                seen.add(group)
                first += 1
        out.append(first)
    return out


def cold_start_caption(workload: Workload, load: LoadSpec) -> str:
    """The note under the latency plot: why inferoute's TTFT can fall while the load rises
    (the stages' share of cold prompts, counted, not estimated)."""
    counts = ", ".join(f"{n} of {s.count}" for n, s in zip(first_sights(workload, load),
                                                           load.stages))
    return ("The replicas' prefix caches start cold and warm across the stages: requests that "
            f"are the first of their system prompt, per stage: {counts}. A cold prompt is a "
            "full prefill under any policy, so inferoute's TTFT (each prompt kept on the "
            "replica that holds it) can fall while the load rises; round-robin spreads every "
            "prompt over every replica and keeps recomputing it.")


# the names tests/integration/bench/test_bench_live.py imports (its fleet predates inferoute.procs)
def _free_base(n: int) -> int:
    """A base port with base..base+n free (n + 1 ports)."""
    return free_port_range(n + 1)


def _Proc(args: list[str], name: str) -> ChildProcess:
    return ChildProcess.inferoute(*args, name=name, keep=200)


def _wait(url: str, proc: ChildProcess, timeout: float = 60.0) -> None:
    proc.wait_for_http(url, timeout)


class Gateway(ChildProcess):
    """An `inferoute serve` child and its port."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def gateway_scrapes(url: str) -> int:
    """The scrapes of its endpoints the gateway at `url` has made so far
    (`inferoute_endpoint_scrapes_total`, every endpoint's series summed)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        page = r.read().decode()
    return int(sum(s.value for s in find_samples(page, "inferoute_endpoint_scrapes",
                                                 counter=True)))


def start_gateway(urls: list[str], policy: str, model: str = MODEL,
                  timeout: float = 60.0) -> Gateway:
    """`inferoute serve` with `policy` in front of `urls` on a free port, once /ready."""
    port = free_port()
    args = ["serve", "--model", model, "--port", str(port), "--host", "127.0.0.1",
            "--scheduler", policy, "--log-level", "warning"]
    for u in urls:
        args += ["--endpoint", u]
    gw = Gateway([sys.executable, "-m", "inferoute", *args],
                 name=f"inferoute serve ({policy})", keep=200)
    gw.port = port
    gw.wait_for_http(gw.url + "/ready", timeout)
    return gw


def _demo_load(duration: float, seed: int) -> tuple[Any, Any]:
    from .load import LoadSpec, Stage
    from .workloads import shared_prefix

    # 64 groups of a 6,000-word system prompt: more than one replica's KV cache holds, so a
    # policy that spreads every group over every replica keeps recomputing prefixes.
    workload = shared_prefix(num_groups=64, num_prompts_per_group=5, system_prompt_len=6000,
                             question_len=600, output_len=100, seed=seed)
    # new questions in every stage, as live traffic has: inference-perf's replay of the list
    # from the top in each stage (what the seed reproduction does) would resend whole prompts
    workload.restart_each_stage = False
    third = max(1.0, duration / 3)
    load = LoadSpec(stages=[Stage(rate=3.0, duration=third), Stage(rate=6.0, duration=third),
                            Stage(rate=9.0, duration=third)], seed=seed)
    return workload, load


def run_demo(out: str, *, duration: float = 50.0, replicas: int = 4, seed: int = 0) -> int:
    """The live demo; returns an exit code."""
    from rich.console import Console
    from rich.markdown import Markdown

    from .client import LiveConfig, live_report, run_live
    from .progress import StageProgress
    from .compare import compare_reports
    from .plots import write_plots
    from .report import save_report

    console = Console()
    out_dir = Path(out)
    procs: list[ChildProcess] = []
    reports: list[tuple[str, dict[str, Any]]] = []
    try:
        base = free_port_range(replicas)
        console.print(f"[bold]starting {replicas} simulated replicas[/] ({PROFILE}) "
                      f"on 127.0.0.1:{base}..{base + replicas - 1}")
        sim = ChildProcess.inferoute(
            "sim", "--model", MODEL, "--port", str(base), "--replicas", str(replicas),
            "--profile", PROFILE, "--seed", str(seed), name="inferoute sim", keep=200)
        procs.append(sim)
        urls = [f"http://127.0.0.1:{base + i}" for i in range(replicas)]
        for u in urls:
            sim.wait_for_http(u + "/health", 60)
        workload, load = _demo_load(duration, seed)
        for policy in DEMO_POLICIES:
            for u in urls:
                http_status(u + "/reset_prefix_cache", method="POST")
            gw = start_gateway(urls, policy)
            procs.append(gw)
            gw_port = gw.port
            console.print(f"[bold]{policy}[/]: gateway on 127.0.0.1:{gw_port}, "
                          f"{sum(s.count for s in load.stages)} requests in {len(load.stages)} stages")
            cfg = LiveConfig(target=f"http://127.0.0.1:{gw_port}", model=MODEL,
                             workload=workload, load=load, ignore_eos=True, timeout=120.0)
            with StageProgress([s.label for s in load.stages]) as progress:
                records = asyncio.run(run_live(cfg, progress))
            report = live_report(cfg, records, {"label": policy, "policy": policy,
                                                "replicas": replicas, "profile": PROFILE})
            save_report(report, out_dir / f"{policy}.json")
            reports.append((policy, report))
            gw.stop()
            procs.remove(gw)
        console.print()
        console.print(Markdown(f"**Live, {replicas} simulated replicas, heaviest stage "
                               f"(rate {load.stages[-1].rate:g}/s):**"))
        console.print(Markdown(compare_reports(reports, index=len(load.stages) - 1)))
        for path in write_plots(reports, out_dir, rate=load.stages[-1].rate,
                                caption=cold_start_caption(workload, load)):
            console.print(f"plot: {path}")
        console.print(f"reports: {out_dir}/round-robin.json, {out_dir}/inferoute.json")
        return 0
    except KeyboardInterrupt:
        console.print("interrupted; stopping the fleet")
        return 130
    finally:
        for p in reversed(procs):
            p.stop()


def run_virtual_demo(out: str, *, seed: int = 0,
                     policies: tuple[str, ...] = ("round-robin", "llm-d", "inferoute")) -> int:
    """The seed's full run in virtual time; prints our rate-40 and rate-60 rows beside the
    seed run's published ones."""
    from rich.console import Console
    from rich.markdown import Markdown

    from .progress import StageProgress
    from .compare import seed_table
    from .des import SimConfig, run_virtual
    from .load import LoadSpec, parse_stages
    from .metrics import headline
    from .plots import write_plots
    from .report import pick_stage, save_report
    from .workloads import shared_prefix

    console = Console()
    out_dir = Path(out)
    workload = shared_prefix(seed=seed)
    reports: list[tuple[str, dict[str, Any]]] = []
    for policy in policies:
        load = LoadSpec(parse_stages("seed"), seed=seed)
        console.print(f"[bold]{policy}[/]: 8 x qwen3-32b-2xh100, 150x5 groups, 6000+1200 "
                      "prompt tokens, 1000 output tokens, 17 stages (virtual time)")
        with StageProgress([s.label for s in load.stages]) as progress:
            result = run_virtual(SimConfig(policy=policy, replicas=8, profile="qwen3-32b-2xh100",
                                           workload=workload, load=load,
                                           model="Qwen/Qwen3-32B", seed=seed), progress)
        console.print(f"  {result.virtual_seconds:.0f} s virtual in {result.wall_seconds:.0f} s")
        report = result.to_dict()
        save_report(report, out_dir / f"seed-{policy}.json")
        reports.append((policy, report))
    for rate, what in ((40.0, "the seed's table"), (60.0, "the same run's last stage")):
        table = seed_table({p: headline(pick_stage(r, rate=rate)) for p, r in reports}, rate=rate)
        console.print(Markdown(f"**Rate-{rate:g} stage ({what}) beside ours, virtual time:**"))
        print(table)
    for p in write_plots(reports, out_dir, rate=40.0):
        console.print(f"plot: {p}")
    return 0
