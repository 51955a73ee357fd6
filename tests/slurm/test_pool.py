"""A queue's SLURM pool against a real SLURM: scaling to a backlog, caps, and workers submitting successors."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest

from fs_task_queue import Queue
from fs_task_queue.cli import main
from fs_task_queue.errors import SlurmError
from fs_task_queue.slurm import pool_job_name, read_policy, scale, submit_workers

from .conftest import SlurmCluster
from .support import WAIT, job_log, wait_for
from .tasks import hold_until, slurm_job_of_task


def has_successor(tmp_path: Path, job_id: str) -> bool:
    return "successor of SLURM job" in job_log(tmp_path, job_id)


def pool_jobs(slurm: SlurmCluster, qpath: Path) -> list[str]:
    """Running and pending jobs of the queue's pool."""
    return slurm.run("squeue", "-h", "-o", "%i", "-n", pool_job_name(qpath), "-t", "R,CF,PD").split()


def test_scale_from_a_backlog_up_to_max(
    slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    release = tmp_path / "release"
    jobs = [queue.enqueue(hold_until, str(release)) for _ in range(8)]
    out = str(tmp_path / "slurm-%j.out")
    assert main(["slurm", "submit", str(qpath), "--time", "5:00", "--output", out, "--max", "3"]) == 0
    assert len(pool_jobs(slurm, qpath)) == 1
    assert main(["slurm", "scale", str(qpath)]) == 0
    assert "submitted 2 of the 2 needed (pool size 3)" in capsys.readouterr().out
    assert len(pool_jobs(slurm, qpath)) == 3
    # Enough now: running or pending, the pool is full and nothing more is submitted.
    assert main(["slurm", "scale", str(qpath)]) == 0
    assert "enough (pool size 3)" in capsys.readouterr().out
    assert len(pool_jobs(slurm, qpath)) == 3
    assert main(["info", str(qpath)]) == 0
    assert "SLURM pool: at most 3 worker(s), 3 pending, 10 submission(s) a minute" in capsys.readouterr().out
    wait_for(lambda: queue.stats()["started"] == 3, what="three workers each running a task")
    release.touch()
    served_by = {job.wait(timeout=WAIT) for job in jobs}
    assert len(served_by) == 3 and served_by == set(pool_jobs(slurm, qpath))


def test_caps_stop_submissions_with_a_message(slurm: SlurmCluster, tmp_path: Path) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    for _ in range(6):
        queue.enqueue(hold_until, str(tmp_path / "never"))
    out = str(tmp_path / "slurm-%j.out")
    submit_workers(qpath, time="5:00", output=out, max_workers=5, max_per_minute=2)
    # The submission above counts: one more this minute.
    first = scale(queue)
    assert len(first.submitted) == 1
    assert "held back by the cap of 2 submission(s) a minute" in first.message
    second = scale(queue)
    assert second.submitted == [] and "held back by the cap of 2 submission(s) a minute" in second.message
    assert len(pool_jobs(slurm, qpath)) == 2
    # Failed submissions: counted, one per call (no loop), then no more until the pool is set again.
    with pytest.raises(SlurmError):
        submit_workers(qpath, time="5:00", output=out, partition="nosuch", max_workers=5)
    for attempt in (1, 2, 3):
        result = scale(queue)
        assert result.submitted == [] and f"a submission failed ({attempt} in a row)" in result.message
    assert "no more submissions until the pool is set again" in result.message
    with pytest.raises(SlurmError, match="the last 3 submissions or worker starts failed"):
        scale(queue)
    policy = read_policy(queue)
    assert policy is not None and "STOPPED after 3 failed submissions" in policy.describe()


def test_a_worker_near_its_limit_submits_its_successor(slurm: SlurmCluster, tmp_path: Path) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    release = tmp_path / "release"
    holder = queue.enqueue(hold_until, str(release))
    rest = [queue.enqueue(slurm_job_of_task) for _ in range(4)]
    (first,) = submit_workers(
        qpath,
        time="10:00",
        output=str(tmp_path / "slurm-%j.out"),
        worker_args=["--walltime-check=1", "--walltime-margin=500"],  # margin: a quarter of 10 min
        max_workers=1,
    )
    wait_for(lambda: holder.get_status().value == "started", what="the first task to start")
    # 2 minutes from its start: within the 150 s margin, the worker submits its successor and drains.
    slurm.run("scontrol", "update", f"JobId={first}", "TimeLimit=2")
    wait_for(lambda: "successor of SLURM job" in job_log(tmp_path, first), what="the successor")
    log = job_log(tmp_path, first)
    assert "submitted 1 of the 1 needed" in log, log
    (successor,) = [j for j in pool_jobs(slurm, qpath) if j != first]
    assert "afterany" in slurm.run("scontrol", "show", "job", successor)
    released = time.monotonic()
    release.touch()
    assert holder.wait(timeout=WAIT) == first
    assert {job.wait(timeout=WAIT) for job in rest} == {successor}
    print(f"predecessor's last task released -> successor's tasks done: {time.monotonic() - released:.2f} s")


def test_a_worker_outside_the_pool_does_not_replace_itself(slurm: SlurmCluster, tmp_path: Path) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    release = tmp_path / "release"
    holder = queue.enqueue(hold_until, str(release))
    queue.enqueue(slurm_job_of_task)
    out = str(tmp_path / "slurm-%j.out")
    with pytest.raises(SlurmError):  # records the pool (size 1), submits nothing
        submit_workers(qpath, time="5:00", output=out, partition="nosuch", max_workers=1)
    # Submitted by hand (not a pool job): counting it out of a pool it is not in would overfill the pool.
    walltime_args = ["--walltime-check=1", "--walltime-margin=500"]
    (own,) = submit_workers(qpath, time="10:00", output=out, worker_args=walltime_args)
    wait_for(lambda: holder.get_status().value == "started", what="the first task to start")
    slurm.run("scontrol", "update", f"JobId={own}", "TimeLimit=2")
    wait_for(lambda: "successor of SLURM job" in job_log(tmp_path, own), what="the worker's decision")
    assert "is not one of the pool's jobs" in job_log(tmp_path, own)
    assert slurm.jobs() == [own]
    release.touch()


def test_a_whole_pool_near_its_limit_is_replaced(slurm: SlurmCluster, tmp_path: Path) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    release = tmp_path / "release"
    holders = [queue.enqueue(hold_until, str(release)) for _ in range(2)]
    rest = [queue.enqueue(slurm_job_of_task) for _ in range(4)]
    walltime_args = ["--walltime-check=1", "--walltime-margin=500"]
    out = str(tmp_path / "slurm-%j.out")
    first = submit_workers(qpath, 2, time="10:00", output=out, worker_args=walltime_args, max_workers=2)
    wait_for(lambda: queue.stats()["started"] == 2, what="both workers running a task")
    # One after the other: the second worker sees the first one's pending successor, which stands
    # for the first (draining) worker, not for itself.
    for job_id in first:
        slurm.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=2")
        wait_for(partial(has_successor, tmp_path, job_id), what=f"job {job_id}'s successor")
        assert "submitted 1 of the 1 needed" in job_log(tmp_path, job_id), job_log(tmp_path, job_id)
    successors = set(pool_jobs(slurm, qpath)) - set(first)
    assert len(successors) == 2
    release.touch()
    assert {job.wait(timeout=WAIT) for job in holders} == set(first)
    assert {job.wait(timeout=WAIT) for job in rest} <= successors
