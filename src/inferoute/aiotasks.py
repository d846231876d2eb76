"""Small asyncio helpers the shells share."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Coroutine

log = logging.getLogger("inferoute.tasks")


async def cancel_tasks(*tasks: asyncio.Task | None, timeout: float = 5.0) -> None:
    """Cancel background tasks and wait until they have finished, at most `timeout` seconds.

    Their cancellation or failure is not re-raised: the caller is shutting them down. None
    entries are skipped, so `await cancel_tasks(self._task)` works whether it started or not.
    A task still running after a short wait is cancelled again: a library can turn a
    cancellation into an ordinary error (a read timeout racing the cancel) that a retry loop
    then swallows, and one lost cancel must not hang a shutdown. What is still running at the
    deadline is logged and left behind.
    """
    pending = {t for t in tasks if t is not None}
    deadline = asyncio.get_running_loop().time() + timeout
    while pending:
        for t in pending:
            t.cancel()
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.warning("%d background task(s) ignored cancellation: %s", len(pending),
                        ", ".join(sorted(t.get_name() for t in pending)))
            return
        done, pending = await asyncio.wait(pending, timeout=min(left, 0.5))
        for t in done:  # retrieved, so asyncio does not warn that it never was
            if not t.cancelled():
                t.exception()


def stop_event_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (where the loop supports signal handlers): what a
    server's main coroutine awaits before shutting down cleanly. Call from the running loop."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    return stop


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` on uvloop when installed, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Unix
        return asyncio.run(coro)
    return uvloop.run(coro)
