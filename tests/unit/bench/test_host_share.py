"""A process tree's share of the host, from the kernel's per-thread scheduler statistics: the
tree is found by parent ids, threads are matched by id between readings, and an idle tree has
no stretch. A fake /proc, so no real process is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferoute.bench.host_share import HostSampler, read_tree, stretch, tree_pids

MS = 1_000_000


def proc_entry(root: Path, pid: int, ppid: int, name: str,
               threads: dict[int, tuple[int, int]]) -> None:
    d = root / str(pid)
    (d / "task").mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(f"{pid} ({name}) S {ppid} {pid} {pid} 0 -1\n")
    for tid, (run, wait) in threads.items():
        (d / "task" / str(tid)).mkdir(exist_ok=True)
        (d / "task" / str(tid) / "schedstat").write_text(f"{run} {wait} 7\n")


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    proc_entry(tmp_path, 10, 1, "python", {10: (100 * MS, 10 * MS)})
    # a command name with spaces and parentheses must not shift the parent field
    proc_entry(tmp_path, 11, 10, "VLLM::Engine (core) 0", {11: (500 * MS, 0), 12: (0, 0)})
    proc_entry(tmp_path, 13, 11, "resource tracker", {13: (1 * MS, 0)})
    proc_entry(tmp_path, 20, 1, "other", {20: (9 * MS, 9 * MS)})
    (tmp_path / "self").mkdir()
    return tmp_path


def test_the_tree_is_the_root_and_its_descendants_only(proc: Path) -> None:
    assert sorted(tree_pids(10, proc)) == [10, 11, 13]
    assert tree_pids(20, proc) == [20]


def test_read_tree_gives_every_thread_and_skips_processes_that_are_gone(proc: Path) -> None:
    times = read_tree([10, 11, 99], proc)
    assert times == {10: (100 * MS, 10 * MS), 11: (500 * MS, 0), 12: (0, 0)}


def test_stretch_is_the_busiest_threads_runnable_time_over_its_running_time() -> None:
    before = {1: (0, 0), 2: (100 * MS, 0), 3: (0, 0)}
    # thread 1 computes: 300 ms ran, 150 ms waited; thread 3 polls: 30 ms ran, 900 ms waited
    after = {1: (300 * MS, 150 * MS), 2: (100 * MS, 0), 3: (30 * MS, 900 * MS)}
    assert stretch(before, after) == pytest.approx(1.5)


def test_threads_count_only_for_what_both_readings_saw() -> None:
    before = {1: (50 * MS, 0), 3: (0, 0)}   # thread 3 then ran 900 ms and ended
    after = {1: (150 * MS, 100 * MS), 4: (700 * MS, 700 * MS)}  # thread 4 started
    assert stretch(before, after) == pytest.approx(2.0)


def test_an_idle_tree_has_no_stretch() -> None:
    assert stretch({1: (0, 0)}, {1: (5 * MS, 50 * MS)}) is None


def test_the_sampler_windows_each_tree_between_the_nearest_readings(proc: Path) -> None:
    now = [0.0]
    sampler = HostSampler({"a": 10, "b": 20}, clock=lambda: now[0], proc=proc)
    sampler.sample()
    now[0] = 1.0
    proc_entry(proc, 11, 10, "VLLM::Engine (core) 0", {11: (700 * MS, 200 * MS), 12: (0, 0)})
    sampler.sample()
    now[0] = 2.0
    proc_entry(proc, 11, 10, "VLLM::Engine (core) 0", {11: (800 * MS, 200 * MS), 12: (0, 0)})
    sampler.sample()
    first = sampler.window(0.0, 1.0)
    assert first["a"] == pytest.approx(2.0)  # 200 ms ran, 200 ms waited
    assert first["b"] is None  # the other tree did not run
    assert sampler.window(1.0, 2.0)["a"] == pytest.approx(1.0)
    # widened to the readings at 0.0 and 2.0: the busiest thread ran 300 ms, waited 200 ms
    assert sampler.window(0.2, 1.7)["a"] == pytest.approx(5 / 3)


def test_the_sampler_keeps_a_bounded_history(proc: Path) -> None:
    sampler = HostSampler({"a": 10}, max_samples=3, proc=proc)
    for _ in range(10):
        sampler.sample()
    assert len(sampler.samples["a"]) == 3
