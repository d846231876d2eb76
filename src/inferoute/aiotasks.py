"""Small asyncio helpers the shells share."""

from __future__ import annotations

import asyncio


async def cancel_tasks(*tasks: asyncio.Task | None) -> None:
    """Cancel background tasks and wait until they have finished.

    Their cancellation or failure is not re-raised: the caller is shutting them down. None
    entries are skipped, so `await cancel_tasks(self._task)` works whether it started or not.
    """
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    await asyncio.gather(*live, return_exceptions=True)
