"""The dashboard's logins when tenants are on: a key posted once from a form buys a session
token, carried by an HttpOnly, SameSite=Strict cookie scoped to `/dashboard`.

A browser cannot put a bearer token on a page load, and a key in a URL ends up in logs and
history; so the page's form posts the key in the body and the answer sets a cookie holding a
random token (never the key). The server keeps, per token digest, the key and its tenant
(in memory only: the dashboard's chat box presents the key to the gateway's own, unchanged
key check). Sessions expire after `ttl` seconds and at most `capacity` are kept (the oldest
goes first).
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ...core.errors import Unauthorized
from ...tenants import KeyStore, Tenant

__all__ = ["COOKIE", "DashboardSessions", "Session"]

#: the cookie's name; its value is the token
COOKIE = "inferoute_dashboard"
#: the longest key the login form takes (a longer one is no key of ours)
MAX_KEY_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Session:
    """One login: the tenant, the key it presented (for the chat box) and its expiry."""

    tenant: Tenant
    key: str
    expires: float


def _digest(token: str) -> str:
    # looked up by digest: the dict's comparisons then leak nothing about a live token
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class DashboardSessions:
    """Bounded, expiring login sessions over a `KeyStore`; the clock is injected."""

    def __init__(self, store: KeyStore, clock: Callable[[], float], *,
                 ttl: float = 8 * 3600.0, capacity: int = 1024) -> None:
        if ttl <= 0 or capacity < 1:
            raise ValueError("ttl must be positive and capacity at least 1")
        self.store, self.clock, self.ttl, self.capacity = store, clock, ttl, capacity
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def login(self, key: str) -> str:
        """A new session's token for `key`; Unauthorized (401) when the key is not one of the
        store's."""
        key = key.strip()
        if len(key) > MAX_KEY_CHARS:
            raise Unauthorized("Incorrect API key provided")
        tenant = self.store.authenticate({"authorization": f"Bearer {key}"} if key else {})
        token = secrets.token_urlsafe(32)
        self._sessions[_digest(token)] = Session(tenant, key, self.clock() + self.ttl)
        while len(self._sessions) > self.capacity:
            self._sessions.popitem(last=False)
        return token

    def lookup(self, cookies: Mapping[str, str]) -> Session | None:
        """The live session of the request's cookie, or None (no cookie, unknown token or
        expired)."""
        token = cookies.get(COOKIE)
        if not token:
            return None
        digest = _digest(token)
        session = self._sessions.get(digest)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._sessions[digest]
            return None
        return session

    def logout(self, cookies: Mapping[str, str]) -> None:
        """Forget the request's session (nothing when it has none)."""
        token = cookies.get(COOKIE)
        if token:
            self._sessions.pop(_digest(token), None)
