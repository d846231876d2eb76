"""Replay a cached reply as an OpenAI-style JSON body or as a server-sent-event stream.

The replayed reply carries a fresh id and creation time; its text, finish reason and usage
are the stored ones. A stream is built the way vLLM's OpenAI server sends one: a first chat
chunk with the assistant role, content deltas (whole words, a few per chunk), a final chunk
with the finish reason, an optional usage chunk (when the request asked for
`stream_options.include_usage`) and `data: [DONE]`.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .cache import CachedReply

_WORDS = re.compile(r"\s*\S+\s*|\s+")


def _pieces(text: str, words_per_chunk: int) -> list[str]:
    words = _WORDS.findall(text)
    return ["".join(words[i:i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def replay_json(reply: CachedReply, *, api: str, response_id: str, created: int) -> dict[str, Any]:
    """A non-streaming response body for `api` ("chat" or "completions")."""
    if reply.body is not None and reply.api == api:
        body = dict(reply.body)
        body["id"] = response_id
        body["created"] = created
        return body
    if api == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.reasoning:
            message["reasoning_content"] = reply.reasoning
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None,
                                  "finish_reason": reply.finish_reason}
        obj = "chat.completion"
    elif api == "completions":
        choice = {"index": 0, "text": reply.text, "logprobs": None,
                  "finish_reason": reply.finish_reason}
        obj = "text_completion"
    else:
        raise ValueError(f"cannot replay a reply for API {api!r}")
    body = {"id": response_id, "object": obj, "created": created, "model": reply.model,
            "choices": [choice]}
    if reply.usage is not None:
        body["usage"] = reply.usage
    return body


def replay_sse(reply: CachedReply, *, api: str, response_id: str, created: int,
               include_usage: bool = False, words_per_chunk: int = 4) -> list[bytes]:
    """The SSE events (each `data: ...\\n\\n`) of a streamed response for `api`."""
    if api not in ("chat", "completions"):
        raise ValueError(f"cannot replay a reply for API {api!r}")
    chat = api == "chat"
    base = {"id": response_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": reply.model}

    def chunk(delta_or_text: Any, finish: str | None = None) -> dict[str, Any]:
        if chat:
            choice = {"index": 0, "delta": delta_or_text, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta_or_text, "logprobs": None, "finish_reason": finish}
        out: dict[str, Any] = dict(base, choices=[choice])
        if include_usage:
            out["usage"] = None
        return out

    events: list[bytes] = []
    if chat:
        events.append(_sse(chunk({"role": "assistant", "content": ""})))
        for piece in _pieces(reply.reasoning or "", words_per_chunk):
            events.append(_sse(chunk({"reasoning_content": piece})))
    for piece in _pieces(reply.text, words_per_chunk):
        events.append(_sse(chunk({"content": piece} if chat else piece)))
    events.append(_sse(chunk({} if chat else "", reply.finish_reason or "stop")))
    if include_usage:
        events.append(_sse(dict(base, choices=[], usage=reply.usage or {
            "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})))
    events.append(b"data: [DONE]\n\n")
    return events
