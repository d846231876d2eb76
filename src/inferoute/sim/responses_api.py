"""The simulator's OpenAI Responses API shapes (`POST /v1/responses`), as vLLM's server sends them.

Pure functions, no I/O. A non-streamed answer is one `response` object whose `output` holds one
assistant `message` item with one `output_text` part; `usage` carries `input_tokens`,
`input_tokens_details.cached_tokens`, `output_tokens` and `total_tokens`. A streamed answer is
SSE with an `event:` line per event, numbered by `sequence_number`: response.created,
response.in_progress, then (with the first token) response.output_item.added and
response.content_part.added, one response.output_text.delta per token, and at the end
response.output_text.done, response.content_part.done, response.output_item.done and
response.completed (which carries the whole response, usage included). No `data: [DONE]`.
A response cut short by `max_output_tokens` has status "incomplete", as on vLLM.
"""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Mapping

import orjson


def response_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM's ResponseUsage from the completions-style usage the simulator counts."""
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0,
                                     "input_tokens_per_turn": [],
                                     "cached_tokens_per_turn": []},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0,
                                      "output_tokens_per_turn": [],
                                      "tool_output_tokens_per_turn": []},
            "total_tokens": usage["total_tokens"]}


def _field(body: Mapping[str, Any], name: str, default: Any) -> Any:
    """A request field echoed in the response, or vLLM's default when omitted or null."""
    value = body.get(name)
    return default if value is None else value


def _text_part(text: str) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": None}


def _message(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """An assistant message item; `text` None means no content part yet."""
    return {"id": item_id, "content": [] if text is None else [_text_part(text)],
            "role": "assistant", "status": status, "type": "message"}


class ResponseShape:
    """The request-dependent fields of one response object, and the object built from them."""

    def __init__(self, body: Mapping[str, Any], response_id: str, model: str,
                 max_output_tokens: int, created: int | None = None) -> None:
        self.response_id = response_id
        self.item_id = "msg_" + response_id.removeprefix("resp_")
        self._fields: dict[str, Any] = {
            "id": response_id,
            "created_at": int(time.time()) if created is None else created,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "metadata": body.get("metadata"),
            "model": model, "object": "response", "output": [],
            "parallel_tool_calls": _field(body, "parallel_tool_calls", True),
            "temperature": _field(body, "temperature", 1.0),
            "tool_choice": _field(body, "tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": _field(body, "top_p", 1.0), "background": bool(body.get("background")),
            "max_output_tokens": max_output_tokens, "max_tool_calls": None,
            "previous_response_id": None, "prompt": None, "reasoning": None,
            "service_tier": _field(body, "service_tier", "auto"), "status": "in_progress",
            "text": None, "top_logprobs": None, "truncation": "disabled", "usage": None,
            "user": body.get("user"), "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "kv_transfer_params": None, "ec_transfer_params": None,
            "input_messages": None, "output_messages": None}

    def build(self, text: str | None = None, finish_reason: str | None = None,
              usage: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The response object: in progress (no arguments) or finished with `text`."""
        obj = dict(self._fields)
        if usage is None:
            return obj
        incomplete = finish_reason == "length"
        obj["status"] = "incomplete" if incomplete else "completed"
        if incomplete:
            obj["incomplete_details"] = {"reason": "max_output_tokens"}
        obj["output"] = [] if text is None else [_message(self.item_id, text, "completed")]
        obj["usage"] = response_usage(usage)
        return obj


def full_response_body(shape: ResponseShape, text: str, finish_reason: str,
                       usage: Mapping[str, Any]) -> bytes:
    """A non-streamed /v1/responses body."""
    return orjson.dumps(shape.build(text, finish_reason, usage))


class ResponseEventWriter:
    """Formats the SSE events of one streamed response (see the module docstring).

    Same calls as the chat/completions `ChunkWriter`: `open()`, `token()` per token, `final()`
    for the last, `close(usage)`; the per-token usage argument is ignored (the Responses API
    has no continuous usage).
    """

    def __init__(self, shape: ResponseShape) -> None:
        self.shape = shape
        self._seq = 0
        self._text: list[str] = []
        self._opened = False
        self._finish: str | None = None
        # every delta event differs only in its text and sequence number
        self._delta_pre = (b'event: response.output_text.delta\ndata: {"type":'
                           b'"response.output_text.delta","content_index":0,"output_index":0,'
                           b'"item_id":' + orjson.dumps(shape.item_id) + b',"logprobs":[],'
                           b'"delta":')

    def _event(self, etype: str, payload: dict[str, Any]) -> bytes:
        data = {"type": etype, "sequence_number": self._seq, **payload}
        self._seq += 1
        return b"event: " + etype.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _item(self, status: str) -> dict[str, Any]:
        """The message item: empty while in progress, with its text (if any) when done."""
        full = "".join(self._text) if status == "completed" else ""
        return _message(self.shape.item_id, full or None, status)

    def open(self) -> bytes:
        """response.created and response.in_progress, sent before the first token."""
        obj = self.shape.build()
        return (self._event("response.created", {"response": obj})
                + self._event("response.in_progress", {"response": obj}))

    def token(self, text: str, usage: Mapping[str, Any] | None = None) -> bytes:
        """One token's delta (the first also opens the message item and its text part)."""
        head = b""
        if not self._opened:
            self._opened = True
            head = (self._event("response.output_item.added",
                                {"output_index": 0, "item": self._item("in_progress")})
                    + self._event("response.content_part.added",
                                  {"output_index": 0, "item_id": self.shape.item_id,
                                   "content_index": 0, "part": _text_part("")}))
        self._text.append(text)
        seq = self._seq
        self._seq += 1
        return (head + self._delta_pre + orjson.dumps(text) + b',"sequence_number":'
                + str(seq).encode() + b"}\n\n")

    def final(self, text: str, finish_reason: str,
              usage: Mapping[str, Any] | None = None) -> bytes:
        """The last token's delta, then the done events of the text, part and item."""
        out = self.token(text) if text else b""
        self._finish = finish_reason
        if not self._opened:
            return out
        full = "".join(self._text)
        return (out
                + self._event("response.output_text.done",
                              {"output_index": 0, "content_index": 0, "text": full,
                               "logprobs": [], "item_id": self.shape.item_id})
                + self._event("response.content_part.done",
                              {"item_id": self.shape.item_id, "output_index": 0,
                               "content_index": 0, "part": _text_part(full)})
                + self._event("response.output_item.done",
                              {"output_index": 0, "item": self._item("completed")}))

    def close(self, usage: Mapping[str, Any] | None) -> bytes:
        """response.completed with the whole response and its usage."""
        assert usage is not None, "a streamed response always ends with its usage"
        text = "".join(self._text) if self._opened else None
        return self._event("response.completed",
                           {"response": self.shape.build(text, self._finish or "stop", usage)})
