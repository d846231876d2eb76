"""Real request traces as workloads, replayed at their own arrival times.

Two public formats:

- **Mooncake** (JSON lines): `timestamp` (ms from the trace's start), `input_length`,
  `output_length`, `hash_ids` (one id per 512-token block of the prompt; requests that share a
  leading id share that block of prefix). Each hash id becomes a deterministic block of
  `block_tokens` words (drawn from a generator seeded with the id), so shared ids share prefix
  text exactly and the prompt is the concatenation of its blocks cut to `input_length` words
  (padded with words of its own when the ids cover fewer).
- **Azure LLM inference** (CSV): `TIMESTAMP` (a date-time), `ContextTokens`, `GeneratedTokens`.
  It says nothing about sharing, so every prompt is words of its own.

`load_trace` keeps the requests that arrive within a window (`start` and `duration`, seconds of
the trace's own clock), divides their gaps by `speed` (2: twice as fast) and returns the workload
with a one-stage `LoadSpec` of kind `trace` whose arrival times are exactly those. The full
public traces are fetched by the user; a window and `max_requests` bound what is held in memory.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .load import LoadSpec, Stage
from .workloads import VOCAB, WorkItem, Workload

#: tokens per hash id in the Mooncake traces
MOONCAKE_BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request of a trace: arrival (s, trace clock), lengths, prefix block ids."""

    arrival: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...] = ()


class TraceError(ValueError):
    """A trace file that cannot be read, with the line that is wrong."""


def _int(value: object, what: str, where: str, minimum: int) -> int:
    try:
        n = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise TraceError(f"{where}: {what} must be an integer, got {value!r}") from None
    if n < minimum:
        raise TraceError(f"{where}: {what} must be >= {minimum}, got {n}")
    return n


def read_mooncake(path: str | Path) -> Iterator[TraceRow]:
    """Rows of a Mooncake JSONL trace, in file order."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise TraceError(f"{where}: expected an object")
            ids = obj.get("hash_ids", [])
            if not isinstance(ids, list):
                raise TraceError(f"{where}: hash_ids must be a list")
            yield TraceRow(
                arrival=_int(obj.get("timestamp"), "timestamp", where, 0) / 1000.0,
                input_length=_int(obj.get("input_length"), "input_length", where, 1),
                output_length=_int(obj.get("output_length"), "output_length", where, 1),
                hash_ids=tuple(_int(h, "a hash id", where, 0) for h in ids))


def _timestamp(text: str, where: str) -> float:
    head, dot, frac = text.strip().partition(".")
    try:  # the public trace has 7 fractional digits; datetime takes at most 6
        t = datetime.fromisoformat(head + (dot + frac[:6] if dot else ""))
    except ValueError:
        raise TraceError(f"{where}: TIMESTAMP {text!r} is not a date-time") from None
    return t.timestamp()


def read_azure(path: str | Path) -> Iterator[TraceRow]:
    """Rows of an Azure LLM inference trace CSV, arrivals in seconds from its first row."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or [])
        if missing:
            raise TraceError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        first: float | None = None
        for n, row in enumerate(reader, 2):
            where = f"{path}:{n}"
            t = _timestamp(row["TIMESTAMP"], where)
            first = t if first is None else first
            yield TraceRow(arrival=t - first,
                           input_length=_int(row["ContextTokens"], "ContextTokens", where, 1),
                           output_length=_int(row["GeneratedTokens"], "GeneratedTokens", where,
                                              1))


class _Blocks:
    """Words of each hash id's block, made once per id."""

    def __init__(self, block_tokens: int, seed: int) -> None:
        self.block_tokens = block_tokens
        self.seed = seed
        self._words: dict[int, list[str]] = {}

    def words(self, hid: int) -> list[str]:
        w = self._words.get(hid)
        if w is None:
            rng = np.random.default_rng([self.seed, hid])
            w = self._words[hid] = VOCAB[rng.integers(0, len(VOCAB), self.block_tokens)].tolist()
        return w


def _prompt(row: TraceRow, index: int, blocks: _Blocks, seed: int) -> str:
    words: list[str] = []
    for hid in row.hash_ids:
        if len(words) >= row.input_length:
            break
        words.extend(blocks.words(hid))
    del words[row.input_length:]
    if len(words) < row.input_length:  # no ids (Azure) or too few: words of its own
        rng = np.random.default_rng([seed, 1 << 40, index])
        words.extend(VOCAB[rng.integers(0, len(VOCAB), row.input_length - len(words))].tolist())
    return " ".join(words)


def trace_format(path: str | Path) -> str:
    """`mooncake` for .jsonl/.json files, `azure` for .csv."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "mooncake"
    if suffix == ".csv":
        return "azure"
    raise TraceError(f"{path}: cannot tell the trace format from {suffix or 'no suffix'!r} "
                     "(.jsonl: Mooncake, .csv: Azure)")


def load_trace(path: str | Path, *, speed: float = 1.0, start: float = 0.0,
               duration: float | None = None, max_requests: int | None = None,
               fmt: str | None = None, block_tokens: int = MOONCAKE_BLOCK_TOKENS,
               seed: int = 0) -> tuple[Workload, LoadSpec]:
    """The trace's requests in [start, start + duration) (trace seconds), as a workload and a
    one-stage load that sends them at their own times divided by `speed`."""
    if speed <= 0:
        raise TraceError("speed must be positive")
    if start < 0 or (duration is not None and duration <= 0):
        raise TraceError("the window needs start >= 0 and a positive duration")
    fmt = fmt or trace_format(path)
    if fmt not in ("mooncake", "azure"):
        raise TraceError(f"unknown trace format {fmt!r} (mooncake or azure)")
    rows_in = read_mooncake(path) if fmt == "mooncake" else read_azure(path)
    end = None if duration is None else start + duration
    rows = []
    for row in rows_in:
        if row.arrival < start or (end is not None and row.arrival >= end):
            continue
        rows.append(row)
        if max_requests is not None and len(rows) >= max_requests:
            break
    if not rows:
        raise TraceError(f"{path}: no request in the window")
    rows.sort(key=lambda r: r.arrival)
    blocks = _Blocks(block_tokens, seed)
    items = [WorkItem(f"trace-{i}", _prompt(r, i, blocks, seed), r.input_length,
                      r.output_length, group=f"h{r.hash_ids[0]}" if r.hash_ids else None)
             for i, r in enumerate(rows)]
    t0 = rows[0].arrival
    times = [(r.arrival - t0) / speed for r in rows]
    span = max(times[-1], 1e-9)
    stage = Stage(duration=span, rate=len(rows) / span, num_requests=len(rows))
    params = {"path": str(path), "format": fmt, "speed": speed, "start": start, "duration": duration,
                  "max_requests": max_requests, "requests": len(rows)}
    load = LoadSpec([stage], kind="trace", seed=seed, extra={"times": times})
    return Workload(f"trace-{fmt}", items, params), load


def add_trace_arguments(p: argparse.ArgumentParser) -> None:
    """The replay flags `bench sim`, `bench run` and `bench autoscale` share (`--trace FILE`
    and its window, speed and format)."""
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="replay a trace instead of a synthetic workload: Mooncake JSONL "
                        "(.jsonl) or Azure CSV (.csv), at its own arrival times")
    p.add_argument("--trace-format", choices=("mooncake", "azure"), default=None,
                   help="the trace's format (default: from the file suffix)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="trace replay speed factor (2: twice as fast; 1)")
    p.add_argument("--trace-start", type=float, default=0.0,
                   help="window start, seconds of the trace's clock (0)")
    p.add_argument("--trace-duration", type=float, default=None,
                   help="window length, seconds of the trace's clock (all)")
    p.add_argument("--max-requests", type=int, default=None,
                   help="at most this many requests of the trace window")


def trace_from_arguments(args: argparse.Namespace) -> tuple[Workload, LoadSpec]:
    """`load_trace` of the flags `add_trace_arguments` defines (`args.trace` set)."""
    return load_trace(args.trace, speed=args.speed, start=args.trace_start,
                      duration=args.trace_duration, max_requests=args.max_requests,
                      fmt=args.trace_format, seed=args.seed)
