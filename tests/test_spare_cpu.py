"""The gauge that tells a task process whether handing outcomes over can use a free CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fs_task_queue.spare_cpu import SPARE_THRESHOLD, SpareCpu

TICK = 1.0 / os.sysconf("SC_CLK_TCK")
WINDOW = 0.2


def write_proc(root: Path, pid: int, idle: dict[int, int], worker_ticks: int) -> None:
    """A copy of the two procfs files the gauge reads, with chosen counters."""
    rows = [f"cpu  1 2 3 {sum(idle.values())} 0 0 0 0 0 0"]
    rows += [f"cpu{n} 1 2 3 {ticks} 0 0 0 0 0 0" for n, ticks in sorted(idle.items())]
    (root / "stat").write_text("\n".join([*rows, "intr 1 2 3", "ctxt 4"]) + "\n")
    (root / str(pid)).mkdir(exist_ok=True)
    # A command name with spaces and parentheses must not shift the fields.
    fields = ["S", *["0"] * 10, str(worker_ticks // 2), str(worker_ticks - worker_ticks // 2), *["0"] * 30]
    (root / str(pid) / "stat").write_text(f"{pid} (a b) (c) {' '.join(fields)}\n")


def verdict_after(gauge: SpareCpu, root: Path, pid: int, idle: dict[int, int], worker_ticks: int) -> tuple[bool, float]:
    """Move the counters on, let a window pass, and return (verdict, seconds the window took at least)."""
    start = time.monotonic()
    write_proc(root, pid, idle, worker_ticks)
    time.sleep(WINDOW)
    free = gauge.available()
    spent = time.monotonic() - start
    return free, spent


def gauge_on(root: Path, pid: int, idle: dict[int, int], worker_ticks: int) -> SpareCpu:
    """A gauge reading a procfs copy that starts at these counters."""
    write_proc(root, pid, idle, worker_ticks)
    return SpareCpu(pid, proc=str(root), window=WINDOW)


@pytest.fixture
def ours() -> set[int]:
    return os.sched_getaffinity(0)


def test_idle_time_of_our_cpus_counts_as_free(tmp_path, ours):
    cpu = min(ours)
    gauge = gauge_on(tmp_path, 42, {cpu: 1000}, 0)
    assert gauge.available(), "before the first window the gauge keeps handing over"
    # A whole CPU idle over the window (ticks for twice the window: a sleep can run long).
    free, _ = verdict_after(gauge, tmp_path, 42, {cpu: 1000 + round(2 * WINDOW / TICK)}, 0)
    assert free
    # Nothing idle and the worker process idle too: no CPU for it.
    free, _ = verdict_after(gauge, tmp_path, 42, {cpu: 1000 + round(2 * WINDOW / TICK)}, 0)
    assert not free
    gauge.close()


def test_the_worker_processs_own_cpu_time_counts_as_free(tmp_path, ours):
    cpu = min(ours)
    gauge = gauge_on(tmp_path, 7, {cpu: 0}, 100)
    # No idle time, but the worker process ran all window long: it has a CPU (handing over made it busy).
    free, _ = verdict_after(gauge, tmp_path, 7, {cpu: 0}, 100 + round(2 * WINDOW / TICK))
    assert free
    # Half a CPU is not enough: two busy processes share it.
    ticks = round(0.5 * WINDOW / TICK)
    free, spent = verdict_after(gauge, tmp_path, 7, {cpu: 0}, 100 + round(2 * WINDOW / TICK) + ticks)
    assert ticks * TICK / spent < SPARE_THRESHOLD and not free
    gauge.close()


def test_idle_cpus_this_process_may_not_use_do_not_count(tmp_path, ours):
    other = max(ours) + 1  # a CPU outside this process's affinity (another job's core)
    gauge = gauge_on(tmp_path, 9, {other: 0}, 0)
    free, _ = verdict_after(gauge, tmp_path, 9, {other: round(4 * WINDOW / TICK)}, 0)
    assert not free
    gauge.close()


def test_unreadable_counters_leave_the_verdict_as_it_was(tmp_path, ours):
    cpu = min(ours)
    gauge = gauge_on(tmp_path, 5, {cpu: 0}, 0)
    free, _ = verdict_after(gauge, tmp_path, 5, {cpu: 0}, 0)
    assert not free
    # A truncated process file and a short CPU row: no exception in the task process, no new verdict.
    (tmp_path / "5" / "stat").write_text("5 (a")
    time.sleep(WINDOW)
    assert not gauge.available()
    write_proc(tmp_path, 5, {cpu: 10_000}, 0)
    (tmp_path / "stat").write_text(f"cpu{cpu} 1 2\n")
    time.sleep(WINDOW)
    assert not gauge.available()
    gauge.close()


def test_without_procfs_it_always_hands_over(tmp_path):
    gauge = SpareCpu(os.getpid(), proc=str(tmp_path / "missing"), window=0.0)
    time.sleep(0.01)
    assert gauge.available() and gauge.available()
    gauge.close()


def test_real_proc_a_busy_cpu_is_free_only_for_the_process_that_keeps_it_busy():
    """Pinned to one CPU with a busy loop on it: no CPU is free for a sleeper; for the busy loop itself, there is."""
    saved = os.sched_getaffinity(0)
    cpu = max(saved)
    os.sched_setaffinity(0, {cpu})
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # inherits the affinity
    try:
        time.sleep(0.1)
        for_sleeper = SpareCpu(os.getpid(), window=0.3)  # this test process, asleep meanwhile
        for_hog = SpareCpu(hog.pid, window=0.3)
        time.sleep(0.35)
        assert not for_sleeper.available(), "a CPU running a busy loop is not free for another process"
        assert for_hog.available(), "the busy loop's own CPU time counts as free for it"
        for_sleeper.close()
        for_hog.close()
    finally:
        hog.kill()
        hog.wait()
        os.sched_setaffinity(0, saved)
