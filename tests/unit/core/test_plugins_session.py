"""session-affinity-scorer: header, LRU bound, TTL, fallback and removal."""

from __future__ import annotations

import pytest

from inferoute.core.errors import ConfigError
from inferoute.core.scheduling.framework import ProfileResult, SchedulingResult
from inferoute.core.scheduling.registry import create_plugin


def scheduled(s, ctx, req, ep):
    s.on_scheduled(ctx, req, SchedulingResult("d", {"d": ProfileResult("d", [ep])}))


def test_session_sticks_to_its_endpoint(make_ep, make_req, new_ctx) -> None:
    s = create_plugin("session-affinity-scorer", "session", None)
    a, b = make_ep(0), make_ep(1)
    req = make_req(headers={"x-session-token": "abc"})
    assert list(s.score(new_ctx(0.0), req, [a, b])) == [0.0, 0.0]
    scheduled(s, new_ctx(0.0), req, b)
    assert list(s.score(new_ctx(1.0), req, [a, b])) == [0.0, 1.0]
    assert list(s.score(new_ctx(1.0), make_req(), [a, b])) == [0.0, 0.0]  # no header
    other = make_req(headers={"x-session-token": "zzz"})
    assert list(s.score(new_ctx(1.0), other, [a, b])) == [0.0, 0.0]


def test_served_fallback_moves_the_session(make_ep, make_req, new_ctx) -> None:
    s = create_plugin("session-affinity-scorer", "session", None)
    a, b = make_ep(0), make_ep(1)
    req = make_req(headers={"x-session-token": "abc"})
    scheduled(s, new_ctx(0.0), req, a)
    s.on_served(req, b, 0.1)
    assert list(s.score(new_ctx(1.0), req, [a, b])) == [0.0, 1.0]
    s.on_endpoint_removed(b)
    assert list(s.score(new_ctx(1.0), req, [a, b])) == [0.0, 0.0] and len(s) == 0


def test_ttl_and_capacity(make_ep, make_req, new_ctx) -> None:
    s = create_plugin("session-affinity-scorer", "session",
                      {"headerName": "X-Conversation", "ttl": "30s", "capacity": 2})
    a = make_ep(0)
    reqs = [make_req(headers={"x-conversation": f"s{i}"}) for i in range(3)]
    scheduled(s, new_ctx(0.0), reqs[0], a)
    assert list(s.score(new_ctx(29.0), reqs[0], [a])) == [1.0]
    assert list(s.score(new_ctx(31.0), reqs[0], [a])) == [0.0]  # expired
    for r in reqs:
        scheduled(s, new_ctx(40.0), r, a)
    assert len(s) == 2  # bounded: the least recently used session went
    assert list(s.score(new_ctx(41.0), reqs[0], [a])) == [0.0]
    assert list(s.score(new_ctx(41.0), reqs[2], [a])) == [1.0]


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="ttl"):
        create_plugin("session-affinity-scorer", "s", {"ttl": "soon"})
    with pytest.raises(ConfigError, match="capacity"):
        create_plugin("session-affinity-scorer", "s", {"capacity": 0})
