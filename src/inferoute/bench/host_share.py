"""How much of the host a process tree got: the kernel's scheduler statistics, per interval.

On a machine whose cores are shared (two vLLM-CPU replicas, a gateway and a load generator on
two cores), a replica's engine is slower under load than when it was calibrated, in part
because its worker waits for a core (measured: 1.1-1.5x of the 1.3-3.4x longer steps; the rest
is not explained yet, docs/real-vllm.md section 8). Linux counts both per thread in
`/proc/<pid>/task/<tid>/schedstat`: nanoseconds on a CPU, then nanoseconds runnable but waiting
on a run queue. Over an interval, the *stretch* `(run + wait) / run` of a replica's busiest
thread (the one that computes) is how much longer its CPU-bound work took than it would have
with a core to itself: 1.0 on an idle host, 2.0 when it got half of the time it wanted.

`inferoute demo --engine vllm --fidelity` samples each replica's threads during the calibration
and every stage of the ladder, and runs the simulator at their ratio (sim/runner.py's
`time_scale`): the simulator's step model, fitted at the calibration's share of the host,
replayed at the ladder's. Threads are matched by id between samples, so a thread that starts
or ends inside an interval counts only for what it did while both samples saw it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HostSampler", "ThreadTimes", "TreeSample", "read_tree", "stretch", "tree_pids"]

#: per thread id: (ns on a CPU, ns runnable but waiting for one)
ThreadTimes = dict[int, tuple[int, int]]
#: below this much CPU time in an interval the tree was idle and its stretch means nothing
MIN_RUN_NS = 20_000_000


@dataclass(frozen=True)
class TreeSample:
    """One reading of a process tree's threads at monotonic time `t`."""
    t: float
    threads: ThreadTimes


def _ppid(stat: str) -> int:
    # the command name (field 2) may hold spaces and parentheses: parse after its last ')'
    return int(stat[stat.rindex(")") + 2:].split()[1])


def tree_pids(root: int, proc: Path = Path("/proc")) -> list[int]:
    """`root` and every process descended from it (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = _ppid((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone between the listing and the read
        children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def read_tree(pids: Iterable[int], proc: Path = Path("/proc")) -> ThreadTimes:
    """(run ns, wait ns) of every thread of `pids` that is still there."""
    out: ThreadTimes = {}
    for pid in pids:
        try:
            tasks = list((proc / str(pid) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                run, wait = (task / "schedstat").read_text().split()[:2]
                out[int(task.name)] = (int(run), int(wait))
            except (OSError, ValueError):
                continue
    return out


def stretch(before: ThreadTimes, after: ThreadTimes) -> float | None:
    """(run + wait) / run between two readings of the tree's busiest thread (the most CPU in
    the interval, among the threads both saw); None when it barely ran (under 20 ms of CPU),
    since then its waits say nothing about its speed.

    One thread, not the whole tree: a vLLM-CPU replica computes in one thread (the worker's),
    while its engine core, API server and gloo threads poll and yield, so they wait for a core
    often and briefly: summed, they showed 2-4x where the worker's own thread waited 1.1-1.7x."""
    best: tuple[int, int] | None = None
    for tid, (r1, w1) in after.items():
        r0, w0 = before.get(tid, (r1, w1))
        run, wait = max(r1 - r0, 0), max(w1 - w0, 0)
        if best is None or run > best[0]:
            best = (run, wait)
    if best is None or best[0] < MIN_RUN_NS:
        return None
    return (best[0] + best[1]) / best[0]


class HostSampler:
    """Reads the trees of `roots` every `interval` seconds in a daemon thread; `window(a, b)`
    gives each tree's stretch between the samples nearest to monotonic times a and b.

    The trees are listed again at every sample, so processes a root starts later (vLLM's engine
    core) are counted. Memory is bounded: `max_samples` readings, the oldest dropped first."""

    def __init__(self, roots: dict[str, int], *, interval: float = 0.5,
                 max_samples: int = 7200, clock: Callable[[], float] = time.monotonic,
                 proc: Path = Path("/proc")) -> None:
        self.roots = dict(roots)
        self.interval = interval
        self.max_samples = max_samples
        self.clock = clock
        self.proc = proc
        self.samples: dict[str, list[TreeSample]] = {name: [] for name in roots}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one reading of every tree now."""
        t = self.clock()
        for name, root in self.roots.items():
            times = read_tree(tree_pids(root, self.proc), self.proc)
            series = self.samples[name]
            series.append(TreeSample(t, times))
            if len(series) > self.max_samples:
                del series[0]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> HostSampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="host-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def window(self, start: float, end: float) -> dict[str, float | None]:
        """Each tree's stretch from the last sample at or before `start` to the first at or
        after `end` (the nearest ones that exist)."""
        out: dict[str, float | None] = {}
        for name, series in self.samples.items():
            if len(series) < 2:
                out[name] = None
                continue
            before = max((s for s in series if s.t <= start), key=lambda s: s.t,
                         default=series[0])
            after = min((s for s in series if s.t >= end), key=lambda s: s.t,
                        default=series[-1])
            out[name] = stretch(before.threads, after.threads)
        return out
