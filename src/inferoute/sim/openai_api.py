"""The simulator's OpenAI wire format: request validation and vLLM-shaped response bodies.

Pure functions, no I/O. Request bodies are validated with the core's `parse_request` (so the
simulator renders a chat conversation to exactly the text the gateway's prefix scorer hashes)
plus the sampling fields a vLLM server reads. Responses follow vLLM's OpenAI server: one token
per SSE chunk, `data: [DONE]` at the end, `usage` with `prompt_tokens_details.cached_tokens`,
and errors as `{"error": {"message", "type", "param", "code"}}` with the HTTP status as `code`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal
from collections.abc import Mapping

import orjson

from ..core.errors import BadRequest
from ..core.request import decode_body, parse_request

Kind = Literal["completions", "chat", "responses"]

#: vLLM's (and OpenAI's) default `max_tokens` for /v1/completions
DEFAULT_COMPLETION_MAX_TOKENS = 16
#: appended to a rendered conversation, like a chat template's generation prompt
GENERATION_PROMPT = "<|assistant|>"

DONE = b"data: [DONE]\n\n"

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "TooManyRequestsError",
                500: "InternalServerError", 503: "ServiceUnavailableError"}


@dataclass(slots=True)
class SimApiRequest:
    """A validated completion, chat or Responses API request, ready for the engine."""

    kind: Kind
    model: str
    prompt_text: str
    prompt_token_ids: list[int] | None
    max_tokens: int | None
    stream: bool
    include_usage: bool
    continuous_usage: bool
    ignore_eos: bool
    #: the decoded request body (the Responses API echoes some of its fields)
    body: dict[str, Any]


def error_body(status: int, message: str, *, param: str | None = None,
               err_type: str | None = None) -> bytes:
    """vLLM's error envelope; `code` is the HTTP status like vLLM's ErrorResponse."""
    return orjson.dumps({"error": {
        "message": message, "type": err_type or _ERROR_TYPES.get(status, "Error"),
        "param": param, "code": status}})


def bool_field(body: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """A boolean field (`default` when omitted or null); BadRequest naming it otherwise."""
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean", param=name)
    return value


def parse_sim_request(kind: Kind, raw: bytes | Mapping[str, Any]) -> SimApiRequest:
    """Validate a body; BadRequest (HTTP 400) names the faulty field."""
    body = decode_body(raw)
    req = parse_request(kind, body, request_id="-")
    n = body.get("n", 1)
    if n not in (None, 1):
        raise BadRequest("the simulator serves one choice per request ('n' must be 1)", param="n")
    ids: list[int] | None = None
    text = req.prefix_text
    if kind == "completions":
        prompt = body["prompt"]
        if isinstance(prompt, list):
            if len(prompt) == 1 and isinstance(prompt[0], (str, list)):
                prompt = prompt[0]
            elif prompt and all(isinstance(p, str) for p in prompt):
                raise BadRequest("batched prompts are not supported by the simulator; "
                                 "send one prompt per request", param="prompt")
        if isinstance(prompt, list):
            if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                     for t in prompt):
                raise BadRequest("'prompt' must be a string or a list of token ids",
                                 param="prompt")
            ids = list(prompt)
        elif isinstance(prompt, str):
            text = prompt
        if bool_field(body, "echo"):
            raise BadRequest("'echo' is not supported by the simulator", param="echo")
    else:   # chat, responses: a conversation rendered like a chat template
        if text and not text[-1].isspace():   # a Responses API `input` string
            text += "\n"
        text = text + GENERATION_PROMPT
    if kind == "responses":   # always ends with its usage; no stream_options
        return SimApiRequest(kind=kind, model=req.model, prompt_text=text,
                             prompt_token_ids=None, max_tokens=req.max_tokens,
                             stream=req.stream, include_usage=True, continuous_usage=False,
                             ignore_eos=bool_field(body, "ignore_eos"), body=body)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    opts = opts or {}
    include_usage = bool_field(opts, "include_usage")
    continuous = bool_field(opts, "continuous_usage_stats")
    if opts and not req.stream:
        raise BadRequest("'stream_options' is only allowed when 'stream' is true",
                         param="stream_options")
    max_tokens = req.max_tokens
    if max_tokens is None and kind == "completions" and "max_tokens" not in body:
        max_tokens = DEFAULT_COMPLETION_MAX_TOKENS
    return SimApiRequest(kind=kind, model=req.model, prompt_text=text, prompt_token_ids=ids,
                         max_tokens=max_tokens, stream=req.stream, include_usage=include_usage,
                         continuous_usage=continuous, ignore_eos=bool_field(body, "ignore_eos"),
                         body=body)


def check_context(limit: int, prompt_tokens: int, max_tokens: int | None) -> int:
    """The request's max_tokens (None: what the context leaves), or vLLM's context-length
    BadRequest when the prompt and completion do not fit in `limit` tokens."""
    if max_tokens is None:
        max_tokens = limit - prompt_tokens
    if max_tokens < 1 or prompt_tokens + max_tokens > limit:
        raise BadRequest(f"This model's maximum context length is {limit} tokens. However, "
                         f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} "
                         f"in the messages, {max_tokens} in the completion). Please reduce the "
                         "length of the messages or completion.", param="max_tokens")
    return max_tokens


def usage_dict(prompt_tokens: int, completion_tokens: int,
               cached_tokens: int | None) -> dict[str, Any]:
    """The `usage` object, with vLLM's `prompt_tokens_details.cached_tokens` (None: without
    it, as vLLM answers unless started with `--enable-prompt-tokens-details`)."""
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens,
                             "total_tokens": prompt_tokens + completion_tokens,
                             "completion_tokens": completion_tokens}
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return usage


class ChunkWriter:
    """Formats the SSE chunks of one streamed response.

    The constant head of every chunk is serialized once, so a token costs one small JSON
    string encode and a byte join.
    """

    def __init__(self, kind: Kind, response_id: str, model: str, created: int | None = None,
                 *, include_usage: bool = False):
        self.kind = kind
        # vLLM serializes completion chunks with every field (so `"usage": null`), chat chunks
        # with the fields it set (`"usage": null` only when the client asked for usage)
        self._no_usage = b',"usage":null}\n\n' if kind == "completions" or include_usage \
            else b"}\n\n"
        created = int(time.time()) if created is None else created
        obj = "text_completion" if kind == "completions" else "chat.completion.chunk"
        self._head = (b'data: {"id":' + orjson.dumps(response_id) + b',"object":"' +
                      obj.encode() + b'","created":' + str(created).encode() +
                      b',"model":' + orjson.dumps(model) + b',"choices":[')
        if kind == "completions":
            self._tok_pre = b'{"index":0,"text":'
            self._tok_post = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]'
        else:
            self._tok_pre = b'{"index":0,"delta":{"content":'
            self._tok_post = b'},"logprobs":null,"finish_reason":null}]'

    def open(self) -> bytes:
        """What precedes the first token: for chat, the assistant role with empty content
        (as vLLM sends); nothing for completions."""
        if self.kind != "chat":
            return b""
        return (self._head + b'{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}]' + self._no_usage)

    def token(self, text: str, usage: dict[str, Any] | None = None) -> bytes:
        """One token's chunk (no finish reason yet)."""
        tail = self._no_usage if usage is None else \
            b',"usage":' + orjson.dumps(usage) + b"}\n\n"
        return self._head + self._tok_pre + orjson.dumps(text) + self._tok_post + tail

    def final(self, text: str, finish_reason: str, usage: dict[str, Any] | None = None) -> bytes:
        """The last token's chunk, carrying the finish reason."""
        if self.kind == "completions":
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": finish_reason, "stop_reason": None}
        else:
            delta = {"content": text} if text else {}
            choice = {"index": 0, "delta": delta, "logprobs": None,
                      "finish_reason": finish_reason, "stop_reason": None}
        tail = self._no_usage if usage is None else \
            b',"usage":' + orjson.dumps(usage) + b"}\n\n"
        return self._head + orjson.dumps(choice) + b"]" + tail

    def usage(self, usage: dict[str, Any]) -> bytes:
        """The closing usage chunk of `stream_options.include_usage`: no choices."""
        return self._head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"

    def close(self, usage: dict[str, Any] | None) -> bytes:
        """The end of the stream: the usage chunk (when asked for), then `data: [DONE]`."""
        return (b"" if usage is None else self.usage(usage)) + DONE


def full_response(kind: Kind, response_id: str, model: str, text: str, finish_reason: str,
                  usage: dict[str, Any], created: int | None = None) -> bytes:
    """A non-streamed completion or chat completion body."""
    created = int(time.time()) if created is None else created
    if kind == "completions":
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None,
                                  "finish_reason": finish_reason, "stop_reason": None,
                                  "prompt_logprobs": None}
        obj = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text,
                                          "tool_calls": []},
                  "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        obj = "chat.completion"
    return orjson.dumps({"id": response_id, "object": obj, "created": created, "model": model,
                         "choices": [choice], "usage": usage})


def model_card(model_id: str, root: str, parent: str | None, max_model_len: int | None,
               created: int) -> dict[str, Any]:
    """One `/v1/models` entry as vLLM lists a base model or a LoRA adapter."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "vllm",
            "root": root, "parent": parent, "max_model_len": max_model_len,
            "permission": [{"id": f"modelperm-{model_id}", "object": "model_permission",
                            "created": created, "allow_create_engine": False,
                            "allow_sampling": True, "allow_logprobs": True,
                            "allow_search_indices": False, "allow_view": True,
                            "allow_fine_tuning": False, "organization": "*", "group": None,
                            "is_blocking": False}]}
