"""Workers submitted to a real SLURM: they serve, drain before their limit, and leave nothing behind."""

from __future__ import annotations

import time
from pathlib import Path

from fs_task_queue import Queue
from fs_task_queue.cli import main
from fs_task_queue.slurm import submit_workers
from fs_task_queue.status import JobStatus

from .conftest import SlurmCluster
from .support import WAIT, job_log, wait_for, worker_processes
from .tasks import first_run_hangs, hold_until, slurm_job_of_task


def test_workers_drain_a_queue(slurm: SlurmCluster, tmp_path: Path, capsys: object) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    release = tmp_path / "release"
    holder = queue.enqueue(hold_until, str(release))
    jobs = [queue.enqueue(slurm_job_of_task) for _ in range(10)]
    submitted = time.monotonic()
    ids = submit_workers(
        qpath, 2, time="5:00", output=str(tmp_path / "slurm-%j.out"), worker_args=["--burst", "--log-level=INFO"]
    )
    assert len(ids) == 2
    wait_for(lambda: holder.get_status() is JobStatus.STARTED, what="the first task to start")
    first_task_after = time.monotonic() - submitted
    # While the holder runs: its worker shows its SLURM job, partition and time left.
    (worker,) = [w for w in queue.workers() if holder.id in w.running]  # the other may run a quick one
    assert worker.slurm_job_id in ids and worker.partition == "debug"
    assert worker.slurm_end_time is not None and 200 < worker.slurm_end_time - time.time() <= 300
    assert main(["info", str(qpath)]) == 0
    info = capsys.readouterr().out  # type: ignore[attr-defined]
    assert f"slurm job {worker.slurm_job_id} (debug)" in info and "left" in info
    release.touch()
    assert {job.wait(timeout=WAIT) for job in jobs} <= set(ids)
    assert holder.wait(timeout=WAIT) in ids
    wait_for(lambda: not slurm.jobs(), what="the worker jobs to end (burst)")
    assert [slurm.job_state(i) for i in ids] == ["COMPLETED", "COMPLETED"]
    log = job_log(tmp_path, ids[0])
    assert f"runs in SLURM job {ids[0]} (partition debug)" in log and "fs-task-queue" in log
    assert worker_processes(qpath) == []
    print(f"slurm submit -> first task running: {first_task_after:.2f} s")


def test_a_real_timeout_puts_the_running_task_back(slurm: SlurmCluster, tmp_path: Path) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    marker = tmp_path / "runs"
    job = queue.enqueue(first_run_hangs, str(marker))  # no retries: a counted attempt would fail it
    # The worker looks at squeue too rarely to notice the change: SLURM's SIGTERM is what it gets.
    (first,) = submit_workers(
        qpath, time="10:00", output=str(tmp_path / "slurm-%j.out"), worker_args=["--walltime-check=600"]
    )
    wait_for(lambda: marker.exists() and job.get_status() is JobStatus.STARTED, what="the task to start")
    slurm.run("scontrol", "update", f"JobId={first}", "TimeLimit=0")
    updated = time.monotonic()
    wait_for(lambda: slurm.job_state(first) == "TIMEOUT", timeout=30 + 2 * slurm.KILL_WAIT + 10, what="TIMEOUT")
    print(f"TimeLimit=0 -> TIMEOUT: {time.monotonic() - updated:.1f} s")
    assert job.get_status() is JobStatus.QUEUED
    log = job_log(tmp_path, first)
    assert "received SIGTERM from SLURM" in log, log
    assert worker_processes(qpath) == []
    (second,) = submit_workers(qpath, time="5:00", output=str(tmp_path / "slurm-%j.out"), worker_args=["--burst"])
    assert job.wait(timeout=WAIT) == "done"
    # Two runs: the one SLURM ended and the one that finished; none lost, none run twice to the end.
    assert marker.read_text().split() == [first, second]
    assert job.info().status == "finished"


def test_a_task_that_does_not_fit_is_left_for_another_worker(slurm: SlurmCluster, tmp_path: Path) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    long = queue.enqueue_call(slurm_job_of_task, expected_duration=3600)
    short = queue.enqueue_call(slurm_job_of_task, expected_duration=5)
    (job_id,) = submit_workers(qpath, time="10:00", output=str(tmp_path / "slurm-%j.out"), worker_args=["--burst"])
    assert short.wait(timeout=WAIT) == job_id
    wait_for(lambda: slurm.job_state(job_id) == "COMPLETED", what="the burst worker to end")
    assert long.get_status() is JobStatus.QUEUED
    assert f"job {long.id} expects to run 3600 s" in job_log(tmp_path, job_id)


def test_a_worker_drains_when_its_end_moves_closer(slurm: SlurmCluster, tmp_path: Path) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    marker = tmp_path / "runs"
    job = queue.enqueue(first_run_hangs, str(marker))
    (job_id,) = submit_workers(
        qpath, time="10:00", output=str(tmp_path / "slurm-%j.out"), worker_args=["--walltime-check=1"]
    )
    wait_for(lambda: marker.exists() and job.get_status() is JobStatus.STARTED, what="the task to start")
    updated = time.monotonic()
    slurm.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=0")
    # The worker sees the new end within a second or two and puts its task back before SLURM's tick.
    wait_for(lambda: job.get_status() is JobStatus.QUEUED, what="the task to be put back")
    print(f"end moved to now -> task put back: {time.monotonic() - updated:.2f} s")
    wait_for(lambda: slurm.job_state(job_id) in ("COMPLETED", "TIMEOUT"), what="the job to end")
    log = job_log(tmp_path, job_id)
    assert f"SLURM job {job_id} ends in" in log, log
    assert worker_processes(qpath) == []
