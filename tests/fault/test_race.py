"""Many workers racing for many tasks: every task runs once and commits once."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import pytest

from fs_task_queue.supervise import RUN_AHEAD_BUDGET

from .faultlib import CommitCounter, all_claimed, executions, mark, names, queued_names, wait_for

TASKS = 10_000


def test_commit_counter_sees_every_commit(tmp_path):
    """The committed>1 column is not vacuous: a replacing rename or a link into results/ is counted,
    even back to back, before the counter has read anything."""
    results, tmp = tmp_path / "q" / "results", tmp_path / "q" / "tmp"
    results.mkdir(parents=True)
    tmp.mkdir()
    counter = CommitCounter(results)
    try:
        for n in range(3):
            (tmp / f"t{n}.tmp").write_bytes(b"x")
            os.rename(tmp / f"t{n}.tmp", results / "job")  # the later ones replace the first
        (tmp / "l.tmp").write_bytes(b"x")
        os.link(tmp / "l.tmp", results / "other")
        (results / ".hidden").write_bytes(b"")
    finally:
        counts = counter.close()
    assert counts == {"job": 3, "other": 1}


WORKERS = 4


@pytest.mark.timeout(180)
def test_workers_racing_for_10000_tasks(lab):
    t0 = time.monotonic()
    keys = [str(i) for i in range(TASKS)]
    submitted = lab.queue.map(mark, [str(lab.fx)] * TASKS, keys)
    jobs = dict(zip(keys, submitted, strict=True))
    t1 = time.monotonic()
    procs = [lab.worker(f"racer{n}", "--burst", "--log-level", "WARNING") for n in range(WORKERS)]
    for proc in procs:
        assert lab.procs.wait(proc, timeout=150) == 0, lab.procs.log(proc)
    t2 = time.monotonic()

    per_worker = Counter(job.info().worker for job in jobs.values())
    print(f"submitted {TASKS} in {t1 - t0:.1f} s, drained by {WORKERS} workers in {t2 - t1:.1f} s: {dict(per_worker)}")
    t = lab.tally(f"{WORKERS} workers race for {TASKS} tasks", jobs, note=f"drained in {t2 - t1:.1f} s")
    assert not t.lost and not t.executed_twice and not t.committed_twice
    assert not t.not_finished and not t.foreign_results
    assert sum(executions(lab.fx).values()) == TASKS
    assert len(names(lab.path / "results")) == TASKS
    assert sum(lab.commits.snapshot().values()) == TASKS
    assert not queued_names(lab.path) and not all_claimed(lab.path)
    assert len(per_worker) == WORKERS, f"every worker should have won some claims: {dict(per_worker)}"


NEMESIS_TASKS = 2000
NEMESIS_KILLS = 10


@pytest.mark.timeout(180)
def test_random_kill9_of_workers_while_draining(lab):
    """A nemesis SIGKILLs a random worker every few hundred ms (a supervisor starts a new one)."""
    keys = [f"n{i}" for i in range(NEMESIS_TASKS)]
    n = len(keys)
    jobs = dict(zip(keys, lab.queue.map(mark, [str(lab.fx)] * n, keys, [0.0] * n, [0.01] * n), strict=True))
    # --max-lost high: here the deaths are the nemesis's doing, not the tasks' (with the default
    # of 3, a task that new workers keep picking up just before they are killed ends FAILED).
    args = ["--recover-interval", "0.5", "--max-poll-interval", "0.2", "--log-level", "WARNING", "--max-lost", "1000"]
    live = [lab.worker(f"n{i}", *args) for i in range(WORKERS)]
    started = len(live)
    rng = random.Random(20241128)
    results = lab.path / "results"
    kills = 0
    t0 = time.monotonic()
    while kills < NEMESIS_KILLS and len(names(results)) < NEMESIS_TASKS:
        time.sleep(rng.uniform(0.2, 0.6))
        victim = live.pop(rng.randrange(len(live)))
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
        kills += 1
        live.append(lab.worker(f"n{started}", *args))
        started += 1
    wait_for(lambda: len(names(results)) >= NEMESIS_TASKS, timeout=150, what="the survivors to drain the queue")
    drained = time.monotonic() - t0
    wait_for(lambda: not all_claimed(lab.path), what="every claim to be released")
    t = lab.tally(
        f"nemesis: {kills} x kill -9 during {NEMESIS_TASKS} tasks",
        jobs,
        note=f"drained in {drained:.1f} s; re-runs only of tasks held by killed workers",
    )
    assert not t.lost and not t.committed_twice and not t.not_finished and not t.foreign_results
    # Per death at most the running task and those whose outcomes were in flight: one,
    # or as many 10 ms tasks as fit in the run-ahead budget, plus the newest.
    per_death = 2 + int(RUN_AHEAD_BUDGET / 0.01)
    assert len(t.executed_twice) <= per_death * kills, "more re-executions than killed workers can explain"
    assert sum(lab.commits.snapshot().values()) == NEMESIS_TASKS
    assert queued_names(lab.path) == []
