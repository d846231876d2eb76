"""One simulated request-response exchange: submit to the engine, then relay its tokens.

Shared by the simulator's inference routes (/v1/completions, /v1/chat/completions,
/v1/responses): the token loop, injected faults and usage are the same, only the wire format
differs, and that lives in the writers of `openai_api` and `responses_api`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiohttp import web

from . import tokenizer
from .engine import SimRequest
from .openai_api import ChunkWriter, SimApiRequest, full_response, usage_dict
from .responses_api import ResponseEventWriter, ResponseShape, full_response_body
from .runner import EngineRunner, RequestHandle

#: response id prefixes, as vLLM names them
_ID_PREFIX = {"completions": "cmpl-", "chat": "chatcmpl-", "responses": "resp_"}


class StreamWriter(Protocol):
    """The SSE format of one streamed response."""

    def open(self) -> bytes: ...
    def token(self, text: str, usage: dict[str, Any] | None = None) -> bytes: ...
    def final(self, text: str, finish_reason: str,
              usage: dict[str, Any] | None = None) -> bytes: ...
    def close(self, usage: dict[str, Any] | None) -> bytes: ...


class Exchange:
    """One request-response exchange: submit after any injected delay, then relay the tokens."""

    def __init__(self, runner: EngineRunner, api: SimApiRequest, rid: str, key: str,
                 arrival: float, *, seed: int, drop_after: int | None,
                 token_details: bool = True) -> None:
        """`seed` seeds the output words; `drop_after` (an injected fault) cuts the connection
        after that many streamed tokens; `token_details` puts the cached tokens in usage."""
        self.runner = runner
        self.seed = seed
        self.api = api
        self.rid = rid
        self.key = key
        self.arrival = arrival
        self.drop_after = drop_after
        self.token_details = token_details
        self.response_id = _ID_PREFIX[api.kind] + rid
        self._words: list[str] = []

    def _text(self, start: int, n: int) -> list[str]:
        """Output words start..start+n-1, each with its leading space (none before the first
        token of a chat or Responses API answer)."""
        end = start + n
        if end > len(self._words):
            want = max(end, 2 * len(self._words), 16)
            self._words = tokenizer.output_words(self.seed, self.key, want)
        words = self._words[start:end]
        out = [" " + w for w in words]
        if start == 0 and out and self.api.kind != "completions":
            out[0] = words[0]
        return out

    def _usage(self, handle: RequestHandle, completion_tokens: int) -> dict[str, Any]:
        return usage_dict(handle.prompt_tokens, completion_tokens,
                          handle.cached_tokens if self.token_details else None)

    def _response_shape(self, max_tokens: int) -> ResponseShape:
        return ResponseShape(self.api.body, self.response_id, self.api.model, max_tokens)

    def _writer(self, max_tokens: int) -> StreamWriter:
        api = self.api
        if api.kind == "responses":
            return ResponseEventWriter(self._response_shape(max_tokens))
        return ChunkWriter(api.kind, self.response_id, api.model,
                           include_usage=api.include_usage or api.continuous_usage)

    async def _submit(self, sim: SimRequest, delay: float) -> RequestHandle:
        """The request reaches the engine `delay` after it arrived: the profile's front end is
        the real server's whole path to its engine, so this server's own handling so far
        (parsing, tokenizing) is a part of it, not more."""
        wait = self.arrival + delay - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        return self.runner.submit(sim, arrival=self.arrival)

    def _abort(self, handle: RequestHandle | None) -> None:
        if handle is not None and not handle.finished:
            self.runner.abort(handle.request_id)

    async def complete(self, request: web.Request, sim: SimRequest,
                       delay: float) -> web.StreamResponse:
        handle: RequestHandle | None = None
        try:
            handle = await self._submit(sim, delay)
            if self.drop_after is not None:
                await handle.next_outputs()   # the engine did some work, then the link dies
                self._abort(handle)
                _drop_connection(request)
                return web.Response(status=500)
            while not handle.finished:
                await handle.next_outputs()
        finally:
            self._abort(handle)
        text = "".join(self._text(0, handle.generated))
        usage = self._usage(handle, handle.generated)
        reason = handle.finish_reason or "stop"
        if self.api.kind == "responses":
            body = full_response_body(self._response_shape(sim.max_tokens), text, reason, usage)
        else:
            body = full_response(self.api.kind, self.response_id, self.api.model, text, reason,
                                 usage)
        return web.Response(body=body, content_type="application/json")

    async def stream(self, request: web.Request, sim: SimRequest,
                     delay: float) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        api = self.api
        writer = self._writer(sim.max_tokens)
        handle: RequestHandle | None = None
        sent = 0
        try:
            # submit first: an engine refusal still gets a proper 400, not a broken stream
            handle = await self._submit(sim, delay)
            await resp.prepare(request)
            opening = writer.open()
            if opening:
                await resp.write(opening)
            drop_at = -1 if self.drop_after is None else self.drop_after
            while True:
                outs = await handle.next_outputs()
                parts: list[bytes] = []
                for o in outs:
                    texts = self._text(sent, o.new_tokens)
                    last = len(texts) - 1 if o.finished else -1
                    for i, text in enumerate(texts):
                        sent += 1
                        usage = (self._usage(handle, sent)
                                 if api.continuous_usage else None)
                        if i == last:
                            parts.append(writer.final(text, o.finish_reason or "stop", usage))
                        else:
                            parts.append(writer.token(text, usage))
                    if o.finished and not texts:
                        usage = (self._usage(handle, sent)
                                 if api.continuous_usage else None)
                        parts.append(writer.final("", o.finish_reason or "stop", usage))
                if parts:
                    await resp.write(b"".join(parts))
                if 0 <= drop_at <= sent:
                    self._abort(handle)
                    _drop_connection(request)
                    return resp
                if handle.finished:
                    break
            await resp.write(writer.close(
                self._usage(handle, handle.generated)
                if api.include_usage else None))
            await resp.write_eof()
        except ConnectionResetError:
            pass   # the client went away; the engine request is aborted below
        finally:
            self._abort(handle)
        return resp


def _drop_connection(request: web.Request) -> None:
    """Injected fault: close the TCP connection without finishing the response."""
    transport = request.transport
    if transport is not None:
        transport.abort()
