"""K real `inferoute serve` processes, round robin in front, against `inferoute sim --kv-events`.

The fleet's prefix-cache hit rate is the engines' own count: cached prompt tokens / prompt
tokens, from the `usage` of every response. Each run starts from cold caches (a fresh simulated
fleet, fresh gateways, an emptied Redis), so runs with 1, 2 and 4 gateways see the same
workload under the same conditions.

    python tests/integration/scaleout/fleet.py                       # modes precise, approx-redis
    python tests/integration/scaleout/fleet.py --gateways 1,2,4 --modes precise,precise-redis,approx-redis,approx

Modes: `precise` (each gateway consumes the engines' KV events), `precise-redis` (plus the
speculative entries shared through Redis), `approx-redis` (approximate scorer, index inserts and
in-flight load shared through Redis), `approx` (approximate, nothing shared: the baseline that
shows why sharing is needed). The -redis modes start a redis-server on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from inferoute.bench.workloads import WorkItem, shared_prefix
from inferoute.procs import ChildProcess, free_port_range
from inferoute.procs import start_redis as start_redis_server

MODEL = "M"
MODES = ("precise", "precise-redis", "approx-redis", "approx")


def policy(mode: str, llm_d: bool = False, stale_ok: bool = False) -> dict[str, Any]:
    """Prefix affinity (3) over load (queue 1): a full prefix match always wins, so the hit
    rate measures what the gateways know, not load noise between them. `llm_d`: the llm-d
    weights instead (prefix 3, KV-cache utilisation 2, queue 2), where scraped load can
    outweigh a match. `stale_ok`: metrics up to 10 minutes old still count as fresh, so a
    starved machine's late scrapes do not take the holder of a prefix out of the candidates."""
    prefix = "precise-prefix-cache-scorer" if mode.startswith("precise") else "prefix-cache-scorer"
    load = {"kv-cache-utilization-scorer": 2, "queue-scorer": 2} if llm_d else {"queue-scorer": 1}
    config: dict[str, Any] = {
        "plugins": [{"type": prefix}, *({"type": t} for t in load), {"type": "max-score-picker"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": prefix, "weight": 3},
            *({"pluginRef": t, "weight": w} for t, w in load.items()),
            {"pluginRef": "max-score-picker"}]}]}
    if stale_ok:
        config["saturationDetector"] = {"metricsStalenessThreshold": "600s"}
    return config


# -- processes ---------------------------------------------------------------------------------

free_ports = free_port_range  # the name the tests import

def spawn(args: list[str], name: str) -> ChildProcess:
    """`args` as a child, without a developer's INFEROUTE_API_KEYS."""
    return ChildProcess(args, name=name, unset_env=("INFEROUTE_API_KEYS",))


def wait_until(cond: Any, what: str, proc: ChildProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n{proc.log()}")
        time.sleep(0.05)


@dataclass
class Sim:
    proc: ChildProcess
    port: int
    replicas: int
    kv_offset: int
    replay_offset: int

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.port + i}" for i in range(self.replicas)]


def start_sim(replicas: int, profile: str = "llama3-8b-h100", time_scale: float = 1.0) -> Sim:
    port, kv = free_ports(replicas), free_ports(2 * replicas)
    proc = spawn([sys.executable, "-m", "inferoute", "sim", "--model", MODEL,
                  "--port", str(port), "--replicas", str(replicas), "--profile", profile,
                  "--time-scale", str(time_scale), "--kv-events",
                  "--kv-events-port", str(kv), "--kv-replay-port", str(kv + replicas)],
                 "inferoute sim")
    proc.wait_for_line("serving")
    return Sim(proc, port, replicas, kv - port, kv + replicas - port)


@dataclass
class Gateway:
    proc: ChildProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def gateway_config(sim: Sim, scheduler: str | dict[str, Any],
                   redis_url: str | None = None) -> dict[str, Any]:
    """A serving config for `sim`'s replicas: precise scoring reads their KV events."""
    return {"host": "127.0.0.1", "port": 0, "redis": redis_url,
            "pools": [{"model": MODEL, "endpoints": sim.urls, "scheduler": scheduler,
                       "tokenizer": "words",
                       "kvEvents": {"pubPortOffset": sim.kv_offset,
                                    "replayPortOffset": sim.replay_offset,
                                    "replayTimeout": "2s"}}]}


def start_gateways(configs: list[dict[str, Any]], workdir: Path) -> list[Gateway]:
    """Start one `inferoute serve` per config (in parallel) and wait until all are ready."""
    started = []
    for i, cfg in enumerate(configs):
        cfg_file = workdir / f"gateway{i}-{time.monotonic_ns()}.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        ready = cfg_file.with_suffix(".port")
        proc = spawn([sys.executable, "-m", "inferoute", "serve", "--config", str(cfg_file),
                      "--ready-file", str(ready)], f"gateway {i}")
        started.append((proc, ready))
    gateways = []
    for proc, ready in started:
        wait_until(lambda ready=ready: ready.exists() and ready.read_text().strip() != "",
                   "a gateway to listen", proc)
        gateways.append(Gateway(proc, int(ready.read_text())))
    for gw in gateways:
        gw.proc.wait_for_http(gw.url + "/ready")
    return gateways


def stop_all(procs: list[ChildProcess]) -> list[str]:
    """Stop every process; the logs of those that failed or printed a traceback."""
    bad = []
    for p in procs:
        rc = p.stop(timeout=15)
        out = p.log()
        if rc not in (0, -signal.SIGTERM) or "Traceback" in out:
            bad.append(f"{p.name} (exit {rc}):\n{out}")
    return bad


@dataclass
class Redis:
    proc: ChildProcess
    url: str

    def flush(self) -> None:
        import redis
        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()


def start_redis(workdir: Path) -> Redis | None:
    """A redis-server on a free port; None when the binary is not installed."""
    server = start_redis_server(workdir)
    return None if server is None else Redis(server.child, server.url)


# -- workload ----------------------------------------------------------------------------------

def workload(groups: int, per_group: int, system: int, question: int, seed: int) -> list[str]:
    """The package's shared-prefix prompts (words: one token each for the simulator)."""
    return [it.prompt for it in shared_prefix_items(groups, per_group, system, question, seed)]


def shared_prefix_items(groups: int, per_group: int, system: int, question: int,
                        seed: int) -> list[WorkItem]:
    return shared_prefix(num_groups=groups, num_prompts_per_group=per_group,
                         system_prompt_len=system, question_len=question, output_len=1,
                         seed=seed).items


def best_hit_rate(groups: int, per_group: int, system: int, question: int,
                  block: int = 16) -> float:
    """Every group's first prompt misses; the others hit the system prompt's full blocks."""
    cached = (system // block) * block * (per_group - 1) * groups
    return cached / ((system + question) * per_group * groups)


@dataclass
class Tally:
    """What the engines reported: cached and prompt tokens (from `usage`), failed requests."""

    cached: int = 0
    prompt_tokens: int = 0
    errors: int = 0
    requests: int = 0


async def drive(gateway_urls: list[str], prompts: list[str], rate: float, seed: int,
                tally: Tally, first: int = 0, concurrency: int = 32) -> None:
    """Poisson arrivals at `rate`; request i goes to gateway (first + i) % K (round robin)."""
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def one(i: int, text: str) -> None:
            async with sem:
                url = gateway_urls[(first + i) % len(gateway_urls)] + "/v1/completions"
                body = {"model": MODEL, "prompt": text, "max_tokens": 4}
                async with session.post(url, json=body) as r:
                    tally.requests += 1
                    if r.status != 200:
                        tally.errors += 1
                        return
                    usage = (await r.json())["usage"]
            tally.prompt_tokens += usage["prompt_tokens"]
            tally.cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0

        arrivals = random.Random(seed)
        tasks = []
        for i, text in enumerate(prompts):
            tasks.append(asyncio.create_task(one(i, text)))
            await asyncio.sleep(arrivals.expovariate(rate))
        await asyncio.gather(*tasks)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A /metrics page as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(text) for smp in fam.samples}


def sum_samples(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
                **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == name and set(labels.items()) <= set(lab))


def routing_state_synced(sim: Sim, gateways: list[Gateway]) -> bool:
    """Every gateway has applied every KV-event batch the engines published and every prefix-
    index change the other gateways wrote to Redis (both read from /metrics and the
    simulator's /admin/stats): what one gateway learned, all of them know."""
    published = {}
    for url in sim.urls:
        with urllib.request.urlopen(url + "/admin/stats", timeout=10) as r:
            published[url.removeprefix("http://")] = json.loads(r.read())["kv_events"]["published"]
    metrics = [scrape(g.url) for g in gateways]
    for m in metrics:
        for (name, labels), seq in m.items():
            endpoint = dict(labels).get("endpoint", "")
            if name == "inferoute_kv_event_last_sequence" and seq < published[endpoint] - 1:
                return False
        if sum_samples(m, "inferoute_prefix_share_pending_ops"):
            return False
    sent = [sum_samples(m, "inferoute_prefix_share_published_ops_total") for m in metrics]
    got = [sum_samples(m, "inferoute_prefix_share_applied_ops_total") for m in metrics]
    return all(got[i] == sum(sent) - sent[i] for i in range(len(metrics)))


def kv_events_subscribed(sim: Sim, gateways: list[Gateway]) -> bool:
    """Every gateway has a KV-event subscriber for every replica."""
    names = [u.removeprefix("http://") for u in sim.urls]
    for g in gateways:
        m = scrape(g.url)
        if any(not any(n == "inferoute_kv_event_last_sequence" and ("endpoint", ep) in lab
                       for n, lab in m) for ep in names):
            return False
    return True


@dataclass
class Workload:
    groups: int = 12
    per_group: int = 5
    system: int = 320
    question: int = 32
    rate: float = 20.0
    seed: int = 0

    def items(self) -> list[WorkItem]:
        return shared_prefix_items(self.groups, self.per_group, self.system, self.question,
                                   self.seed)

    def prompts(self) -> list[str]:
        return [it.prompt for it in self.items()]

    def phases(self) -> tuple[list[str], list[str]]:
        """Each group's first prompt, then the rest (in the workload's order)."""
        seen: set[str | None] = set()
        firsts, rest = [], []
        for it in self.items():
            (rest if it.group in seen else firsts).append(it.prompt)
            seen.add(it.group)
        return firsts, rest

    def best(self) -> float:
        return best_hit_rate(self.groups, self.per_group, self.system, self.question)


def run_fleet(mode: str, k: int, wl: Workload, workdir: Path, *, replicas: int = 4,
              profile: str = "llama3-8b-h100", time_scale: float = 1.0,
              redis: Redis | None = None, llm_d: bool = False,
              synced: bool = False) -> dict[str, float]:
    """One run from cold: a fresh simulated fleet, K fresh gateways, the workload.

    `synced` (what the tests run): each group's first prompt is sent first, then the run waits
    until every gateway knows where all of them went (KV events applied, Redis shares read),
    then the rest follow. The hit rate then measures what the gateways share, not how fast it
    travels on a busy machine. Unsynced: one Poisson run, where propagation delays count too.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    redis_url = None
    if mode.endswith("-redis"):
        if redis is None:
            raise RuntimeError(f"mode {mode} needs redis-server")
        redis.flush()
        redis_url = redis.url
    sim = start_sim(replicas, profile, time_scale)
    procs = [sim.proc]
    tally = Tally()
    try:
        config = gateway_config(sim, policy(mode, llm_d, stale_ok=synced), redis_url)
        gateways = start_gateways([config] * k, workdir)
        procs += [g.proc for g in gateways]
        urls = [g.url for g in gateways]
        if mode.startswith("precise"):
            wait_until(lambda: kv_events_subscribed(sim, gateways), "KV-event subscribers",
                       sim.proc)
        if synced:
            firsts, rest = wl.phases()
            asyncio.run(drive(urls, firsts, wl.rate, wl.seed, tally))
            wait_until(lambda: routing_state_synced(sim, gateways), "the gateways to sync",
                       sim.proc)
            asyncio.run(drive(urls, rest, wl.rate, wl.seed + 1, tally, first=len(firsts)))
        else:
            asyncio.run(drive(urls, wl.prompts(), wl.rate, wl.seed, tally))
    finally:
        bad = stop_all(procs)
    if bad:
        raise RuntimeError("\n".join(bad))
    return {"hit_rate": tally.cached / tally.prompt_tokens if tally.prompt_tokens else 0.0,
            "requests": float(tally.requests), "errors": float(tally.errors)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gateways", default="1,2,4", help="gateway counts (1,2,4)")
    ap.add_argument("--modes", default="precise,approx-redis", help="comma-separated: "
                    + ", ".join(MODES))
    ap.add_argument("--replicas", type=int, default=4, help="simulated replicas (4)")
    ap.add_argument("--profile", default="llama3-8b-h100", help="sim profile (llama3-8b-h100)")
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--groups", type=int, default=12)
    ap.add_argument("--per-group", type=int, default=5)
    ap.add_argument("--system", type=int, default=320, help="shared prefix, words")
    ap.add_argument("--question", type=int, default=32, help="per-prompt suffix, words")
    ap.add_argument("--rate", type=float, default=20.0, help="Poisson requests/s (20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llm-d-weights", action="store_true",
                    help="prefix 3, KV-cache 2, queue 2 instead of prefix 3, queue 1")
    ap.add_argument("--synced", action="store_true",
                    help="as the tests run it: each group's first prompt, a wait until every "
                    "gateway knows where they went, then the rest")
    args = ap.parse_args()
    wl = Workload(args.groups, args.per_group, args.system, args.question, args.rate, args.seed)
    counts = [int(x) for x in args.gateways.split(",")]
    modes = args.modes.split(",")
    print(f"{len(wl.prompts())} requests, {args.replicas} replicas ({args.profile}), "
          f"rate {args.rate}/s; best possible hit rate {wl.best():.4f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis = start_redis(workdir) if any(m.endswith("-redis") for m in modes) else None
        rows = []
        try:
            for mode in modes:
                if mode.endswith("-redis") and redis is None:
                    print(f"{mode}: skipped (redis-server is not on PATH)", flush=True)
                    continue
                cells = []
                for k in counts:
                    t0 = time.monotonic()
                    res = run_fleet(mode, k, wl, workdir, replicas=args.replicas,
                                    profile=args.profile, time_scale=args.time_scale,
                                    redis=redis, llm_d=args.llm_d_weights,
                                    synced=args.synced)
                    print(f"{mode:13s} gateways={k} hit_rate={res['hit_rate']:.4f} "
                          f"errors={int(res['errors'])} wall={time.monotonic() - t0:.1f}s",
                          flush=True)
                    cells.append(f"{res['hit_rate']:.4f}")
                rows.append(f"| {mode} | " + " | ".join(cells) + " |")
        finally:
            if redis is not None:
                redis.proc.stop()
    print("\n| mode | " + " | ".join(f"{k} gateway{'s' if k > 1 else ''}" for k in counts)
          + " |")
    print("| --- |" + " --- |" * len(counts))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
