"""`SlotFeed`: the router listener that tells admission of every send and end.

The dispatch budget counts the requests sent to each endpoint and ended there since its last
scrape (`AdmissionController.dispatched` / `finished`), so a request that ends frees its slot
for a waiting one at once. The gateway's and the picker's admission driver and the virtual
benchmark attach one to their `Router` (`router.listeners`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..router import Decision
    from .controller import AdmissionController

__all__ = ["SlotFeed"]


class SlotFeed:
    """A `RouterListener` reporting sends and ends to `controller`; `on_end()` runs after an
    end while requests wait (the shell releases what the freed slot lets through)."""

    def __init__(self, controller: "AdmissionController",
                 on_end: Callable[[], None] | None = None) -> None:
        self.controller = controller
        self.on_end = on_end

    def dispatched(self, decision: "Decision", now: float) -> None:
        if decision.endpoint is not None:
            self.controller.dispatched(decision.pool.model, decision.endpoint, now)

    def first_token(self, decision: "Decision", now: float) -> None:
        pass

    def finished(self, decision: "Decision", now: float, usage: Any = None) -> None:
        if decision.endpoint is not None:
            self.controller.finished(decision.pool.model, decision.endpoint, now)
            if self.on_end is not None and self.controller.queued():
                self.on_end()
