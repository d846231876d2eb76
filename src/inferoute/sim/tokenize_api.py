"""vLLM's tokenizer and render endpoints on the simulator: bodies in, vLLM-shaped answers out.

Pure functions, no I/O. Routers that place requests by their token ids (vllm-router's
cache-aware policy among them) ask the model server for them:

- `POST /tokenize`: completion form `{model, prompt, add_special_tokens}` or chat form
  `{model, messages, add_generation_prompt}` -> `{count, max_model_len, tokens, token_strs}`
  (`token_strs` only with `return_token_strs`);
- `POST /detokenize`: `{model, tokens}` -> `{prompt}`;
- `POST /v1/completions/render`: a completion request -> a list of GenerateRequest-shaped
  objects, one per prompt (`request_id`, `token_ids`, `sampling_params`, `model`, `stream`);
- `POST /v1/chat/completions/render`: a chat request -> one such object.

The ids are exactly those the simulator's engine caches for the same request (same rendering of
a conversation, same word tokenizer), so a router's prefix tree matches the replica's KV cache.
The simulator's tokenizer has no special tokens: `add_special_tokens` is accepted and adds none.
`model` may be omitted, as on vLLM. Every bad body raises BadRequest (HTTP 400).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from ..core.errors import BadRequest
from ..core.request import decode_body, parse_request, positive_int
from . import tokenizer
from .openai_api import (DEFAULT_COMPLETION_MAX_TOKENS, GENERATION_PROMPT, bool_field,
                         check_context)

#: largest id a detokenize request may name (vLLM: a signed 64-bit int)
MAX_TOKEN_ID = 2**63 - 1
#: vLLM's SamplingParams.output_kind values
_OUTPUT_DELTA, _OUTPUT_FINAL_ONLY = 1, 2


def request_model(body: Mapping[str, Any]) -> str | None:
    """The body's `model` (None when omitted); BadRequest for a non-string."""
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise BadRequest("'model' must be a non-empty string", param="model")
    return model


def _token_ids(value: Any, param: str) -> list[int]:
    if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_TOKEN_ID
            for t in value):
        raise BadRequest(f"'{param}' must be a list of non-negative integer token ids",
                         param=param)
    return value


def _chat_text(body: Mapping[str, Any], *, generation_prompt: bool) -> str:
    """A conversation rendered as the simulator's chat completions render it."""
    req = parse_request("chat", {**body, "model": "-"}, request_id="-")
    return req.prefix_text + (GENERATION_PROMPT if generation_prompt else "")


def tokenize(raw: bytes | Mapping[str, Any], max_model_len: int) -> tuple[str | None,
                                                                          dict[str, Any]]:
    """`POST /tokenize`: the request's model and vLLM's TokenizeResponse."""
    body = decode_body(raw)
    model = request_model(body)
    if ("prompt" in body) == ("messages" in body):
        raise BadRequest("give either 'prompt' (completion form) or 'messages' (chat form)",
                         param="prompt")
    bool_field(body, "add_special_tokens", "prompt" in body)   # no special tokens to add
    if "prompt" in body:
        if not isinstance(body["prompt"], str):
            raise BadRequest("'prompt' must be a string", param="prompt")
        text = body["prompt"]
    else:
        gen = bool_field(body, "add_generation_prompt", True)
        if gen and bool_field(body, "continue_final_message", False):
            raise BadRequest("Cannot set both `continue_final_message` and "
                             "`add_generation_prompt` to True.",
                             param="continue_final_message")
        text = _chat_text(body, generation_prompt=gen)
    ids = tokenizer.encode(text)
    strs = text.split() if bool_field(body, "return_token_strs", False) else None
    return model, {"count": len(ids), "max_model_len": max_model_len, "tokens": ids,
                   "token_strs": strs}


def detokenize(raw: bytes | Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """`POST /detokenize`: the request's model and `{prompt}` (unknown ids are dropped, see
    `tokenizer.decode`)."""
    body = decode_body(raw)
    model = request_model(body)
    if "tokens" not in body:
        raise BadRequest("'tokens' is required", param="tokens")
    return model, {"prompt": tokenizer.decode(_token_ids(body["tokens"], "tokens"))}


def _completion_prompts(prompt: Any) -> list[list[int]]:
    """The token ids of each prompt of a completion request (text, ids, or a list of either)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise BadRequest("'prompt' must be a string, a list of token ids, or a non-empty list "
                         "of either", param="prompt")
    out = [tokenizer.encode(p) if isinstance(p, str) else _token_ids(p, "prompt")
           for p in prompt]
    if any(not ids for ids in out):
        raise BadRequest("The prompt must contain at least one token.", param="prompt")
    return out


def sampling_params(body: Mapping[str, Any], max_tokens: int, *,
                    stream: bool) -> dict[str, Any]:
    """The request's sampling fields under vLLM's SamplingParams names and defaults."""
    return {"n": body.get("n") or 1,
            "presence_penalty": body.get("presence_penalty") or 0.0,
            "frequency_penalty": body.get("frequency_penalty") or 0.0,
            "repetition_penalty": body.get("repetition_penalty") or 1.0,
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0), "top_k": body.get("top_k") or 0,
            "min_p": body.get("min_p") or 0.0, "seed": body.get("seed"),
            "stop": body.get("stop") or [], "stop_token_ids": body.get("stop_token_ids") or [],
            "ignore_eos": bool_field(body, "ignore_eos", False), "max_tokens": max_tokens,
            "min_tokens": body.get("min_tokens") or 0, "logprobs": body.get("logprobs"),
            "skip_special_tokens": True,
            "output_kind": _OUTPUT_DELTA if stream else _OUTPUT_FINAL_ONLY}


def _generate_request(body: Mapping[str, Any], request_id: str, ids: list[int],
                      max_tokens: int | None, max_model_len: int) -> dict[str, Any]:
    stream = bool_field(body, "stream", False)
    max_tokens = check_context(max_model_len, len(ids), max_tokens)
    return {"request_id": request_id, "token_ids": ids,
            "sampling_params": sampling_params(body, max_tokens, stream=stream),
            "model": body.get("model"), "stream": stream,
            "stream_options": body.get("stream_options") if stream else None,
            "cache_salt": body.get("cache_salt"), "priority": body.get("priority") or 0}


def render_completion(raw: bytes | Mapping[str, Any], request_id: str,
                      max_model_len: int) -> tuple[str | None, list[dict[str, Any]]]:
    """`POST /v1/completions/render`: one GenerateRequest per prompt, ids `cmpl-<id>` (or
    `cmpl-<id>-<i>` for several prompts), as vLLM numbers them."""
    body = decode_body(raw)
    model = request_model(body)
    if "prompt" not in body:
        raise BadRequest("'prompt' is required", param="prompt")
    prompts = _completion_prompts(body["prompt"])
    max_tokens = positive_int(body, "max_tokens") if "max_tokens" in body \
        else DEFAULT_COMPLETION_MAX_TOKENS
    base = f"cmpl-{request_id}"
    return model, [_generate_request(body, base if len(prompts) == 1 else f"{base}-{i}", ids,
                                     max_tokens, max_model_len)
                   for i, ids in enumerate(prompts)]


def render_chat(raw: bytes | Mapping[str, Any], request_id: str,
                max_model_len: int) -> tuple[str | None, dict[str, Any]]:
    """`POST /v1/chat/completions/render`: the conversation's GenerateRequest."""
    body = decode_body(raw)
    model = request_model(body)
    if "messages" not in body:
        raise BadRequest("'messages' is required", param="messages")
    text = _chat_text(body, generation_prompt=bool_field(body, "add_generation_prompt", True))
    ids = tokenizer.encode(text)
    max_tokens = positive_int(body, "max_completion_tokens", "max_tokens")
    return model, _generate_request(body, f"chatcmpl-{request_id}", ids, max_tokens,
                                    max_model_len)
