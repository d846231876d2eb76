"""SemanticCache bounds, TTL, LRU and tenant isolation; replay and stream collection."""

import numpy as np
import orjson
import pytest

from inferoute.semantic.cache import (
    CachedReply,
    CacheKey,
    SemanticCache,
    StreamCollector,
)
from inferoute.semantic.replay import replay_json, replay_sse


def vec(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def reply(text: str = "Paris.") -> CachedReply:
    return CachedReply(api="chat", model="m", text=text, finish_reason="stop",
                       usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})


KEY = CacheKey("tenant-a", "m", "ctx")


def test_hit_above_threshold_and_miss_below() -> None:
    c = SemanticCache()
    c.store(KEY, vec(1, 0, 0), reply(), now=0)
    hit = c.lookup(KEY, vec(1, 0.1, 0), threshold=0.95, now=1)
    assert hit is not None and hit.reply.text == "Paris." and hit.similarity > 0.99
    assert c.lookup(KEY, vec(1, 1, 0), threshold=0.95, now=1) is None   # cos = 0.71


def test_tenants_models_and_contexts_never_share() -> None:
    c = SemanticCache()
    c.store(KEY, vec(1, 0), reply(), now=0)
    assert c.lookup(CacheKey("tenant-b", "m", "ctx"), vec(1, 0), 0.9, now=0) is None
    assert c.lookup(CacheKey("tenant-a", "other", "ctx"), vec(1, 0), 0.9, now=0) is None
    assert c.lookup(CacheKey("tenant-a", "m", "ctx2"), vec(1, 0), 0.9, now=0) is None
    assert c.lookup(KEY, vec(1, 0), 0.9, now=0) is not None


def test_ttl_expiry() -> None:
    c = SemanticCache(ttl_seconds=10)
    c.store(KEY, vec(1, 0), reply(), now=100)
    assert c.lookup(KEY, vec(1, 0), 0.9, now=109.9) is not None
    assert c.lookup(KEY, vec(1, 0), 0.9, now=110.0) is None
    assert len(c) == 0


def test_global_lru_bound_evicts_least_recently_used() -> None:
    c = SemanticCache(max_entries=2)
    k1, k2, k3 = (CacheKey("t", "m", str(i)) for i in range(3))
    c.store(k1, vec(1, 0), reply("one"), now=0)
    c.store(k2, vec(1, 0), reply("two"), now=0)
    assert c.lookup(k1, vec(1, 0), 0.9, now=1) is not None     # k1 now most recent
    c.store(k3, vec(1, 0), reply("three"), now=2)
    assert len(c) == 2
    assert c.lookup(k2, vec(1, 0), 0.9, now=3) is None          # evicted
    assert c.lookup(k1, vec(1, 0), 0.9, now=3) is not None
    assert c.lookup(k3, vec(1, 0), 0.9, now=3) is not None


def test_bucket_bound_and_near_duplicate_refresh() -> None:
    c = SemanticCache(max_entries_per_bucket=2)
    c.store(KEY, vec(1, 0, 0), reply("a"), now=0)
    c.store(KEY, vec(0, 1, 0), reply("b"), now=0)
    c.store(KEY, vec(0, 0, 1), reply("c"), now=0)
    assert len(c) == 2
    assert c.lookup(KEY, vec(1, 0, 0), 0.9, now=0) is None      # oldest in the bucket went
    c.store(KEY, vec(0, 0, 1), reply("c2"), now=1)              # same question: replaced
    assert len(c) == 2
    assert c.lookup(KEY, vec(0, 0, 1), 0.9, now=1).reply.text == "c2"


def test_bad_bounds_rejected() -> None:
    with pytest.raises(ValueError):
        SemanticCache(max_entries=0)


def parse_sse(events: list[bytes]) -> list[object]:
    out: list[object] = []
    for ev in events:
        assert ev.startswith(b"data: ") and ev.endswith(b"\n\n")
        payload = ev[6:-2]
        out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def test_replay_sse_chat_is_valid_and_faithful() -> None:
    text = "The capital of France is Paris. It has about two million inhabitants."
    events = parse_sse(replay_sse(reply(text), api="chat", response_id="id1", created=7,
                                  include_usage=True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "id1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == text
    assert len([c for c in chunks if c["choices"]]) > 3            # really streamed in pieces
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 4


def test_replay_completions_stream_and_json() -> None:
    r = CachedReply(api="completions", model="m", text="once upon a time", finish_reason="length")
    events = parse_sse(replay_sse(r, api="completions", response_id="c", created=1))
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "once upon a time"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    body = replay_json(r, api="completions", response_id="c2", created=2)
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == r.text


def test_json_reply_round_trip_keeps_original_body() -> None:
    original = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Hi!"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                "system_fingerprint": "fp"}
    r = CachedReply.from_response("chat", original)
    assert r is not None and r.text == "Hi!"
    body = replay_json(r, api="chat", response_id="new", created=9)
    assert body["id"] == "new" and body["created"] == 9
    assert body["system_fingerprint"] == "fp" and body["choices"] == original["choices"]
    # streamed from a JSON-stored reply
    events = parse_sse(replay_sse(r, api="chat", response_id="s", created=9))
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Hi!"


def test_uncacheable_responses() -> None:
    tool = {"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}}]}
    assert CachedReply.from_response("chat", tool) is None
    two = {"model": "m", "choices": [{"index": 0, "message": {"content": "a"}},
                                     {"index": 1, "message": {"content": "b"}}]}
    assert CachedReply.from_response("chat", two) is None
    assert CachedReply.from_response("chat", {"error": {"message": "x"}}) is None


def test_stream_collector_rebuilds_the_reply_from_relayed_bytes() -> None:
    original = reply("Streaming works, word by word, across chunk boundaries.")
    raw = b"".join(replay_sse(original, api="chat", response_id="a", created=1,
                              include_usage=True))
    col = StreamCollector("chat")
    for i in range(0, len(raw), 7):                               # arbitrary TCP-like splits
        col.feed(raw[i:i + 7])
    got = col.reply()
    assert got is not None
    assert (got.text, got.finish_reason, got.usage) == (original.text, "stop", original.usage)


def test_stream_collector_rejects_cut_or_tool_streams() -> None:
    raw = b"".join(replay_sse(reply("partial answer"), api="chat", response_id="a", created=1))
    cut = StreamCollector("chat")
    cut.feed(raw[: len(raw) // 2])
    assert cut.reply() is None
    tool = StreamCollector("chat")
    tool.feed(b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"id":"x"}]}}]}\n\n')
    tool.feed(b"data: [DONE]\n\n")
    assert tool.reply() is None
