"""Prometheus text exposition of model servers -> `EndpointMetrics`, fast.

A vLLM /metrics page is tens of kilobytes, mostly histogram buckets we never read; the
scrapers parse it for every endpoint every 50 ms. So instead of tokenising every line, the
parser looks up each wanted family with `str.find` of `"\\n" + name` (sample lines start at a
line start; `# HELP`/`# TYPE` lines do not match) and parses only those lines.

Families read, per engine (missing ones are tolerated and leave the field at its default):

- waiting: `vllm:num_requests_waiting`, `sglang:num_queue_reqs`, `trtllm_num_requests_waiting`
- running: `vllm:num_requests_running`, `sglang:num_running_reqs`,
  `trtllm_num_requests_running`
- kv_usage (0-1): `vllm:kv_cache_usage_perc` (older servers: `vllm:gpu_cache_usage_perc`),
  `sglang:token_usage`, `trtllm_kv_cache_utilization`
- block_size, num_blocks: `vllm:cache_config_info{block_size,num_gpu_blocks}`,
  `sglang:cache_config_info{page_size,num_pages}`
- LoRA: `vllm:lora_requests_info{max_lora,running_lora_adapters,waiting_lora_adapters}`, whose
  value is a unix time: the newest sample wins
- prefix cache counters (tokens): `vllm:prefix_cache_queries[_total]`,
  `vllm:prefix_cache_hits[_total]`
- model_names: the `model_name` labels of the waiting gauge (what the server serves; the
  gateway's wrong-model check looks at it on every scrape)

Counters are accepted with or without the `_total` suffix (exporters differ on whether the
TYPE line and samples carry it). Several samples of one gauge (data-parallel engines, several
`model_name`s) are summed for counts and averaged for utilisation.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from .endpoint import EndpointMetrics

__all__ = ["ALL_FIELDS", "EngineName", "MetricField", "PageHints", "Sample", "detect_engine",
           "find_samples", "parse_labels", "parse_metrics"]

EngineName = Literal["vllm", "sglang", "trtllm"]
#: the groups of `EndpointMetrics` fields `parse_metrics` can be asked for
MetricField = Literal["waiting", "running", "kv_usage", "cache_config", "lora", "prefix_cache"]
ALL_FIELDS: frozenset[MetricField] = frozenset(
    ("waiting", "running", "kv_usage", "cache_config", "lora", "prefix_cache"))


@dataclass(frozen=True, slots=True)
class _Families:
    """The metric names of one engine; empty strings mean 'not exported'."""

    waiting: str
    running: str
    kv_usage: tuple[str, ...]
    cache_info: str
    block_size_label: str
    num_blocks_label: str
    lora_info: str = ""
    prefix_queries: str = ""
    prefix_hits: str = ""


FAMILIES: dict[EngineName, _Families] = {
    "vllm": _Families(
        waiting="vllm:num_requests_waiting",
        running="vllm:num_requests_running",
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        cache_info="vllm:cache_config_info",
        block_size_label="block_size",
        num_blocks_label="num_gpu_blocks",
        lora_info="vllm:lora_requests_info",
        prefix_queries="vllm:prefix_cache_queries",
        prefix_hits="vllm:prefix_cache_hits",
    ),
    "sglang": _Families(
        waiting="sglang:num_queue_reqs",
        running="sglang:num_running_reqs",
        kv_usage=("sglang:token_usage",),
        cache_info="sglang:cache_config_info",
        block_size_label="page_size",
        num_blocks_label="num_pages",
    ),
    "trtllm": _Families(
        waiting="trtllm_num_requests_waiting",
        running="trtllm_num_requests_running",
        kv_usage=("trtllm_kv_cache_utilization",),
        cache_info="",
        block_size_label="",
        num_blocks_label="",
    ),
}

#: the text that identifies each engine's exposition, for `detect_engine`
_MARKERS: tuple[tuple[EngineName, str], ...] = (
    ("vllm", "vllm:"), ("sglang", "sglang:"), ("trtllm", "trtllm_"))


class Sample:
    """One parsed sample line: labels (parsed lazily) and value."""

    __slots__ = ("_raw_labels", "value", "_labels")

    def __init__(self, raw_labels: str, value: float) -> None:
        self._raw_labels = raw_labels
        self.value = value
        self._labels: dict[str, str] | None = None

    @property
    def labels(self) -> dict[str, str]:
        if self._labels is None:
            self._labels = parse_labels(self._raw_labels)
        return self._labels


def detect_engine(text: str) -> EngineName | None:
    """Which engine wrote this exposition, by its metric-name prefix; None if unknown."""
    for engine, marker in _MARKERS:
        if marker in text:
            return engine
    return None


def parse_labels(raw: str) -> dict[str, str]:
    """`a="x",b="y\\"z"` -> {"a": "x", "b": 'y"z'}; tolerant of spaces and a trailing comma."""
    labels: dict[str, str] = {}
    i, n = 0, len(raw)
    while i < n:
        eq = raw.find("=", i)
        if eq < 0:
            break
        key = raw[i:eq].strip(" ,")
        q = raw.find('"', eq)
        if q < 0:
            break
        j = raw.find('"', q + 1)
        while j > 0 and raw[j - 1] == "\\" and not _even_backslashes(raw, j):
            j = raw.find('"', j + 1)
        if j < 0:
            j = n
        value = raw[q + 1:j]
        if "\\" in value:
            value = _unescape(value)
        labels[key] = value
        i = j + 1
    return labels


def _even_backslashes(raw: str, quote: int) -> bool:
    """True when the backslashes before raw[quote] pair up (the quote is not escaped)."""
    k = quote - 1
    while k >= 0 and raw[k] == "\\":
        k -= 1
    return (quote - 1 - k) % 2 == 0


def _unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _value(text: str) -> float | None:
    """The sample value of `text` (after the name/labels): first field, timestamp ignored."""
    fields = text.split()
    if not fields:
        return None
    try:
        return float(fields[0])
    except ValueError:
        return None


class PageHints:
    """What the previous page of one endpoint looked like, to parse the next one faster.

    An endpoint's exposition keeps its layout from scrape to scrape, so each family is first
    looked for within `WINDOW` characters of where it was last time, and a family that was
    absent is only looked for again every `recheck` parses (20 x 50 ms = 1 s), instead of
    scanning the whole page for it every time. Results are the same as without hints, except
    that a family that newly appears is seen up to `recheck` parses late.
    """

    WINDOW = 1024

    __slots__ = ("where", "absent", "recheck", "_labels")

    def __init__(self, recheck: int = 20) -> None:
        self.where: dict[str, int] = {}
        self.absent: dict[str, int] = {}
        self.recheck = recheck
        self._labels: dict[str, dict[str, str]] = {}

    def labels(self, sample: Sample) -> dict[str, str]:
        """`sample.labels`, remembered: info metrics repeat the same label set every scrape."""
        raw = sample._raw_labels
        got = self._labels.get(raw)
        if got is None:
            if len(self._labels) > 64:
                self._labels.clear()
            got = self._labels[raw] = sample.labels
        return got


def _first_line(text: str, name: str, hints: PageHints | None) -> int:
    """Start of a line beginning with `name` (the first of its group when hinted), or -1."""
    if hints is not None:
        at = hints.where.get(name)
        if at is not None:
            lo = max(0, at - hints.WINDOW)
            if at == 0 and text.startswith(name):
                return 0
            p = text.find("\n" + name, lo, at + hints.WINDOW + len(name) + 1)
            if p >= 0:
                pos = p + 1
                while pos > 0:  # step back to the first line of the group
                    prev = text.rfind("\n", 0, pos - 1) + 1
                    if not text.startswith(name, prev):
                        break
                    pos = prev
                return pos
    if text.startswith(name):
        return 0
    p = text.find("\n" + name)
    return p + 1 if p >= 0 else -1


def find_samples(text: str, name: str, counter: bool = False,
                 hints: PageHints | None = None) -> list[Sample]:
    """Every sample of family `name` in `text` (counters also as `name_total`).

    Only lines starting with exactly `name` (or `name_total` for counters) followed by `{`
    or a space are taken, so `name_created` and histogram suffixes are skipped. The text
    format keeps a family's lines together, so the scan stops at the first line after the
    group instead of searching the rest of the page. `hints` (per endpoint) make repeated
    parses of similar pages cheaper; see `PageHints`.
    """
    out: list[Sample] = []
    if hints is not None:
        skip = hints.absent.get(name)
        if skip:
            hints.absent[name] = skip - 1
            return out
    nlen = len(name)
    pos = _first_line(text, name, hints)
    first = -1
    while pos >= 0:
        i = pos + nlen
        if counter and text.startswith("_total", i):
            i += 6
        c = text[i:i + 1]
        eol = text.find("\n", i)
        if eol < 0:
            eol = len(text)
        if c == "{" or c == " ":
            if first < 0:
                first = pos
            if c == "{":
                close = _label_end(text, i + 1, eol)
                raw_labels = text[i + 1:close]
                rest = text[close + 1:eol]
            else:
                raw_labels = ""
                rest = text[i:eol]
            value = _value(rest)
            if value is not None:
                out.append(Sample(raw_labels, value))
        nxt = eol + 1
        if nxt < len(text) and text.startswith(name, nxt):
            pos = nxt  # the group continues on the next line
            continue
        if first >= 0:
            break
        found = text.find("\n" + name, eol)  # only a look-alike so far: keep searching
        pos = found + 1 if found >= 0 else -1
    if hints is not None:
        if first >= 0:
            hints.where[name] = first
            hints.absent.pop(name, None)
        elif name in hints.where:  # the hinted window misled us: look at the whole page
            del hints.where[name]
            return find_samples(text, name, counter, hints)
        else:
            hints.absent[name] = hints.recheck
    return out


def _label_end(text: str, i: int, eol: int) -> int:
    """Index of the `}` closing a label set that opened before `i`.

    The value and timestamp after the labels never contain `}`, so the last one on the line
    closes the set even when a quoted label value holds braces.
    """
    close = text.rfind("}", i, eol)
    return close if close >= 0 else eol


def _finite(samples: list[Sample]) -> list[float]:
    return [s.value for s in samples if math.isfinite(s.value)]


def _int_label(labels: dict[str, str], key: str) -> int | None:
    raw = labels.get(key)
    if raw is None:
        return None
    try:
        value = int(float(raw))
    except ValueError:  # e.g. "None" before the engine has profiled memory
        return None
    return value if value > 0 else None


def _adapters(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(a for a in (p.strip() for p in raw.split(",")) if a)


def parse_metrics(text: str, engine: EngineName | None = None,
                  scraped_at: float | None = None,
                  hints: PageHints | None = None,
                  fields: Collection[MetricField] = ALL_FIELDS) -> EndpointMetrics:
    """Normalise one /metrics page; `engine` None detects it from the metric names.

    A page with none of the known families gives default (zero) metrics with `scraped_at`
    set: the caller decides whether that is acceptable (see `detect_engine`). Pass the same
    `hints` for successive pages of one endpoint (see `PageHints`). Only the families of
    `fields` are looked for (the queue gauge always: it names the served models); the others
    keep their defaults.
    """
    eng = engine or detect_engine(text) or "vllm"
    fam = FAMILIES[eng]
    waiting_samples = find_samples(text, fam.waiting, hints=hints)
    waiting = _finite(waiting_samples)
    model_names = tuple(sorted({
        name for s in waiting_samples
        if (name := (hints.labels(s) if hints is not None else s.labels).get("model_name"))}))
    running = (_finite(find_samples(text, fam.running, hints=hints)) if "running" in fields
               else [])
    kv: list[float] = []
    for name in fam.kv_usage if "kv_usage" in fields else ():
        kv = _finite(find_samples(text, name, hints=hints))
        if kv:
            break
    block_size = num_blocks = None
    if fam.cache_info and "cache_config" in fields:
        for s in find_samples(text, fam.cache_info, hints=hints):
            labels = hints.labels(s) if hints is not None else s.labels
            block_size = _int_label(labels, fam.block_size_label)
            num_blocks = _int_label(labels, fam.num_blocks_label)
            break
    max_lora: int | None = None
    running_loras: tuple[str, ...] = ()
    waiting_loras: tuple[str, ...] = ()
    if fam.lora_info and "lora" in fields:
        newest: Sample | None = None
        for s in find_samples(text, fam.lora_info, hints=hints):
            if newest is None or s.value > newest.value:
                newest = s
        if newest is not None:
            labels = hints.labels(newest) if hints is not None else newest.labels
            raw_max = labels.get("max_lora")
            max_lora = int(raw_max) if raw_max and raw_max.isdigit() else None
            running_loras = _adapters(labels.get("running_lora_adapters"))
            waiting_loras = _adapters(labels.get("waiting_lora_adapters"))
    queries = hits = None
    if fam.prefix_queries and "prefix_cache" in fields:
        q = _finite(find_samples(text, fam.prefix_queries, counter=True, hints=hints))
        h = _finite(find_samples(text, fam.prefix_hits, counter=True, hints=hints))
        queries = sum(q) if q else None
        hits = sum(h) if h else None
    usage = sum(kv) / len(kv) if kv else 0.0
    return EndpointMetrics(
        waiting=int(sum(waiting)),
        running=int(sum(running)),
        kv_usage=min(1.0, max(0.0, usage)),
        block_size=block_size,
        num_blocks=num_blocks,
        max_lora=max_lora,
        running_loras=running_loras,
        waiting_loras=waiting_loras,
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
        scraped_at=scraped_at,
        model_names=model_names,
    )
