"""The release rule: which waiting request goes next, and to which endpoint.

By default the flow-control queue releases in its own order (priority bands, flows round
robin, FCFS or EDF) as the dispatch budget allows, and the scheduler then picks an endpoint.
A `ReleaseRule` (a scheduling plugin that also implements this protocol, e.g.
`kv-fit-filter`) decides both at once instead, but only while it says it is `active`: it sees
the waiting requests of the highest band and the candidate endpoints, and returns the request
to send now with the endpoint it reserved for it, or None while none fits anywhere. The
scheduler's own filter then keeps the reserved endpoint, so the release and the routing agree.

While the rule is not active, admission does not ask it: the pool is admitted and released
exactly as a pool without a rule (the dispatch budget, the saturation detector, the reserve
and the queue's order), and what waits then is the queue's either way, so a request queued
under one regime is released by the other once it changes, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..endpoint import Endpoint
from ..request import InferenceRequest

__all__ = ["ReleaseRule"]


@runtime_checkable
class ReleaseRule(Protocol):
    """Admission asks it before releasing anything while it is active (see the module
    docstring)."""

    @property
    def active(self) -> bool:
        """Admission asks the rule now; while not, the dispatch budget and the queue's order
        apply (read at every admission decision, so it may change at any time)."""
        ...

    def place(self, request: InferenceRequest, candidates: list[Endpoint],
              now: float) -> Endpoint | None:
        """The endpoint reserved for `request` if it may go now, else None (it waits)."""
        ...

    def choose(self, waiting: Sequence[InferenceRequest], candidates: list[Endpoint],
               now: float) -> int | None:
        """The index in `waiting` (oldest first) of the request to release now, its endpoint
        reserved; None while none fits anywhere."""
        ...
