"""Endpoint parsing, pool membership and in-flight bookkeeping."""

from __future__ import annotations

import pytest

from inferoute.core.endpoint import Endpoint, Pool, parse_endpoint


@pytest.mark.parametrize("url, name, scheme", [
    ("http://10.1.2.3:8000", "10.1.2.3:8000", "http"),
    ("10.1.2.3:8000/", "10.1.2.3:8000", "http"),
    ("https://host.example:443", "host.example:443", "https"),
    ("http://[::1]:8000", "[::1]:8000", "http"),
])
def test_parse_endpoint(url, name, scheme) -> None:
    ep = parse_endpoint(url)
    assert ep.name == name and ep.scheme == scheme and ep.url == f"{scheme}://{name}"


@pytest.mark.parametrize("url", ["http://host", "host:0", "host:99999", "http://h:80/v1", ":80"])
def test_parse_endpoint_rejects(url) -> None:
    with pytest.raises(ValueError, match="must"):
        parse_endpoint(url)


def test_pool_keeps_state_on_readd() -> None:
    pool = Pool("m", [parse_endpoint("h:1"), parse_endpoint("h:2")])
    first = pool.get("h:1")
    assert first is not None
    first.on_dispatch(10)
    again = pool.add(Endpoint(host="h", port=1, labels={"zone": "a"}, role="decode"))
    assert again is first and first.in_flight_requests == 1 and first.role == "decode"
    assert pool.remove("h:1") is first and len(pool) == 1


def test_in_flight_never_goes_negative() -> None:
    ep = parse_endpoint("h:1")
    ep.on_dispatch(5)
    ep.on_finish(5)
    ep.on_finish(5)
    assert (ep.in_flight_requests, ep.in_flight_tokens) == (0, 0)


def test_staleness() -> None:
    ep = parse_endpoint("h:1")
    assert ep.is_stale(now=0.0, staleness=0.2)
    from inferoute.core.endpoint import EndpointMetrics
    ep.metrics = EndpointMetrics(scraped_at=10.0)
    assert not ep.is_stale(now=10.1, staleness=0.2)
    assert ep.is_stale(now=10.3, staleness=0.2)
