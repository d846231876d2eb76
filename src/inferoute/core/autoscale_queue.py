"""The queueing models the desired-replicas estimator sizes a pool with: the share of requests
whose first token comes after the TTFT target with N replicas, and the least N that keeps it
at OVER_SHARE (the target is a p90).

- `over_share_per_replica`: N independent M/G/1 queues, each fed 1/N of the arrivals at random
  (Pollaczek-Khinchine mean wait of the prefill work, an exponential tail). It overstates the
  wait of a router that sends each request where it can start soonest; used while the decode
  cost is not measured, its margin stands in for that.
- `over_share_pooled`: one M/G/N queue (Erlang C for the chance to wait, an exponential wait
  given waiting whose mean is E[P^2] / (2 E[S]) / (N (1 - rho)), P the prefill work a request
  waits behind, S the whole work, decodes included, that sets rho): a router that balances
  the replicas' load pools them. It is only as good as the work per request it is given: with
  the prompt's prefill alone it carried 4 simulated Qwen3-32B replicas to 18 req/s where they
  collapse at 15 (docs/benchmark.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["OVER_SHARE", "erlang_c", "over_share_per_replica", "over_share_pooled",
           "replicas_for_target"]

#: the share of requests a TTFT target allows over it (the target is a p90)
OVER_SHARE = 0.1


def over_share_per_replica(n: float, lam: float, work: float, wait_moment: float,
                           unqueued: list[float], target: float) -> float:
    """The share of requests whose TTFT exceeds `target` with `n` replicas each an M/G/1 fed
    lam / n: `unqueued` the TTFTs without a queue (one per prompt-size quantile), `work` the
    replica-seconds per request, `wait_moment` b^2 E[u^2] (decodes go first in every step:
    they count in rho, the prefills queue)."""
    rho = lam * work / n
    if rho >= 1.0:
        return 1.0
    mean_wait = lam / n * wait_moment / (2.0 * (1.0 - rho))
    if mean_wait <= 0:
        return _share_over(unqueued, target, lambda slack: 0.0)
    return _share_over(unqueued, target,
                       lambda slack: rho * math.exp(-slack * rho / mean_wait))


def _share_over(unqueued: list[float], target: float,
                tail: Callable[[float], float]) -> float:
    """The mean over the prompt sizes' unqueued TTFTs of the chance to miss `target`: 1 where
    the prefill alone misses it, else `tail(slack)`, the chance to wait longer than the
    slack."""
    return sum(1.0 if target - x <= 0 else tail(target - x) for x in unqueued) / len(unqueued)


def erlang_c(n: int, offered: float) -> float:
    """The chance an arrival waits in an M/M/n queue with `offered` = lambda E[S] (Erlang B
    by its recursion, then C); 1 when offered >= n."""
    if n <= 0 or offered >= n:
        return 1.0
    b = 1.0
    for k in range(1, n + 1):
        b = offered * b / (k + offered * b)
    return n * b / (n - offered * (1.0 - b))


def over_share_pooled(n: float, lam: float, work: float, wait_moment: float,
                      unqueued: list[float], target: float) -> float:
    """The share over `target` with `n` replicas pooled (M/G/n): `work` E[S] the
    replica-seconds per request, `wait_moment` E[P^2] of the prefill work a request waits
    behind. A real `n` is interpolated between its whole neighbours (the estimate is a real
    count, the HPA rounds it up)."""
    low = math.floor(n)
    if low == n or low < 1:
        return _pooled(max(1, math.ceil(n)), lam, work, wait_moment, unqueued, target)
    f = n - low
    return ((1 - f) * _pooled(low, lam, work, wait_moment, unqueued, target)
            + f * _pooled(low + 1, lam, work, wait_moment, unqueued, target))


def _pooled(n: int, lam: float, work: float, wait_moment: float, unqueued: list[float],
            target: float) -> float:
    offered = lam * work
    if offered >= n:
        return 1.0
    wait = erlang_c(n, offered)
    mean = wait_moment / (2.0 * work) / (n - offered)  # n (1 - rho) = n - offered
    if mean <= 0:
        return _share_over(unqueued, target, lambda slack: 0.0)
    return _share_over(unqueued, target, lambda slack: wait * math.exp(-slack / mean))


def replicas_for_target(share: Callable[[float, float], float], lam: float, work: float,
                        unqueued: list[float], target: float) -> float:
    """The least (real) replica count n whose `share(n, target)` is at most OVER_SHARE
    (bisection; `share` one of the models above with its other arguments bound). A target
    more than OVER_SHARE of the prompts miss on an idle replica (`unqueued`: the TTFTs without
    a queue) is out of reach: then twice the p90 unqueued TTFT stands in for it (queueing may
    add as much as prefill)."""
    if lam <= 0 or work <= 0:
        return 0.0
    p90 = sorted(unqueued)[min(len(unqueued) - 1, int((1 - OVER_SHARE) * len(unqueued)))]
    if p90 > target:
        target = 2 * p90
    low = lam * work  # every replica busy all the time
    high = max(2.0 * low, 1e-6)
    while share(high, target) > OVER_SHARE and high < 1e6:
        low, high = high, 2.0 * high
    for _ in range(50):
        mid = (low + high) / 2
        if share(mid, target) > OVER_SHARE:
            low = mid
        else:
            high = mid
    return high
