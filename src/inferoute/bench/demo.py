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
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

MODEL = "demo-model"
DEMO_POLICIES = ("round-robin", "inferoute")


def _free_base(n: int) -> int:
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        ok = True
        for i in range(1, n + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", base + i))
                except OSError:
                    ok = False
                    break
        if ok and base + n < 65536:
            return base
    raise RuntimeError("no free port range on 127.0.0.1")


class _Proc:
    """A child process whose output is kept (bounded) for error messages."""

    def __init__(self, args: list[str], name: str) -> None:
        self.name = name
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "inferoute", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if len(self.lines) > 200:
                del self.lines[:100]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return "".join(self.lines[-20:])


def _http(url: str, method: str = "GET", timeout: float = 2.0) -> int:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def _wait(url: str, proc: _Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            if _http(url) == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready at {url} after {timeout:.0f}s:\n{proc.tail()}")


def _demo_load(duration: float, seed: int) -> tuple[Any, Any]:
    from .load import LoadSpec, Stage
    from .workloads import shared_prefix

    # 64 groups of a 6,000-word system prompt: more than one replica's KV cache holds, so a
    # policy that spreads every group over every replica keeps recomputing prefixes.
    workload = shared_prefix(num_groups=64, num_prompts_per_group=5, system_prompt_len=6000,
                             question_len=600, output_len=100, seed=seed)
    third = max(1.0, duration / 3)
    load = LoadSpec(stages=[Stage(rate=3.0, duration=third), Stage(rate=6.0, duration=third),
                            Stage(rate=9.0, duration=third)], seed=seed)
    return workload, load


def run_demo(out: str, *, duration: float = 50.0, replicas: int = 4, seed: int = 0) -> int:
    """The live demo; returns an exit code."""
    from rich.console import Console
    from rich.markdown import Markdown

    from .client import LiveConfig, live_report, run_live
    from .command import _StageProgress
    from .compare import compare_reports
    from .plots import write_plots
    from .report import save_report

    console = Console()
    out_dir = Path(out)
    procs: list[_Proc] = []
    reports: list[tuple[str, dict[str, Any]]] = []
    try:
        base = _free_base(replicas)
        console.print(f"[bold]starting {replicas} simulated replicas[/] (qwen3-32b-2xh100) "
                      f"on 127.0.0.1:{base}..{base + replicas - 1}")
        sim = _Proc(["sim", "--model", MODEL, "--port", str(base), "--replicas", str(replicas),
                     "--profile", "qwen3-32b-2xh100", "--seed", str(seed)], "inferoute sim")
        procs.append(sim)
        urls = [f"http://127.0.0.1:{base + i}" for i in range(replicas)]
        for u in urls:
            _wait(u + "/health", sim)
        workload, load = _demo_load(duration, seed)
        for policy in DEMO_POLICIES:
            for u in urls:
                _http(u + "/reset_prefix_cache", method="POST")
            gw_port = _free_base(0)
            args = ["serve", "--model", MODEL, "--port", str(gw_port), "--host", "127.0.0.1",
                    "--scheduler", policy, "--log-level", "warning"]
            for u in urls:
                args += ["--endpoint", u]
            gw = _Proc(args, f"inferoute serve ({policy})")
            procs.append(gw)
            _wait(f"http://127.0.0.1:{gw_port}/ready", gw)
            console.print(f"[bold]{policy}[/]: gateway on 127.0.0.1:{gw_port}, "
                          f"{sum(s.count for s in load.stages)} requests in {len(load.stages)} stages")
            cfg = LiveConfig(target=f"http://127.0.0.1:{gw_port}", model=MODEL,
                             workload=workload, load=load, ignore_eos=True, timeout=120.0)
            with _StageProgress([s.label for s in load.stages]) as progress:
                records = asyncio.run(run_live(cfg, progress))
            report = live_report(cfg, records, {"label": policy, "policy": policy,
                                                "replicas": replicas})
            save_report(report, out_dir / f"{policy}.json")
            reports.append((policy, report))
            gw.stop()
            procs.remove(gw)
        console.print()
        console.print(Markdown(f"**Live, {replicas} simulated replicas, heaviest stage "
                               f"(rate {load.stages[-1].rate:g}/s):**"))
        console.print(Markdown(compare_reports(reports, index=len(load.stages) - 1)))
        for p in write_plots(reports, out_dir, rate=load.stages[-1].rate):
            console.print(f"plot: {p}")
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
    """The seed's full run in virtual time; prints our rate-40 rows beside the seed's."""
    from rich.console import Console
    from rich.markdown import Markdown

    from .command import _StageProgress
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
        with _StageProgress([s.label for s in load.stages]) as progress:
            result = run_virtual(SimConfig(policy=policy, replicas=8, profile="qwen3-32b-2xh100",
                                           workload=workload, load=load,
                                           model="Qwen/Qwen3-32B", seed=seed), progress)
        console.print(f"  {result.virtual_seconds:.0f} s virtual in {result.wall_seconds:.0f} s")
        report = result.to_dict()
        save_report(report, out_dir / f"seed-{policy}.json")
        reports.append((policy, report))
    table = seed_table({p: headline(pick_stage(r, rate=40.0)) for p, r in reports})
    console.print(Markdown("**Rate-40 stage: the seed's figures beside ours (virtual time):**"))
    print(table)
    for p in write_plots(reports, out_dir, rate=40.0):
        console.print(f"plot: {p}")
    return 0
