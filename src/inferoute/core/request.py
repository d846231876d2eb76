"""The inference request as the core sees it, parsed from an OpenAI-style body.

`parse_request` accepts the bodies of `/v1/completions`, `/v1/chat/completions` and
`/v1/responses` and builds `InferenceRequest`, including `prefix_text`: a deterministic
rendering of the prompt (the same body always yields the same text, and a conversation that
grows by appending messages yields a text that grows by appending) which the prefix-cache
scorers hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import orjson

from .errors import BadRequest

__all__ = ["API_PATHS", "ApiKind", "CHARS_PER_TOKEN", "decode_body", "InferenceRequest",
           "parse_request"]

ApiKind = Literal["completions", "chat", "responses"]

API_PATHS: dict[str, ApiKind] = {
    "/v1/completions": "completions",
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
}

#: Characters per token used to estimate prompt tokens when no tokenizer is configured.
CHARS_PER_TOKEN = 4
#: nesting levels of a body the gateway accepts (what orjson can write back; the body's own
#: object is one)
MAX_DEPTH = 254


@dataclass(slots=True)
class InferenceRequest:
    """One inference request, immutable in what the client sent, mutable in routing state.

    `model` is what the client asked for; `target_model` is what the upstream will receive
    (equal unless a routing rule rewrote it); `lora_adapter` is set when the target model is
    an adapter served by a base model's pool.
    """

    request_id: str
    api: ApiKind
    model: str
    body: dict[str, Any]
    headers: Mapping[str, str]
    prefix_text: str
    stream: bool = False
    max_tokens: int | None = None
    arrival_time: float = 0.0
    body_size: int = 0
    target_model: str = ""
    lora_adapter: str | None = None
    priority: int = 0
    objective: str | None = None
    fairness_id: str = "default"
    tenant: str | None = None
    token_ids: list[int] | None = None
    #: the prefix scorer's expected cache hit ratio on the chosen endpoint (None: no prefix
    #: scorer ran), exported by the shells
    prefix_cache_hit_ratio: float | None = None
    #: free-form annotations plugins and shells attach (e.g. semantic category)
    attributes: dict[str, Any] = field(default_factory=dict)
    #: the prompt's chained block hashes by (target model, block size in characters), hashed
    #: once per request and shared by every prefix scorer and hook (`blockhash.request_keys`)
    block_hash_cache: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False,
                                                               compare=False)

    def __post_init__(self) -> None:
        if not self.target_model:
            self.target_model = self.model

    @property
    def prompt_tokens_estimate(self) -> int:
        """Prompt length in tokens: exact when token ids are known, else chars / 4."""
        if self.token_ids is not None:
            return len(self.token_ids)
        return max(1, len(self.prefix_text) // CHARS_PER_TOKEN)

    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header by lower-case name."""
        return self.headers.get(name, default)


def _content_text(content: Any, where: str) -> str:
    """Text of a chat message content: a string, or a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                parts.append(part)
                continue
            if not isinstance(part, dict):
                raise BadRequest(f"{where}[{i}] must be an object", param=where)
            ptype = part.get("type")
            if ptype in ("text", "input_text", "output_text"):
                text = part.get("text")
                if not isinstance(text, str):
                    raise BadRequest(f"{where}[{i}].text must be a string", param=where)
                parts.append(text)
            elif ptype in ("image_url", "input_image"):
                url = part.get("image_url")
                if isinstance(url, dict):
                    url = url.get("url")
                parts.append(f"<image:{url}>")
            else:
                # Unknown part kinds still contribute deterministically to the prefix.
                parts.append(orjson.dumps(part, option=orjson.OPT_SORT_KEYS).decode())
        return "\n".join(parts)
    raise BadRequest(f"{where} must be a string or a list of content parts", param=where)


def _render_messages(messages: Any, param: str) -> str:
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"'{param}' must be a non-empty list of messages", param=param)
    out: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise BadRequest(f"{param}[{i}] must be an object", param=param)
        role = msg.get("role", "user" if param == "input" else None)
        if not isinstance(role, str):
            raise BadRequest(f"{param}[{i}].role is required", param=param)
        text = _content_text(msg.get("content"), f"{param}[{i}].content")
        if msg.get("tool_calls"):
            text += orjson.dumps(msg["tool_calls"], option=orjson.OPT_SORT_KEYS).decode()
        out.append(f"<|{role}|>\n{text}\n")
    return "".join(out)


def _render_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return " ".join(str(p) for p in prompt)
    raise BadRequest("'prompt' must be a string, a list of strings or a list of token ids",
                      param="prompt")


def positive_int(body: Mapping[str, Any], *names: str) -> int | None:
    """The first of `names` present in `body`, checked to be a positive integer (or None)."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"'{name}' must be a positive integer", param=name)
        return value
    return None


def _check_depth(body: dict[str, Any], raw: bytes | str | None) -> None:
    """BadRequest when `body` nests deeper than orjson can write back (`MAX_DEPTH`).

    The gateway re-serialises parts of a body (tool calls, unknown content parts, the whole
    body with admission or tenants on); a body it cannot write is the client's error, found
    here rather than as a TypeError later. Counting brackets in the raw text first keeps the
    common case to two C-speed scans.
    """
    if raw is not None:
        brackets = raw.count(b"[") + raw.count(b"{") if isinstance(raw, bytes) else \
            raw.count("[") + raw.count("{")
        if brackets <= MAX_DEPTH:
            return
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise BadRequest(f"request body is nested too deeply (at most {MAX_DEPTH} "
                         "levels)", code="nested_too_deeply") from None


def decode_body(raw: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """Parse a JSON object body, raising BadRequest for anything else (including nesting
    too deep to be written back)."""
    if isinstance(raw, Mapping):
        body = dict(raw)
        _check_depth(body, None)
        return body
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    _check_depth(body, raw)
    return body


def _number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            integer: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or v <= hi
    return ok


def _string_list(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))


#: sampling fields checked at the gateway: (what the value must be, test). The ranges are the
#: ones vLLM enforces (OpenAI's are narrower for some); null always passes (the default).
SAMPLING_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "temperature": ("a number >= 0", _number(0)),
    "top_p": ("a number in (0, 1]", _number(0, 1, lo_open=True)),
    "n": ("an integer >= 1", _number(1, integer=True)),
    "best_of": ("an integer >= 1", _number(1, integer=True)),
    "presence_penalty": ("a number in [-2, 2]", _number(-2, 2)),
    "frequency_penalty": ("a number in [-2, 2]", _number(-2, 2)),
    "repetition_penalty": ("a number > 0", _number(0, lo_open=True)),
    "top_k": ("an integer", _number(integer=True)),
    "min_p": ("a number in [0, 1]", _number(0, 1)),
    "seed": ("an integer", _number(integer=True)),
    "stop": ("a string or a list of strings", _string_list),
    "logprobs": ("a boolean or an integer >= 0",
                 lambda v: isinstance(v, bool) or _number(0, integer=True)(v)),
    "top_logprobs": ("an integer >= 0", _number(0, integer=True)),
    "user": ("a string", lambda v: isinstance(v, str)),
    "stream_options": ("an object", lambda v: isinstance(v, dict)),
    "logit_bias": ("an object", lambda v: isinstance(v, dict)),
}


def _check_sampling(body: Mapping[str, Any]) -> None:
    """BadRequest naming the first sampling field of the wrong type or out of range."""
    for name, (what, ok) in SAMPLING_FIELDS.items():
        value = body.get(name)
        if value is not None and not ok(value):
            raise BadRequest(f"'{name}' must be {what}", param=name)


def parse_request(api: ApiKind, raw: bytes | str | Mapping[str, Any],
                  headers: Mapping[str, str] | None = None, *, request_id: str,
                  arrival_time: float = 0.0) -> InferenceRequest:
    """Build an InferenceRequest from a request body; BadRequest names the faulty field.

    `headers` must have lower-case names.
    """
    body = decode_body(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    if api == "completions":
        if "prompt" not in body:
            raise BadRequest("'prompt' is required", param="prompt")
        text = _render_prompt(body["prompt"])
        max_tokens = positive_int(body, "max_tokens")
    elif api == "chat":
        if "messages" not in body:
            raise BadRequest("'messages' is required", param="messages")
        text = _render_messages(body["messages"], "messages")
        max_tokens = positive_int(body, "max_completion_tokens", "max_tokens")
    elif api == "responses":
        if "input" not in body:
            raise BadRequest("'input' is required", param="input")
        inp = body["input"]
        text = inp if isinstance(inp, str) else _render_messages(inp, "input")
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            text = f"<|system|>\n{instructions}\n" + text
        max_tokens = positive_int(body, "max_output_tokens")
    else:  # pragma: no cover - callers pass an ApiKind
        raise BadRequest(f"unsupported API {api!r}")
    _check_sampling(body)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    hdrs = dict(headers or {})
    size = len(raw) if isinstance(raw, (bytes, str)) else 0
    return InferenceRequest(request_id=request_id, api=api, model=model, body=body,
                            headers=hdrs, prefix_text=text, stream=stream,
                            max_tokens=max_tokens, arrival_time=arrival_time, body_size=size)
