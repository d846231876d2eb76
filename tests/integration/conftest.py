"""Fixtures shared by the integration test folders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inferoute.procs import start_redis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free 127.0.0.1 port (skipped, with the reason, when the binary
    is missing: `apt-get install -y redis-server`)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    if server is None:
        pytest.skip("redis-server is not on PATH (install it: apt-get install -y redis-server)")
    with server:
        yield server.url
