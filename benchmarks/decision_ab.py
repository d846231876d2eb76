"""Decision cost before and after a change, interleaved, on a busy machine.

    python benchmarks/decision_ab.py --before OLD/src --after NEW/src \
        [--rows precise:hold,inferoute-slo:slo,dynamo-kv] [--sizes 100000,32768,8192] \
        [--reps 5] [--samples 300] [-o ab.json]
    python benchmarks/decision_ab.py --report ab.json [ab2.json ...]

Each cell (row, prompt size) is `decision_costs`'s measurement (`decision_latency`, CPU
clock, 16 endpoints, the same warm-up and samples) made in a fresh process on one tree and
then on the other, alternating which goes first, `--reps` times; a row is a packaged policy,
`:hold` for the precise row where the engines hold what they were sent and `:slo` for the row
with an `x-slo-ttft-ms` target. On a machine other jobs share, the load moves between
processes, so only figures taken this way compare. `--report` prints, per cell, the median
over the runs of each run's decision p50 / p99 and update p50, and the after / before ratio of
the medians and of the minima.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

#: one cell, measured as `decision_costs` measures it, printed as JSON
_CELL = """
import json, sys
from inferoute.bench.decision import SLO_HEADERS, decision_latency
cfg, _, opt = sys.argv[1].partition(":")
samples = int(sys.argv[3])
dl = decision_latency(endpoints=16, prompt_tokens=int(sys.argv[2]), config=cfg,
                      samples=samples, warmup=min(512, samples), cpu_time=True,
                      headers=SLO_HEADERS if opt == "slo" else None, engines_hold=opt == "hold")
print(json.dumps([dl.p50_ms, dl.p99_ms, dl.hooks_p50_ms]))
"""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def measure(args: argparse.Namespace) -> dict[str, list[list[float]]]:
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    out: dict[str, list[list[float]]] = {}
    print(f"start {_now()}, load {os.getloadavg()}", file=sys.stderr, flush=True)
    turn = 0
    for rep in range(args.reps):
        for row in args.rows.split(","):
            for size in args.sizes.split(","):
                order = ["before", "after"] if turn % 2 == 0 else ["after", "before"]
                turn += 1
                for label in order:
                    run = subprocess.run(
                        [sys.executable, "-c", _CELL, row, size, str(args.samples)],
                        env={**os.environ, "PYTHONPATH": trees[label]}, capture_output=True,
                        text=True, check=True)
                    cell = json.loads(run.stdout.strip().splitlines()[-1])
                    out.setdefault(f"{row}|{size}|{label}", []).append(cell)
        print(f"rep {rep} done {_now()}, load {os.getloadavg()}", file=sys.stderr, flush=True)
        if args.output:
            with open(args.output, "w") as f:
                json.dump(out, f)
    return out


def report(runs: dict[str, list[list[float]]]) -> str:
    keys = [k.split("|") for k in runs]
    rows = list(dict.fromkeys(k[0] for k in keys))
    sizes = list(dict.fromkeys(k[1] for k in keys))
    lines = []
    for row in rows:
        for size in sizes:
            before, after = runs.get(f"{row}|{size}|before"), runs.get(f"{row}|{size}|after")
            if not before or not after:
                continue

            def med(xs: list[list[float]], j: int) -> float:
                return statistics.median(x[j] for x in xs)

            def low(xs: list[list[float]]) -> float:
                return min(x[0] for x in xs)

            lines.append(
                f"{row:22s} {size:>7s} runs {len(before)}/{len(after)}  "
                f"before {med(before, 0):.3f} / {med(before, 1):.3f}, {med(before, 2):.3f}  "
                f"after {med(after, 0):.3f} / {med(after, 1):.3f}, {med(after, 2):.3f}  "
                f"p50 ratio {med(after, 0) / med(before, 0):.2f} (minima "
                f"{low(after) / low(before):.2f}), update {med(after, 2) / med(before, 2):.2f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", help="the old tree's src directory")
    p.add_argument("--after", help="the new tree's src directory")
    p.add_argument("--rows", default="precise:hold,inferoute-slo:slo,dynamo-kv,inferoute,llm-d")
    p.add_argument("--sizes", default="100000,32768,8192")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("-o", "--output", default=None, help="the runs, as JSON")
    p.add_argument("--report", nargs="+", default=None, help="print the runs of these files")
    args = p.parse_args()
    runs: dict[str, Any] = {}
    if args.report:
        for path in args.report:
            with open(path) as f:
                for key, cells in json.load(f).items():
                    runs.setdefault(key, []).extend(cells)
    else:
        if not (args.before and args.after):
            p.error("--before and --after are needed to measure")
        runs = measure(args)
    print(report(runs))


if __name__ == "__main__":
    main()
