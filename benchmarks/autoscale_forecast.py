"""The desired-replicas gauge's arrival-rate forecast alone, against the load's true rate.

    python benchmarks/autoscale_forecast.py [--seeds 0] [--loads A_day,B_day,...] [-v]
    python benchmarks/autoscale_forecast.py --trace FILE [--speed 1] [-v]

No engine and no HPA: each load of docs/benchmark.md's autoscaling section (`inferoute bench
autoscale`'s day, spike and step shapes, their bases, peaks, durations and seeds) draws its
Poisson arrivals as the benchmark does, feeds them to a `PoolEstimator` with the benchmark's
spec (window 60 s, horizon 75 s: a 60-s cold start plus a 15-s sync) and reads its forecast at
every 15-s sync. What a perfect forecast would read at t is the highest true rate from t to
t + 75 s (the estimator takes the rate now or a horizon on, whichever is higher). Per load:

- shortfall: the sum over the syncs of max(0, truth - forecast) x 15 s (requests the replicas
  asked for would not be sized for: requests over the TTFT target in a run);
- excess: the HPA keeps the highest proposal of the last 300 s, so at each sync the highest
  forecast of the last 300 s against the highest truth of the same syncs; the sum of
  max(0, held forecast - held truth) x 15 s (replica-seconds held for nothing);
- sigma / error: the forecast's mean standard error (what the 90% margin is 1.28 times) over
  the root mean square of its actual error against the true rate a horizon on: 1 where the
  margin is what it claims, above 1 where it is wider.

`--seeds N` adds N more seeds per load (the load's own seed + 1000 + k): the loads' own
arrivals are what the runs see; more seeds say whether a change holds beyond them.
`--trace FILE` (repeatable, each with the `--speed` given) reads a trace's own arrival times
instead (Mooncake JSONL or Azure CSV, `bench/traces.py`); its true rate at a time is its
arrivals per second over the minute around it (`bench.autoscale.true_rate`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NamedTuple

from inferoute.bench.autoscale import (
    SCALE_DOWN_WINDOW,
    SYNC_PERIOD,
    ShapedLoad,
    true_rate,
)
from inferoute.bench.traces import load_trace
from inferoute.core.autoscale import AutoscaleSpec, PoolEstimator

COLD_START = 60.0
HORIZON = COLD_START + SYNC_PERIOD

#: name: (shape, base, peak, duration, seed), as the docs' commands run them
LOADS = {
    "A_day": ("day", 1, 16, 600, 0), "B_day": ("day", 1, 16, 400, 0),
    "A_3_12": ("day", 3, 12, 600, 1), "B_2_8": ("day", 2, 8, 600, 2),
    "A_900": ("day", 2, 10, 900, 3), "B_800": ("day", 1, 6, 800, 4),
    "A_4_14": ("day", 4, 14, 500, 5), "B_3_12": ("day", 3, 12, 600, 6),
    "A2": ("day", 1.5, 13, 650, 23), "B2": ("day", 1, 12, 650, 24),
    "B1": ("day", 2, 14, 700, 22), "A1": ("day", 2, 11, 700, 21),
    "spike": ("spike", 2, 12, 400, 0), "step": ("step", 2, 10, 300, 0),
}


class Row(NamedTuple):
    """One sync: its time, the forecast, what a perfect one would read (the highest true
    rate to a horizon on), the forecast's sigma, and the true rate a horizon on."""

    t: float
    forecast: float
    truth: float
    sigma: float
    ahead: float


def evaluate(shape: str, base: float, peak: float, duration: float,
             seed: int) -> tuple[float, float, list[Row]]:
    """(shortfall, excess, rows) of one load's arrivals (`score`)."""
    load = ShapedLoad.make(base, peak, duration, seed=seed, shape=shape)  # type: ignore[arg-type]
    return score(load.arrivals(0), load.rate_at, duration)


def score(arrivals: list[float], rate: Callable[[float], float],
          duration: float) -> tuple[float, float, list[Row]]:
    """(shortfall, excess, rows) of the forecast of these arrivals, whose true rate at a time
    is `rate`."""
    # the forecast itself (z = 0: now or the horizon, whichever is higher), as the docs scored it
    est = PoolEstimator(AutoscaleSpec(horizon=HORIZON, cold_start=COLD_START, rate_quantile=0.5))
    rows: list[Row] = []
    i, t = 0, SYNC_PERIOD
    while t < duration:
        while i < len(arrivals) and arrivals[i] <= t:
            est.arrived(arrivals[i])
            i += 1
        truth = max(rate(t + k) for k in range(int(HORIZON) + 1))
        forecast, sigma = est.forecast(t)
        rows.append(Row(t, forecast, truth, sigma, rate(t + HORIZON)))
        t += SYNC_PERIOD
    keep = int(SCALE_DOWN_WINDOW / SYNC_PERIOD)
    shortfall = sum(max(0.0, row.truth - row.forecast) for row in rows) * SYNC_PERIOD
    excess = 0.0
    for j in range(len(rows)):
        held = rows[max(0, j - keep + 1):j + 1]
        excess += max(0.0, max(row.forecast for row in held) - max(row.truth for row in held))
    return shortfall, excess * SYNC_PERIOD, rows


def calibration(rows: list[Row]) -> float:
    """The forecasts' mean sigma over the RMS of their error against the rate a horizon on,
    over the syncs with a trend (sigma > 0); NaN without any."""
    trended = [row for row in rows if row.sigma > 0]
    if not trended:
        return math.nan
    rms = math.sqrt(sum((row.ahead - row.forecast) ** 2 for row in trended) / len(trended))
    return sum(row.sigma for row in trended) / len(trended) / rms if rms > 0 else math.nan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=0, help="more seeds per load (0)")
    p.add_argument("--loads", default=",".join(LOADS), help="comma-separated names")
    p.add_argument("-v", "--verbose", action="store_true", help="every sync's forecast")
    p.add_argument("--trace", action="append", default=[], metavar="FILE",
                   help="a trace's arrivals instead of the loads (repeatable)")
    p.add_argument("--speed", type=float, default=1.0, help="--trace replay speed (1)")
    args = p.parse_args(argv)
    if args.trace:
        return _traces(args.trace, args.speed, args.verbose)
    total = [0.0, 0.0]
    extra = [0.0, 0.0]
    for name in args.loads.split(","):
        shape, base, peak, duration, seed = LOADS[name]
        short, exc, rows = evaluate(shape, base, peak, duration, seed)
        total[0] += short
        total[1] += exc
        line = (f"{name:7s} shortfall {short:7.0f}  excess {exc:7.0f}  "
                f"sigma / error {calibration(rows):4.2f}")
        if args.seeds:
            more = [evaluate(shape, base, peak, duration, seed + 1000 + k)[:2]
                    for k in range(args.seeds)]
            s, e = sum(m[0] for m in more), sum(m[1] for m in more)
            extra[0] += s
            extra[1] += e
            line += f"   {args.seeds} more seeds: shortfall {s:8.0f}  excess {e:8.0f}"
        print(line)
        if args.verbose:
            print("   " + " ".join(f"{r.t:.0f}:{r.forecast:.1f}/{r.truth:.1f}" for r in rows))
    print(f"total   shortfall {total[0]:7.0f}  excess {total[1]:7.0f}" + (
        f"   {args.seeds} more seeds: shortfall {extra[0]:8.0f}  excess {extra[1]:8.0f}"
        if args.seeds else ""))
    return 0


def _traces(paths: list[str], speed: float, verbose: bool) -> int:
    total = [0.0, 0.0]
    for path in paths:
        _, load = load_trace(path, speed=speed)
        arrivals = load.arrivals(0)
        short, exc, rows = score(arrivals, true_rate(load), arrivals[-1])
        total[0] += short
        total[1] += exc
        print(f"{path} x{speed:g}: shortfall {short:7.0f}  excess {exc:7.0f}  "
              f"sigma / error {calibration(rows):4.2f}")
        if verbose:
            print("   " + " ".join(f"{r.t:.0f}:{r.forecast:.1f}/{r.truth:.1f}" for r in rows))
    print(f"total   shortfall {total[0]:7.0f}  excess {total[1]:7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
