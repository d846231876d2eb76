"""Scheduling decision latency: how long `Scheduler.schedule` takes for one request.

`decision_latency()` builds a pool of endpoints with realistic scraped metrics, warms the
prefix index with a shared-prefix workload, then times `schedule()` for long prompts that share a
group's system prompt, in two parts, as the gateway runs them: the decision (filters, scorers,
picker), which the request waits for, and the plugins' `on_scheduled` hooks (the index
updates), which the gateway defers until the request is on its way (`defer_hooks`). It is a
measurement, not a test: run it and read the figures.

    python -c "from inferoute.bench.decision import main; main()"
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass

from ..core.endpoint import Endpoint, EndpointMetrics
from ..core.kvindex import BlockStoredEvent, block_keys, chain_root
from ..core.plugins.precise_prefix_cache_scorer import precise_scorers
from ..core.request import InferenceRequest
from ..core.scheduling.framework import SchedulingResult
from ..configfiles import DEFAULT_POLICY, resolve_config
from ..core.scheduling.scheduler import Scheduler

_WORDS = ("the of and to in is that for it as with was on be by at this from or an are "
          "which have not but had they were his her their one all there been has more will "
          "would about if can what when who into some out time only other than then its two "
          "model cache token prefix request server latency queue block decode prefill").split()


@dataclass(frozen=True)
class DecisionLatency:
    endpoints: int
    prompt_tokens: int
    samples: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    #: the deferred `on_scheduled` hooks (index updates) per decision, off the request's path
    hooks_p50_ms: float = 0.0
    hooks_p99_ms: float = 0.0


def _text(rng: random.Random, chars: int) -> str:
    # one `choices` call for the whole text (words average ~4 characters with their space)
    text = ""
    while len(text) < chars:
        text += " ".join(rng.choices(_WORDS, k=chars // 4 + 1)) + " "
    return text[:chars]


def _endpoints(n: int, rng: random.Random) -> list[Endpoint]:
    eps = []
    for i in range(n):
        eps.append(Endpoint(host=f"10.0.0.{i + 1}", port=8000, metrics=EndpointMetrics(
            waiting=rng.randint(0, 8), running=rng.randint(20, 90),
            kv_usage=rng.uniform(0.3, 0.9), block_size=16, num_blocks=17_000,
            scraped_at=0.0), in_flight_requests=rng.randint(0, 30)))
    return eps


def decision_latency(*, endpoints: int = 16, prompt_tokens: int = 8192, groups: int = 64,
                     warmup: int = 512, samples: int = 2000, config: str | None = None,
                     seed: int = 1, cpu_time: bool = False,
                     headers: dict[str, str] | None = None,
                     engines_hold: bool = False) -> DecisionLatency:
    """Time `Scheduler.schedule` for `prompt_tokens`-token prompts against `endpoints` endpoints.

    Prompts are a group's system prompt (3/4 of the length) plus a distinct question; the index
    is warmed with `warmup` such requests first. `config` is a packaged policy name or a path
    (default: the llm-d default config). With `cpu_time`, each decision is timed by this
    thread's CPU clock, so time the process spends descheduled on a busy machine is not counted.
    `headers` go on every request (e.g. `x-slo-ttft-ms`, which makes `latency-slo-scorer`
    predict for every candidate). With `engines_hold`, a precise prefix scorer hears, after
    each decision (untimed), the chosen engine's `BlockStored` for the prompt's blocks it
    matches, as a vLLM replica reports a prompt it cached; without it the precise index holds
    only the speculative entries of the last two requests (the TTL is 2 s, and decisions come
    1 s apart), so most decisions stop at the first block.
    """
    rng = random.Random(seed)
    cfg = resolve_config(config)
    sched = Scheduler(cfg, seed=seed)
    eps = _endpoints(endpoints, rng)
    chars = prompt_tokens * 4
    system = [_text(rng, chars * 3 // 4) for _ in range(groups)]
    questions = [_text(rng, chars - chars * 3 // 4) for _ in range(256)]
    # a precise prefix scorer hashes token ids, which the gateway gives it (it tokenizes
    # before scheduling): one id per 4 characters here, equal text -> equal ids
    vocab: dict[str, int] | None = (
        {} if any(p.type == "precise-prefix-cache-scorer" for p in cfg.plugins) else None)

    def request(i: int) -> InferenceRequest:
        text = system[rng.randrange(groups)] + questions[i % len(questions)]
        ids = None if vocab is None else [vocab.setdefault(text[j:j + 4], len(vocab))
                                          for j in range(0, len(text), 4)]
        return InferenceRequest(request_id=f"r{i}", api="completions", model="m",
                                body={}, headers=dict(headers or {}), prefix_text=text,
                                token_ids=ids)

    precise = precise_scorers(sched.plugins.values()) if engines_hold else []

    def engine_stored(req: InferenceRequest, result: SchedulingResult) -> None:
        """The chosen engine's KV event for the prompt's blocks (engine hashes: any distinct
        ints; the keys serve)."""
        ids = req.token_ids or []
        for scorer in precise:
            bs = scorer.block_size_of(result.target)
            n = min(len(ids) // bs, scorer.params.max_prefix_blocks_to_match)
            hashes = tuple(block_keys(ids, bs, chain_root(None, bs), n))
            scorer.index.apply(result.target.name,
                               [BlockStoredEvent(hashes, None, tuple(ids[:n * bs]), bs)])

    for i in range(warmup):
        req = request(i)
        engine_stored(req, sched.schedule(req, eps, now=float(i)))
    timings, hooks = [], []
    clock = time.thread_time_ns if cpu_time else time.perf_counter_ns
    for i in range(samples):
        # made just before its decision, as the gateway parses a body just before scheduling
        # it: a prompt read from memory long after it was written (a list of them made up
        # front) costs a policy that reads the whole prompt up to twice as much at 100k tokens
        req = request(warmup + i)
        t0 = clock()
        result = sched.schedule(req, eps, now=float(warmup + i), defer_hooks=True)
        t1 = clock()
        sched.run_deferred_hooks()
        t2 = clock()
        engine_stored(req, result)
        timings.append((t1 - t0) / 1e6)
        hooks.append((t2 - t1) / 1e6)
    timings.sort()
    hooks.sort()
    return DecisionLatency(endpoints=endpoints, prompt_tokens=prompt_tokens, samples=samples,
                           p50_ms=statistics.median(timings), p99_ms=_p99(timings),
                           mean_ms=statistics.fmean(timings),
                           hooks_p50_ms=statistics.median(hooks), hooks_p99_ms=_p99(hooks))


def _p99(sorted_ms: list[float]) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * 0.99))]


def main() -> None:
    res = decision_latency()
    print("scheduling decision latency: " + ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in asdict(res).items()))


if __name__ == "__main__":
    main()


#: prompt sizes `inferoute overhead` times decisions for
DECISION_SIZES = (8192, 32768, 100_000)


#: the TTFT target of the SLO rows (`decision_costs`)
SLO_HEADERS = {"x-slo-ttft-ms": "1000"}


def decision_costs(configs: list[str | None], sizes: tuple[int, ...] = DECISION_SIZES, *,
                   endpoints: int = 16, samples: int = 300) -> str:
    """A markdown table: per policy and prompt size, the p50 / p99 decision time and the p50 of
    its deferred index update (CPU ms). A policy with `latency-slo-scorer` gets a second row
    for requests with a TTFT target, for which it predicts every candidate's latency; one
    with a precise prefix scorer, a second row where the engines hold what they were sent
    (`engines_hold`)."""
    head = (f"| policy ({endpoints} endpoints) | "
            + " | ".join(f"{s:,} tokens: decision p50 / p99, update p50 (CPU ms)" for s in sizes)
            + " |")
    lines = [head, "| :--- |" + " ---: |" * len(sizes)]
    for cfg in configs:
        name = cfg or DEFAULT_POLICY
        rows: list[tuple[str, dict[str, str] | None, bool]] = [
            (cfg or f"{DEFAULT_POLICY} (default)", None, False)]
        types = {p.type for p in resolve_config(cfg).plugins}
        if "latency-slo-scorer" in types:
            rows.append((f"{name}, with `x-slo-ttft-ms`", SLO_HEADERS, False))
        if "precise-prefix-cache-scorer" in types:
            rows.append((f"{name}, engines holding what they were sent", None, True))
        for label, headers, hold in rows:
            cells = []
            for size in sizes:
                dl = decision_latency(endpoints=endpoints, prompt_tokens=size, config=cfg,
                                      samples=samples, warmup=min(512, samples), cpu_time=True,
                                      headers=headers, engines_hold=hold)
                cells.append(f"{dl.p50_ms:.3f} / {dl.p99_ms:.3f}, {dl.hooks_p50_ms:.3f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
