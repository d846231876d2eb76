"""The room a pool keeps free for its top priority (`flowControl.reserve: auto`).

Under overload a top-priority request is only fast if it finds a batch slot free when it
arrives: behind a full batch it waits for some running request to end, and then starts at the
next engine step. So lower priorities may fill a pool only up to a few free slots short of
full. How many:

The free slots kept form a small birth-death queue. Each top-priority arrival takes one (rate
lambda); each request that ends gives one back until the reserve is whole again (rate mu,
the pool's completions; past the reserve, lower priorities take the slot). With rho =
lambda / mu, a top-priority arrival finds none free with the probability of the M/M/1/K queue
with K = the reserve being full:

    P(none free) = rho^K (1 - rho) / (1 - rho^(K + 1))      (1 / (K + 1) at rho = 1)

and the pool keeps the smallest K that brings it to at most `miss` (5% by default, well
inside the 10% of its requests a p90 target lets wait). Both are counted by the controller over
the pool's last completions (`TopReserve`), so the reserve follows the traffic: 0 while no
top-priority request arrives, a slot or two while the top priority is a small share of what
the pool completes, more as it grows. Measured completions, not an assumed capacity: they are
what refills the reserve, and under overload they are the capacity.

The model is a lower bound: completions in a batched engine come in bursts (requests that
started together end together), and the gateway learns of a free slot late, so more arrivals
find none than it says. The controller therefore tells `TopReserve` whether each top-priority
arrival found a free batch slot, and the reserve is corrected by what it measures: over each
window of about 1.6 / miss such arrivals (32 at 5%), more than twice the allowed misses add a
slot to the model's count, and a window without a miss takes one back (never below the
model's count, never past the cap). Only misses the reserve could have prevented are counted:
not those of a pool its metrics call saturated, where everything waits.
"""

from __future__ import annotations

import math

__all__ = ["TopReserve", "slots_to_keep"]


def slots_to_keep(rho: float, miss: float, cap: int) -> int:
    """The smallest reserve K (at most `cap`) with which an arrival finds no slot free with
    probability at most `miss`, for arrivals at `rho` times the rate slots free (module
    docstring). In closed form, O(1) on the request path: P(none free) <= miss exactly when
    rho^K (1 - rho (1 - miss)) <= miss (rho < 1), >= (rho > 1), so K is a logarithm; past
    rho = 1 / (1 - miss) no K is enough."""
    if rho <= 0 or cap <= 0:
        return 0
    if rho == 1.0:
        k = math.ceil(1 / miss - 1 - 1e-9)
    else:
        base = 1 - rho * (1 - miss)
        if base <= 0:
            return cap
        k = math.ceil(math.log(miss / base) / math.log(rho) - 1e-9)
    return min(cap, max(0, k))


class TopReserve:
    """One pool's top-priority arrivals per completion, over its last `horizon` completions,
    and the reserve they call for.

    Counted per completion, not per second: each completion discounts both counts by
    1 - 1/horizon, so the window is the pool's own pace (a fast pool's last second, a slow
    CPU pool's last minute) and no clock is needed.
    """

    __slots__ = ("_arrivals", "_cap", "_completions", "_keep", "_missed", "_seen", "extra",
                 "horizon", "miss", "window")

    def __init__(self, miss: float, horizon: int = 64) -> None:
        if not 0 < miss < 1 or horizon < 1:
            raise ValueError("need 0 < miss < 1 and horizon >= 1")
        self.miss = miss
        self.horizon = horizon
        self._keep = 1 - 1 / horizon
        self._arrivals = 0.0
        self._completions = 0.0
        #: top-priority arrivals per correction window, and the misses the model allows
        self.window = math.ceil(1.6 / miss)
        #: slots added to the model's count by the measured misses
        self.extra = 0
        self._seen = 0
        self._missed = 0
        self._cap = 0  # the last cap asked for: `extra` never winds up past it

    def outcome(self, found_slot: bool) -> None:
        """Whether a top-priority arrival found a free batch slot (module docstring)."""
        self._seen += 1
        self._missed += not found_slot
        if self._seen >= self.window:
            if self._missed > 2 * self.miss * self.window:
                self.extra = min(self.extra + 1, self._cap)
            elif self._missed == 0 and self.extra:
                self.extra -= 1
            self._seen = self._missed = 0

    def arrived(self) -> None:
        """A top-priority request arrived (admitted or queued)."""
        self._arrivals += 1

    def completed(self) -> None:
        """A request of any priority ended: its batch slot is free."""
        self._arrivals *= self._keep
        self._completions = self._completions * self._keep + 1

    def rho(self) -> float:
        """Top-priority arrivals per completion (inf: arrivals and no completion yet)."""
        if self._arrivals == 0:
            return 0.0
        return self._arrivals / self._completions if self._completions else math.inf

    def slots(self, cap: int) -> int:
        """Free slots the pool should keep for its top priority now (at most `cap`); none
        while less than one top-priority request arrived over the horizon."""
        self._cap = cap
        if self._arrivals < 1:
            return 0
        rho = self.rho()
        if math.isinf(rho):
            return cap
        return min(cap, slots_to_keep(rho, self.miss, cap) + self.extra)
