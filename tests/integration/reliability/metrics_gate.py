"""A pass-through HTTP proxy in front of one model server whose `/metrics` can be switched off.

    python metrics_gate.py --port P --target http://127.0.0.1:Q

Everything is relayed to the target as it arrives (streams included). `POST /gate
{"metrics": false}` makes `/metrics` hang without answering (a replica whose metrics go stale
while it still serves requests); `{"metrics": true}` restores it. Used by the stale-metrics
fault test.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def build(target: str) -> web.Application:
    state = {"metrics": True}
    app = web.Application()

    async def gate(request: web.Request) -> web.Response:
        state.update({k: bool(v) for k, v in (await request.json()).items()
                      if k == "metrics"})
        return web.json_response(state)

    async def relay(request: web.Request) -> web.StreamResponse:
        if request.path == "/metrics" and not state["metrics"]:
            await asyncio.sleep(3600)  # never answers; the scraper times out
        session: aiohttp.ClientSession = app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        resp = web.StreamResponse()
        try:
            async with session.request(request.method, target + request.path_qs,
                                       data=await request.read(), headers=headers) as up:
                resp = web.StreamResponse(status=up.status, headers={
                    k: v for k, v in up.headers.items() if k.lower() not in _HOP})
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
        except ConnectionResetError:  # the client (a scraper that timed out) went away
            pass
        return resp

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app["session"].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/gate", gate)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    web.run_app(build(args.target.rstrip("/")), host="127.0.0.1", port=args.port,
                print=None, shutdown_timeout=1)


if __name__ == "__main__":
    main()
