"""Live benchmark: drive an OpenAI-compatible endpoint with streaming completions.

`run_live` sends a workload through the load stages (inference-perf semantics: a rate stage
sends `int(rate x duration)` requests at seeded Poisson/constant/gamma times, the next stage
starts when all have finished plus `interval`; a concurrency stage keeps N requests in flight)
and records per request the send time, each streamed chunk's arrival (tokens in a chunk =
its whitespace words, at least 1), the final `usage` (prompt, completion and cached tokens) and
any failure. Requests are bounded by `max_connections` open at once and `timeout` seconds each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from .load import LoadSpec, Stage
from .metrics import RequestRecord, summarize
from .workloads import WorkItem, Workload


@dataclass(slots=True)
class LiveConfig:
    target: str
    model: str
    workload: Workload
    load: LoadSpec
    api: str = "completions"
    ignore_eos: bool = False
    timeout: float = 600.0
    max_connections: int = 2500
    headers: dict[str, str] | None = None


Progress = Callable[[int, int, int], None]


def _body(cfg: LiveConfig, item: WorkItem) -> dict[str, Any]:
    body: dict[str, Any] = {"model": cfg.model, "max_tokens": item.max_tokens, "stream": True,
                            "stream_options": {"include_usage": True}}
    if cfg.api == "chat":
        body["messages"] = [{"role": "user", "content": item.prompt}]
    else:
        body["prompt"] = item.prompt
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    return body


def _chunk_text(obj: dict[str, Any]) -> str:
    choices = obj.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    text = c.get("text")
    if text is None:
        text = (c.get("delta") or {}).get("content")
    return text or ""


async def send_one(session: aiohttp.ClientSession, cfg: LiveConfig, item: WorkItem,
                   rec: RequestRecord, clock: Callable[[], float]) -> None:
    """Send one streaming request and fill `rec`; never raises for request failures."""
    path = "/v1/chat/completions" if cfg.api == "chat" else "/v1/completions"
    url = cfg.target.rstrip("/") + path
    usage: dict[str, Any] | None = None
    try:
        async with session.post(url, data=orjson.dumps(_body(cfg, item)),
                                headers={"content-type": "application/json",
                                         **(cfg.headers or {})}) as resp:
            if resp.status != 200:
                text = (await resp.read())[:300].decode(errors="replace")
                rec.error = f"HTTP {resp.status}: {text}"
                return
            rec.endpoint = resp.headers.get("x-gateway-destination-endpoint-served")
            buf = b""
            async for data in resp.content.iter_any():
                now = clock()
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        continue
                    try:
                        obj = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        continue
                    if obj.get("error"):
                        rec.error = f"stream error: {str(obj['error'])[:200]}"
                        continue
                    text = _chunk_text(obj)
                    if text:
                        rec.on_tokens(now, max(1, len(text.split())))
                    if obj.get("usage"):
                        usage = obj["usage"]
    except TimeoutError:
        rec.error = f"timeout after {cfg.timeout:g}s"
    except aiohttp.ClientError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    finally:
        rec.end = clock()
    if usage:
        rec.prompt_tokens = int(usage.get("prompt_tokens") or rec.prompt_tokens)
        details = usage.get("prompt_tokens_details") or {}
        if details.get("cached_tokens") is not None:
            rec.cached_tokens = int(details["cached_tokens"])
        completion = usage.get("completion_tokens")
        if completion is not None:
            rec.output_tokens = int(completion)
    if rec.error is None and rec.first_token is None:
        rec.error = "no tokens streamed"


class _Runner:
    """Sends one run's requests; `sent` counts across stages, for workloads that keep cycling."""

    def __init__(self, cfg: LiveConfig, session: aiohttp.ClientSession,
                 clock: Callable[[], float], progress: Progress | None) -> None:
        self.cfg = cfg
        self.session = session
        self.clock = clock
        self.progress = progress
        self.sent = 0

    async def stage(self, index: int, stage: Stage) -> list[RequestRecord]:
        records: list[RequestRecord] = []
        total = _stage_total(stage)
        done = sent_here = 0
        if self.progress:
            self.progress(index, 0, total)

        async def one() -> None:
            nonlocal done, sent_here
            item = self.cfg.workload.next_item(sent_here, self.sent)
            sent_here += 1
            self.sent += 1
            rec = RequestRecord(key=item.key, stage=index, start=self.clock(),
                                prompt_tokens=item.prompt_tokens)
            records.append(rec)
            await send_one(self.session, self.cfg, item, rec, self.clock)
            done += 1
            if self.progress:
                self.progress(index, done, total)

        if stage.rate is not None:
            start = time.monotonic()
            tasks = []
            for off in self.cfg.load.arrivals(index):
                delay = start + off - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)
            return records
        deadline = time.monotonic() + stage.duration if stage.duration else None
        remaining = stage.count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and (deadline is None or time.monotonic() < deadline):
                remaining -= 1
                await one()

        await asyncio.gather(*(worker() for _ in range(stage.concurrency or 1)))
        return records


async def run_live(cfg: LiveConfig, progress: Progress | None = None) -> list[list[RequestRecord]]:
    """Run every stage against `cfg.target`; returns the records per stage."""
    timeout = aiohttp.ClientTimeout(total=cfg.timeout)
    connector = aiohttp.TCPConnector(limit=cfg.max_connections)
    t0 = time.monotonic()

    def clock() -> float:
        return time.monotonic() - t0

    out: list[list[RequestRecord]] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        runner = _Runner(cfg, session, clock, progress)
        for index, stage in enumerate(cfg.load.stages):
            if index:
                await asyncio.sleep(cfg.load.interval)
            out.append(await runner.stage(index, stage))
    return out


def _stage_total(stage: Stage) -> int:
    return stage.count if stage.count < (1 << 61) else 0


def live_report(cfg: LiveConfig, records: list[list[RequestRecord]],
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report dict of a live run (same shape as a virtual run's)."""
    stages = [summarize(recs, stage=i, rate=s.rate, concurrency=s.concurrency,
                        planned_duration=s.duration)
              for i, (s, recs) in enumerate(zip(cfg.load.stages, records))]
    wl = cfg.workload
    config = {"mode": "live", "target": cfg.target, "model": cfg.model, "api": cfg.api,
              "ignore_eos": cfg.ignore_eos, "workload": {"name": wl.name, **wl.params},
              "load": {"type": cfg.load.kind, "interval": cfg.load.interval,
                       "seed": cfg.load.seed,
                       "stages": [{"rate": s.rate, "duration": s.duration,
                                   "concurrency": s.concurrency, "num_requests": s.num_requests}
                                  for s in cfg.load.stages]},
              **(extra or {})}
    return {"config": config, "stages": stages}
