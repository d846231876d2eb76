"""Small asyncio helpers the shells share."""

from __future__ import annotations

import asyncio
import signal


async def cancel_tasks(*tasks: asyncio.Task | None) -> None:
    """Cancel background tasks and wait until they have finished.

    Their cancellation or failure is not re-raised: the caller is shutting them down. None
    entries are skipped, so `await cancel_tasks(self._task)` works whether it started or not.
    """
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    await asyncio.gather(*live, return_exceptions=True)


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
