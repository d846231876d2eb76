"""A shutdown that a lost cancellation cannot hang: `cancel_tasks` cancels again, and
`PrefixShare`'s loops end once it is stopping, even when the redis client turns the
cancellation into an ordinary error (a read timeout racing the cancel) that the retry loop
would otherwise swallow. No sockets: the client is a stand-in."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import RedisError

from inferoute.aiotasks import cancel_tasks
from inferoute.datalayer.prefix_share import PrefixShare, SharedPrefixIndex


class SwallowingClient:
    """XREAD blocks; a cancel arriving during it surfaces as TimeoutError (an OSError)."""

    def __init__(self) -> None:
        self.reads = 0

    async def xread(self, *_a: object, **_kw: object) -> list[object]:
        self.reads += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise TimeoutError("Timeout reading from 127.0.0.1:6379") from None
        return []

    async def xadd(self, *_a: object, **_kw: object) -> None:
        return None

    async def zrem(self, *_a: object) -> None:
        return None

    async def delete(self, *_a: object) -> None:
        return None


async def test_stop_returns_although_the_client_swallows_the_cancel():
    client = SwallowingClient()
    share = PrefixShare(client, "m", SharedPrefixIndex(),  # type: ignore[arg-type]
                        retry_delay=0.01, flush_interval=0.01)
    await share.start()
    await asyncio.sleep(0.05)
    assert client.reads == 1
    await asyncio.wait_for(share.stop(), 3.0)
    assert share._tasks == [] and share.errors == 0  # the turned cancel was not "retried"


async def stubborn(swallow: int, log: list[str]) -> None:
    """A loop that survives its first `swallow` cancellations (all of them while `swallow` < 0)."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallow == 0 or log == ["give in"]:
                log.append("ended")
                raise
            swallow -= 1
            asyncio.current_task().uncancel()  # type: ignore[union-attr]


async def test_cancel_tasks_cancels_again_until_the_task_ends():
    log: list[str] = []
    task = asyncio.create_task(stubborn(2, log))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_tasks(task, None), 3.0)
    assert task.done() and log == ["ended"]


async def test_cancel_tasks_gives_up_at_its_deadline_and_says_so(caplog: pytest.LogCaptureFixture):
    log: list[str] = []
    task = asyncio.create_task(stubborn(-1, log), name="deaf")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="inferoute.tasks"):
        await cancel_tasks(task, timeout=0.2)
    assert not task.done() and "ignored cancellation: deaf" in caplog.text
    log.append("give in")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_tasks_collects_failures_without_raising():
    async def boom() -> None:
        raise ValueError("x")

    task = asyncio.create_task(boom())
    await asyncio.sleep(0)
    await cancel_tasks(task)  # no "exception was never retrieved", no raise
    assert isinstance(task.exception(), ValueError)


class Resp3Client:
    """XREAD answers in RESP3's shape, a map of stream -> entries."""

    async def xread(self, *_a: object, **_kw: object) -> dict[bytes, list[object]]:
        return {b"inferoute:prefix:m": [(b"1-0", {b"o": b"other", b"b": b"\x90"})]}


async def test_a_reply_in_resp3s_shape_is_a_redis_error():
    """Prefix sharing reads RESP2 replies; another shape raises a `RedisError`, which the read
    loop's guard counts, logs and retries, not an unpacking error that ends the read task."""
    share = PrefixShare(Resp3Client(), "m", SharedPrefixIndex())  # type: ignore[arg-type]
    with pytest.raises(RedisError, match="protocol=3"):
        await share.poll()
    assert share.applied == 0
