"""A minimal, fast OpenAI-compatible model server for gateway tests and `inferoute overhead`.

Not a simulator (see `inferoute sim` for that): it answers at once (or with a fixed delay per
token), generates `max_tokens` words, reports `usage`, and serves vLLM-format /metrics built
from its own counters, so the gateway's scrapers, readiness and usage accounting all work.

    python -m inferoute.tools.standin --port 8001 [--model m] [--token-delay 0.01]
                                         [--fail-status 500] [--die-after N] [--waiting N]

Extra metrics: `standin_requests_total`, `standin_cancelled_total` (clients that went away
mid-response).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from aiohttp import web


_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
            7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0, "+Inf")


def _histograms(labels: str) -> str:
    """Histogram families a real vLLM page carries, so pages have a realistic size (~20 kB)."""
    out = []
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                 "e2e_request_latency_seconds", "request_queue_time_seconds",
                 "request_prefill_time_seconds", "request_decode_time_seconds",
                 "request_prompt_tokens", "request_generation_tokens"):
        full = f"vllm:{name}"
        out.append(f"# HELP {full} Histogram of {name}.\n# TYPE {full} histogram\n")
        out.extend(f'{full}_bucket{{{labels},le="{le}"}} 0.0\n' for le in _BUCKETS)
        out.append(f"{full}_sum{{{labels}}} 0.0\n{full}_count{{{labels}}} 0.0\n")
    return "".join(out)


class StandIn:
    def __init__(self, model: str, *, name: str = "", token_delay: float = 0.0,
                 fail_status: int | None = None, die_after: int | None = None,
                 waiting: int = 0, listed: bool = True) -> None:
        self.model = model
        #: /v1/models lists `model` (else nothing: the stand-in answers any model name)
        self.listed = listed
        self.name = name
        self.token_delay = token_delay
        self.fail_status = fail_status
        self.die_after = die_after
        #: reported as vllm:num_requests_waiting (settable: POST /admin/waiting {"waiting": n})
        self.waiting = waiting
        self.running = 0
        self.requests = 0
        self.cancelled = 0
        self._histograms = _histograms(f'engine="0",model_name="{model}"')

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/responses", self.generate)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/admin/waiting", self.set_waiting)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def set_waiting(self, request: web.Request) -> web.Response:
        self.waiting = int((await request.json())["waiting"])
        return web.json_response({"waiting": self.waiting})

    async def _responses(self, request: web.Request, body: dict[str, Any], n: int,
                         usage: dict[str, int], rid: str) -> web.StreamResponse:
        """/v1/responses: the Responses API shape, streamed as typed events or whole."""
        rusage = {"input_tokens": usage["prompt_tokens"], "output_tokens": n,
                  "total_tokens": usage["total_tokens"]}
        text = " ".join(f"w{i}" for i in range(n))
        done = {"id": rid, "object": "response", "status": "completed",
                "model": body.get("model"), "usage": rusage,
                "output": [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": text}]}]}
        if not body.get("stream"):
            return web.json_response(done)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            delta = {"type": "response.output_text.delta", "delta": f"w{i} "}
            await resp.write(b"event: response.output_text.delta\ndata: "
                             + orjson.dumps(delta) + b"\n\n")
        await resp.write(b"event: response.completed\ndata: " + orjson.dumps(
            {"type": "response.completed", "response": done}) + b"\n\n")
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        # it answers whatever model is asked for: it lists one only when given one to serve
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "owned_by": "standin"}] if self.listed
            else []})

    async def metrics(self, request: web.Request) -> web.Response:
        labels = f'engine="0",model_name="{self.model}"'
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {float(self.running)}\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} {float(self.waiting)}\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} {min(1.0, self.running / 100):.4f}\n"
            "# TYPE vllm:cache_config_info gauge\n"
            'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="4096"} 1.0\n'
            "# TYPE standin_requests counter\n"
            f"standin_requests_total {float(self.requests)}\n"
            "# TYPE standin_cancelled counter\n"
            f"standin_cancelled_total {float(self.cancelled)}\n" + self._histograms)
        return web.Response(text=text, content_type="text/plain")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body: dict[str, Any] = orjson.loads(await request.read())
        if self.fail_status:
            return web.json_response({"error": {"message": "injected failure",
                                                "type": "server_error"}},
                                     status=self.fail_status)
        api = request.path.rsplit("/", 1)[-1]
        n = int(body.get("max_tokens") or body.get("max_completion_tokens")
                or body.get("max_output_tokens") or 16)
        prompt = body.get("prompt") or body.get("messages") or body.get("input") or ""
        usage = {"prompt_tokens": max(1, len(orjson.dumps(prompt)) // 4),
                 "completion_tokens": n}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        rid = f"cmpl-{self.requests}"
        created = int(time.time())
        self.running += 1
        try:
            if api == "responses":
                return await self._responses(request, body, n, usage, rid)
            if not body.get("stream"):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay * n)
                text = " ".join(f"w{i}" for i in range(n))
                if api == "completions" and "chat" not in request.path:
                    choice: dict[str, Any] = {"index": 0, "text": text,
                                              "finish_reason": "length"}
                    obj = "text_completion"
                else:
                    choice = {"index": 0, "finish_reason": "length",
                              "message": {"role": "assistant", "content": text}}
                    obj = "chat.completion"
                return web.json_response({
                    "id": rid, "object": obj, "created": created, "model": body.get("model"),
                    "system_fingerprint": self.name, "choices": [choice], "usage": usage})
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
            await resp.prepare(request)
            chat = "chat" in request.path
            for i in range(n):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                if self.die_after is not None and i == self.die_after:
                    # crash mid-stream: half an event, then the connection drops
                    await resp.write(b'data: {"id": "cut')
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                delta: dict[str, Any] = ({"content": f"w{i} "} if chat else {})
                choice = ({"index": 0, "delta": delta, "finish_reason": None} if chat
                          else {"index": 0, "text": f"w{i} ", "finish_reason": None})
                if i == n - 1:
                    choice["finish_reason"] = "length"
                chunk = {"id": rid, "object": "chat.completion.chunk" if chat
                         else "text_completion", "created": created,
                         "model": body.get("model"), "system_fingerprint": self.name,
                         "choices": [choice]}
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                final: dict[str, Any] = {
                    "id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": created, "model": body.get("model"), "choices": [], "usage": usage}
                await resp.write(b"data: " + orjson.dumps(final) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except ConnectionResetError:  # the client went away while we wrote to it
            self.cancelled += 1
            return web.Response(status=499)
        finally:
            self.running -= 1


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default=None,
                   help="the model /v1/models lists (default: none listed, any answered; "
                        "metrics say 'm')")
    p.add_argument("--name", default="", help="returned as system_fingerprint")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds per token")
    p.add_argument("--fail-status", type=int, default=None,
                   help="answer every generation request with this status")
    p.add_argument("--waiting", type=int, default=0,
                   help="waiting requests to report in /metrics (to fake saturation)")
    p.add_argument("--die-after", type=int, default=None,
                   help="streams drop the connection after this many tokens")
    args = p.parse_args(argv)
    server = StandIn(args.model or "m", listed=args.model is not None,
                     name=args.name or f"{args.host}:{args.port}",
                     token_delay=args.token_delay, fail_status=args.fail_status,
                     die_after=args.die_after, waiting=args.waiting)
    runner_kwargs: dict[str, Any] = {"access_log": None, "handler_cancellation": True,
                                     "print": None, "host": args.host, "port": args.port}
    try:
        import uvloop
        loop: Any = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    web.run_app(server.app(), loop=loop, **runner_kwargs)


if __name__ == "__main__":
    main()
