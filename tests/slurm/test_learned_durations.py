"""Run times learned from earlier runs of the same function keep a SLURM worker from claiming what cannot finish."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fs_task_queue import Queue, Worker
from fs_task_queue.cli import main
from fs_task_queue.durations import DurationLog, duration_key, read_estimate
from fs_task_queue.slurm import submit_workers
from fs_task_queue.status import JobStatus

from .conftest import SlurmCluster
from .support import WAIT, job_log, wait_for


# Task functions live here: worker processes get this module's functions by value (conftest).
def quick_step() -> str:
    return os.environ.get("SLURM_JOB_ID", "")


def long_simulation() -> str:
    return os.environ.get("SLURM_JOB_ID", "")


def never_seen() -> str:
    return os.environ.get("SLURM_JOB_ID", "")


def test_a_function_known_to_take_longer_is_not_claimed(
    slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    # Earlier runs, for real, by a worker outside SLURM: the queue learns quick_step's run time.
    for _ in range(2):
        queue.enqueue(quick_step)
    assert Worker(queue, burst=True, isolation="none", walltime=None).run() == 2
    quick_key = duration_key({"fn": f"{__name__}.quick_step"})
    assert quick_key is not None
    learned = read_estimate(queue.storage, quick_key)
    assert learned is not None and learned.runs == 2
    # long_simulation's earlier runs took 50 minutes each: that cannot run in a test, so its record
    # is written through the same writer the workers use (a fake for the runs, not for the file).
    long_job = queue.enqueue(long_simulation)
    long_key = duration_key({"fn": long_job.info().function})
    assert long_key is not None
    history = DurationLog(queue.storage)
    for _ in range(3):
        history.add(long_key, 3000.0)
    history.flush()
    short_job = queue.enqueue(quick_step)
    first_run = queue.enqueue(never_seen)  # nothing learned: not held back
    # A 10-minute job: 540 s to claim in, less than long_simulation's 3000 s.
    (job_id,) = submit_workers(qpath, time="10:00", output=str(tmp_path / "slurm-%j.out"), worker_args=["--burst"])
    assert short_job.wait(timeout=WAIT) == job_id
    assert first_run.wait(timeout=WAIT) == job_id
    wait_for(lambda: slurm.job_state(job_id) == "COMPLETED", what="the burst worker to end")
    assert long_job.get_status() is JobStatus.QUEUED
    info = long_job.info()
    assert info.attempt == 1 and info.history == ()  # left queued untouched: not an attempt
    log = job_log(tmp_path, job_id)
    assert f"job {long_job.id} expects to run 3000 s (the longest of its function's last 3 runs)" in log, log
    # The SLURM worker learned too (its task loop flushed when it ended), and info shows it.
    assert main(["info", str(qpath)]) == 0
    out = capsys.readouterr().out
    assert f"{quick_key}: up to" in out and "(3 run(s))" in out
    assert f"{long_key}: up to 50.0 min (3 run(s))" in out
    assert f"{__name__}.never_seen: up to" in out
