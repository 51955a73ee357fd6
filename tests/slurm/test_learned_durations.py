"""Run times learned from earlier runs of the same function keep a SLURM worker from claiming what cannot finish."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fs_task_queue import Queue, Worker
from fs_task_queue.cli import main
from fs_task_queue.durations import DurationLog, duration_key, read_estimate
from fs_task_queue.slurm import submit_workers
from fs_task_queue.status import JobStatus

from .conftest import SlurmCluster
from .support import WAIT, job_log, wait_for
from .tasks import hold_until


# Task functions live here: worker processes get this module's functions by value (conftest).
def quick_step() -> str:
    return os.environ.get("SLURM_JOB_ID", "")


def long_simulation() -> str:
    return os.environ.get("SLURM_JOB_ID", "")


def never_seen() -> str:
    return os.environ.get("SLURM_JOB_ID", "")


def huge_simulation() -> str:
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
    # long_simulation's earlier runs took 5 minutes, huge_simulation's 50: that cannot run in a test,
    # so their records are written through the same writer the workers use (a fake for the runs, not
    # for the file).
    release = tmp_path / "release"
    holder = queue.enqueue(hold_until, str(release))
    long_job, huge_job = queue.enqueue(long_simulation), queue.enqueue(huge_simulation)
    history = DurationLog(queue.storage)
    keys = []
    for job, seconds in ((long_job, 300.0), (huge_job, 3000.0)):
        key = duration_key({"fn": job.info().function})
        assert key is not None
        keys.append(key)
        for _ in range(3):
            history.add(key, seconds)
    history.flush()
    long_key, huge_key = keys
    short_job = queue.enqueue(quick_step)
    first_run = queue.enqueue(never_seen)  # nothing learned: not held back
    # A 10-minute job (540 s to claim in at first), cut to 4 minutes while its first task runs: then
    # about 160 s are left, less than long_simulation's 300 s, which a fresh worker would have.
    (job_id,) = submit_workers(
        qpath, time="10:00", output=str(tmp_path / "slurm-%j.out"), worker_args=["--burst", "--walltime-check=1"]
    )
    wait_for(lambda: holder.get_status() is JobStatus.STARTED, what="the first task to start")
    slurm.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=4")
    time.sleep(3)  # --walltime-check=1: the worker has seen its new end by then
    release.touch()
    assert holder.wait(timeout=WAIT) == job_id
    assert short_job.wait(timeout=WAIT) == job_id
    assert first_run.wait(timeout=WAIT) == job_id
    # huge_simulation's 50 minutes are more than this worker ever had: held back here, it would be held
    # back by every worker of this size forever, so it runs (and would be put back at the margin).
    assert huge_job.wait(timeout=WAIT) == job_id
    wait_for(lambda: slurm.job_state(job_id) == "COMPLETED", what="the burst worker to end")
    assert long_job.get_status() is JobStatus.QUEUED
    info = long_job.info()
    assert info.attempt == 1 and info.history == ()  # left queued untouched: not an attempt
    log = job_log(tmp_path, job_id)
    assert f"job {long_job.id} expects to run 300 s (the longest of its function's last 3 runs)" in log, log
    assert f"job {huge_job.id}: its function's earlier runs took up to 3000 s, more than this worker ever had" in log
    # The SLURM worker learned too (its task loop flushed when it ended), and info shows it.
    assert main(["info", str(qpath)]) == 0
    out = capsys.readouterr().out
    assert f"{quick_key}: up to" in out and "(3 run(s))" in out
    assert f"{long_key}: up to 5.0 min (3 run(s))" in out
    assert f"{huge_key}: up to 50.0 min (4 run(s))" in out  # its quick run here counted
    assert f"{__name__}.never_seen: up to" in out
