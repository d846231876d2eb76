"""Semantic cache: replies keyed by (tenant, model, exact context) and the meaning of the question.

A request's key has an exact part and a semantic part. The exact part (`CacheKey`) is the
tenant, the model that answers, and a hash of everything in the request except the last user
message (system prompt, earlier turns, sampling parameters, tools): two requests can only
share a reply when all of that is identical, and tenants never share. The semantic part is
the embedding of the last user message: a stored reply is returned when its cosine similarity
is at least the threshold (global, or the request category's own).

Bounded: at most `max_entries` replies overall (least recently used evicted first) and
`max_entries_per_bucket` per exact key (the bucket's least recently used evicted), each
living `ttl_seconds`. Time is passed in (`now`), never read.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson

ApiName = str  # "chat" | "completions"


class CacheKey(NamedTuple):
    tenant: str
    model: str
    context: str


@dataclass(slots=True)
class CachedReply:
    """A complete model reply, enough to replay it as JSON or as an SSE stream."""

    api: ApiName
    model: str
    text: str
    finish_reason: str | None = "stop"
    usage: dict[str, Any] | None = None
    reasoning: str | None = None
    #: the original non-streaming response body, when the reply was stored from one
    body: dict[str, Any] | None = None

    @classmethod
    def from_response(cls, api: ApiName, body: dict[str, Any]) -> CachedReply | None:
        """From a non-streaming response body; None when it is not cacheable (an error,
        several choices, tool calls, or an empty answer)."""
        choices = body.get("choices")
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        if api == "chat":
            msg = choice.get("message") or {}
            if not isinstance(msg, dict) or msg.get("tool_calls") or msg.get("function_call"):
                return None
            text = msg.get("content")
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
        elif api == "completions":
            text, reasoning = choice.get("text"), None
        else:
            return None
        if not isinstance(text, str) or not text:
            return None
        return cls(api=api, model=str(body.get("model", "")), text=text,
                   finish_reason=choice.get("finish_reason"),
                   usage=body.get("usage") if isinstance(body.get("usage"), dict) else None,
                   reasoning=reasoning if isinstance(reasoning, str) else None,
                   body=body)


class StreamCollector:
    """Accumulates an upstream SSE stream (bytes as relayed) into a `CachedReply`.

    Feed every chunk the gateway relays; call `reply()` at the end. Streams with several
    choices, tool calls or an error are marked uncacheable. Memory is bounded by
    `max_chars` of text.
    """

    def __init__(self, api: ApiName, max_chars: int = 64_000) -> None:
        self.api = api
        self.max_chars = max_chars
        self._buf = b""
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._chars = 0
        self._model = ""
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._done = False
        self.cacheable = api in ("chat", "completions")

    def feed(self, data: bytes) -> None:
        """Add relayed bytes (any split: events may straddle calls)."""
        if not self.cacheable:
            self._text.clear()
            return
        self._buf += data
        while b"\n\n" in self._buf:
            event, self._buf = self._buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                line = line.rstrip(b"\r")
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())
        if len(self._buf) > 1_000_000:  # a single event this large is not a chat delta
            self.cacheable = False
            self._buf = b""

    def _data(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.cacheable = False
            return
        if not isinstance(obj, dict) or "error" in obj:
            self.cacheable = False
            return
        self._model = obj.get("model") or self._model
        if isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                self.cacheable = False
                return
            if self.api == "chat":
                delta = choice.get("delta") or {}
                if delta.get("tool_calls") or delta.get("function_call"):
                    self.cacheable = False
                    return
                piece = delta.get("content")
                think = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(think, str):
                    self._reasoning.append(think)
            else:
                piece = choice.get("text")
            if isinstance(piece, str) and piece:
                self._chars += len(piece)
                if self._chars > self.max_chars:
                    self.cacheable = False
                    return
                self._text.append(piece)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]

    def reply(self) -> CachedReply | None:
        """The complete reply, or None if the stream was cut short or is not cacheable."""
        if not self.cacheable or not self._done or self._finish is None or not self._text:
            return None
        return CachedReply(api=self.api, model=self._model, text="".join(self._text),
                           finish_reason=self._finish, usage=self._usage,
                           reasoning="".join(self._reasoning) or None)


@dataclass(slots=True)
class _Entry:
    id: int
    vector: np.ndarray
    reply: CachedReply
    expires: float
    last_used: int


@dataclass(slots=True)
class _Bucket:
    entries: list[_Entry] = field(default_factory=list)
    matrix: np.ndarray | None = None

    def rebuild(self) -> None:
        self.matrix = np.stack([e.vector for e in self.entries]) if self.entries else None


@dataclass(slots=True, frozen=True)
class CacheHit:
    reply: CachedReply
    similarity: float


class SemanticCache:
    """Bounded LRU + TTL store of replies, searched by embedding similarity per exact key."""

    def __init__(self, *, max_entries: int = 10_000, max_entries_per_bucket: int = 512,
                 ttl_seconds: float = 3600.0) -> None:
        if max_entries < 1 or max_entries_per_bucket < 1 or ttl_seconds <= 0:
            raise ValueError("cache bounds must be positive")
        self.max_entries = max_entries
        self.max_per_bucket = max_entries_per_bucket
        self.ttl = ttl_seconds
        self._buckets: dict[CacheKey, _Bucket] = {}
        self._lru: OrderedDict[int, CacheKey] = OrderedDict()
        self._ids = itertools.count(1)
        self._tick = itertools.count(1)

    def __len__(self) -> int:
        return len(self._lru)

    def _drop(self, key: CacheKey, bucket: _Bucket, victims: set[int]) -> None:
        bucket.entries = [e for e in bucket.entries if e.id not in victims]
        for v in victims:
            self._lru.pop(v, None)
        if bucket.entries:
            bucket.rebuild()
        else:
            del self._buckets[key]

    def _expire(self, key: CacheKey, bucket: _Bucket, now: float) -> None:
        dead = {e.id for e in bucket.entries if e.expires <= now}
        if dead:
            self._drop(key, bucket, dead)

    def lookup(self, key: CacheKey, vector: np.ndarray, threshold: float,
               now: float) -> CacheHit | None:
        """The most similar live reply at or above `threshold`, or None."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        self._expire(key, bucket, now)
        if key not in self._buckets or bucket.matrix is None:
            return None
        sims = bucket.matrix @ vector
        i = int(np.argmax(sims))
        if float(sims[i]) < threshold:
            return None
        entry = bucket.entries[i]
        entry.last_used = next(self._tick)
        self._lru.move_to_end(entry.id)
        return CacheHit(entry.reply, float(sims[i]))

    def store(self, key: CacheKey, vector: np.ndarray, reply: CachedReply, now: float) -> None:
        """Insert (or refresh a near-identical) reply; evicts to stay within bounds."""
        bucket = self._buckets.setdefault(key, _Bucket())
        self._expire(key, bucket, now)
        bucket = self._buckets.setdefault(key, bucket)
        if bucket.matrix is not None:
            sims = bucket.matrix @ vector
            i = int(np.argmax(sims))
            if float(sims[i]) >= 0.9999:
                self._drop(key, bucket, {bucket.entries[i].id})
                bucket = self._buckets.setdefault(key, bucket)
        if len(bucket.entries) >= self.max_per_bucket:
            oldest = min(bucket.entries, key=lambda e: e.last_used)
            self._drop(key, bucket, {oldest.id})
            bucket = self._buckets.setdefault(key, bucket)
        entry = _Entry(next(self._ids), np.asarray(vector, dtype=np.float32), reply,
                       now + self.ttl, next(self._tick))
        bucket.entries.append(entry)
        bucket.rebuild()
        self._lru[entry.id] = key
        while len(self._lru) > self.max_entries:
            victim, vkey = next(iter(self._lru.items()))
            self._drop(vkey, self._buckets[vkey], {victim})

    def clear(self) -> None:
        self._buckets.clear()
        self._lru.clear()
