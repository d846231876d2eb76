"""Where a request goes when an attempt fails, and what an upstream's answer means (sans-I/O).

`RetryPolicy` holds the knobs (the serving config's `upstream` section); `AttemptPlan` is one
request's order of endpoints: the decision's targets (the picker's fallbacks), the other
candidates, then every other ready endpoint (stale metrics included), those on a failure streak
or backing off last; each is tried once, within the request's deadline (`requestTimeout`),
after a jittered exponential back-off (never before the first attempt). The attempt that starts
at or after the deadline, or has nothing after it, is the *last*: its answer is the client's.

`judge` reads an upstream's status line (and, for a 404, its first bytes): a 429 or 503 is
back-pressure (the replica is skipped for its Retry-After, 1 s without one, 30 s at most; not
a failure), another 5xx a failure, a 404 for the pool's own model a replica that serves
another model; a 5xx or 429 is retried elsewhere while an endpoint is left.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from .endpoint import Endpoint

__all__ = ["BACK_OFF_DEFAULT", "BACK_OFF_MAX", "AttemptPlan", "Outcome", "RetryPolicy",
           "Verdict", "judge", "model_missing", "retry_after_seconds", "retry_delay"]

#: how long a replica that said 429/503 is skipped: its Retry-After, within these bounds
BACK_OFF_DEFAULT, BACK_OFF_MAX = 1.0, 30.0
BACK_PRESSURE = frozenset({429, 503})


def retry_delay(attempt: int, base: float, cap: float,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before attempt number `attempt` (0 = the first, never delayed).

    Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))).
    The jitter keeps many requests that failed together (a replica dying) from retrying in
    lockstep; the cap bounds what a client can be kept waiting by retries.
    """
    if attempt <= 0 or base <= 0:
        return 0.0
    return rand() * min(cap, base * 2 ** (attempt - 1))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a request that failed before its first byte is tried again (see the module
    docstring); `max_attempts` None: every endpoint once."""

    max_attempts: int | None = None
    backoff: float = 0.025
    backoff_max: float = 0.25
    #: seconds from arrival within which retries may start (None: no bound)
    request_timeout: float | None = None

    def delay(self, retry: int, rng: random.Random) -> float:
        """The back-off before retry `retry` (1 = the second attempt)."""
        return retry_delay(retry, self.backoff, self.backoff_max, rng.random)


class AttemptPlan:
    """One request's endpoints in the order they are tried (see the module docstring)."""

    __slots__ = ("_next", "_order", "deadline", "policy")

    def __init__(self, order: list[Endpoint], policy: RetryPolicy, start: float) -> None:
        limit = policy.max_attempts
        self._order = order if limit is None else order[:max(1, limit)]
        self._next = 0
        self.policy = policy
        self.deadline = start + (policy.request_timeout or math.inf)

    @classmethod
    def build(cls, targets: Iterable[Endpoint], candidates: Iterable[Endpoint],
              ready: Iterable[Endpoint], policy: RetryPolicy, start: float,
              demoted: Callable[[Endpoint], bool] | None = None) -> AttemptPlan:
        """Targets, then the other candidates, then the other ready endpoints; after the
        first, those `demoted` (failing, backing off) go last."""
        order: list[Endpoint] = []
        seen: set[int] = set()
        for ep in (*targets, *candidates, *ready):
            if id(ep) not in seen:
                seen.add(id(ep))
                order.append(ep)
        if demoted is not None and len(order) > 2:
            order[1:] = sorted(order[1:], key=demoted)
        return cls(order, policy, start)

    @property
    def order(self) -> list[Endpoint]:
        return list(self._order)

    def has_next(self, now: float) -> bool:
        """Whether another endpoint may still be tried at `now`."""
        return self._next < len(self._order) and now < self.deadline

    def take(self, now: float, rng: random.Random | None) -> tuple[Endpoint, float, bool]:
        """The next endpoint, the back-off before sending to it (within the deadline) and
        whether it is the last attempt (`rng`: needed from the second attempt on)."""
        ep = self._order[self._next]
        delay = 0.0
        if self._next:  # never before the first attempt
            assert rng is not None
            delay = min(self.policy.delay(self._next, rng), max(0.0, self.deadline - now))
        self._next += 1
        last = self._next >= len(self._order) or now + delay >= self.deadline
        return ep, delay, last


class Verdict(Enum):
    """What an upstream's answer means for the request."""

    RELAY = "relay"              # the client's answer
    RETRY = "retry"              # try the next endpoint (the answer is dropped)
    WRONG_MODEL = "wrong-model"  # the replica serves another model; retry, or 503 when last


@dataclass(frozen=True, slots=True)
class Outcome:
    """`judge`'s reading of one answer: the verdict and what health learns from it."""

    verdict: Verdict
    #: a failure for outlier detection (True), a success (False), or neither (None)
    failed: bool | None
    #: seconds to skip the replica (back-pressure), or None
    back_off: float | None = None


def judge(status: int, *, last: bool, own_model: bool, retry_after: str | None = None,
          head: bytes = b"") -> Outcome:
    """Classify an upstream answer (`own_model`: the request names the pool's own model;
    `head`: the first body bytes, read for a 404)."""
    back_off = retry_after_seconds(retry_after) if status in BACK_PRESSURE else None
    failed = None if back_off is not None else (True if status >= 500 else None)
    if status == 404 and own_model and model_missing(head):
        return Outcome(Verdict.WRONG_MODEL, None)
    if (status >= 500 or status == 429) and not last:
        return Outcome(Verdict.RETRY, failed, back_off)
    return Outcome(Verdict.RELAY, failed, back_off)


def needs_head(status: int, last: bool) -> bool:
    """Whether the shell must read the first body bytes before `judge` (not for an answer
    that is dropped for a retry)."""
    return last or not (status >= 500 or status == 429)


def retry_after_seconds(value: str | None) -> float:
    """Seconds from a Retry-After header (seconds form), bounded; the default without one."""
    try:
        seconds = float(value or "")
    except ValueError:
        return BACK_OFF_DEFAULT
    return BACK_OFF_DEFAULT if math.isnan(seconds) else min(BACK_OFF_MAX, max(0.0, seconds))


def model_missing(body: bytes) -> bool:
    """Whether a 404 body says the model does not exist (vLLM: "The model `x` does not
    exist."; OpenAI: code model_not_found), rather than a missing route."""
    low = body[:2048].lower()
    return b"model" in low and (b"does not exist" in low or b"not found" in low
                                or b"model_not_found" in low) and b"{" in low
