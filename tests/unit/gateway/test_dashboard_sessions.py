"""The dashboard's sign-in sessions: a key buys a random token, tokens expire and are
bounded, a wrong key buys nothing (injected clock, no sockets)."""

from __future__ import annotations

import pytest

from inferoute.core.errors import Unauthorized
from inferoute.gateway.dashboard.sessions import (
    COOKIE,
    MAX_KEY_CHARS,
    DashboardSessions,
)
from inferoute.tenants import KeyStore, TenantSpec

KEY = "sk-ops-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _sessions(clock: Clock, **kw: float) -> DashboardSessions:
    store = KeyStore.from_specs([TenantSpec(name="ops", key=KEY),
                                 TenantSpec(name="dev", key="sk-dev-0123456789")], env={})
    return DashboardSessions(store, clock, **kw)  # type: ignore[arg-type]


def test_a_key_buys_a_token_that_is_not_the_key() -> None:
    sessions = _sessions(Clock())
    token = sessions.login(f"  {KEY} ")
    assert KEY not in token and len(token) >= 32
    session = sessions.lookup({COOKIE: token})
    assert session is not None and session.tenant.name == "ops" and session.key == KEY
    assert sessions.login(KEY) != token  # each sign-in its own token
    assert sessions.lookup({}) is None and sessions.lookup({COOKIE: token + "x"}) is None
    assert sessions.lookup({"other": token}) is None


@pytest.mark.parametrize("key", ["", "   ", "sk-wrong-000000", KEY + "x",
                                 KEY + "x" * MAX_KEY_CHARS])
def test_a_wrong_key_buys_nothing(key: str) -> None:
    sessions = _sessions(Clock())
    with pytest.raises(Unauthorized):
        sessions.login(key)
    assert len(sessions) == 0


def test_sessions_expire_and_end_on_logout() -> None:
    clock = Clock()
    sessions = _sessions(clock, ttl=60.0)
    token, other = sessions.login(KEY), sessions.login("sk-dev-0123456789")
    clock.now += 59.9
    assert sessions.lookup({COOKIE: token}) is not None
    sessions.logout({COOKIE: other})
    assert sessions.lookup({COOKIE: other}) is None
    sessions.logout({})  # no session: nothing to do
    clock.now += 0.1
    assert sessions.lookup({COOKIE: token}) is None and len(sessions) == 0


def test_sessions_are_bounded_oldest_first() -> None:
    sessions = _sessions(Clock(), capacity=3)
    tokens = [sessions.login(KEY) for _ in range(5)]
    assert len(sessions) == 3
    assert [sessions.lookup({COOKIE: t}) is not None for t in tokens] == [False, False, True,
                                                                          True, True]
    with pytest.raises(ValueError):
        _sessions(Clock(), capacity=0)
