"""Submitted worker jobs are visible while pending, and jobs whose worker never starts stop the pool."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fs_task_queue import Queue
from fs_task_queue.cli import main
from fs_task_queue.errors import SlurmError
from fs_task_queue.slurm import list_jobs, read_policy, scale, submit_workers, write_policy

from .conftest import SlurmCluster
from .support import WAIT, wait_for
from .tasks import hold_until, slurm_job_of_task


def test_pending_and_running_jobs_are_listed(
    slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    release = tmp_path / "release"
    holder = queue.enqueue(hold_until, str(release))
    out = str(tmp_path / "slurm-%j.out")
    # Held: pending until released, like a job waiting for its turn on a busy cluster.
    (job_id,) = submit_workers(qpath, time="5:00", output=out, partition="debug", sbatch_args=["--hold"])
    (pending,) = list_jobs(queue)
    assert (pending.job_id, pending.state, pending.partition, pending.worker_id) == (job_id, "pending", "debug", None)
    assert pending.end_time is None and pending.submitted <= time.time()
    assert main(["info", str(qpath)]) == 0
    info = capsys.readouterr().out
    assert "SLURM jobs: 0 running, 1 pending" in info and f"job {job_id} (debug) pending for" in info
    slurm.run("scontrol", "release", job_id)
    wait_for(lambda: holder.get_status().value == "started", what="the worker to start")
    (running,) = list_jobs(queue)
    (worker,) = queue.workers()
    assert (running.state, running.worker_id, running.end_time) == ("running", worker.id, worker.slurm_end_time)
    assert main(["info", str(qpath)]) == 0
    assert f"job {job_id} (debug) running: worker {worker.id}" in capsys.readouterr().out
    release.touch()
    holder.wait(timeout=WAIT)
    slurm.run("scancel", job_id)
    wait_for(lambda: not slurm.jobs(), what="the job to end")
    assert [j.state for j in list_jobs(queue)] == ["ended"]
    # Where squeue runs, info prunes the records of ended jobs (a started one is no failed start).
    assert main(["info", str(qpath)]) == 0
    assert "without starting" not in capsys.readouterr().out
    assert list_jobs(queue) == []


def test_failed_worker_starts_stop_the_pool(slurm: SlurmCluster, tmp_path: Path) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    jobs = [queue.enqueue(slurm_job_of_task) for _ in range(3)]
    out = str(tmp_path / "slurm-%j.out")
    # The batch script runs, but the worker refuses its arguments and exits: it never starts.
    (first,) = submit_workers(qpath, time="5:00", output=out, max_workers=1, worker_args=["--no-such-option"])
    submitted = [first]
    for failures in (1, 2):
        wait_for(lambda: not slurm.jobs(), what="the broken job to end")
        result = scale(queue)  # counts the job that never started a worker, submits another
        policy = read_policy(queue)
        assert policy is not None and policy.failures == failures, policy
        assert len(result.submitted) == 1
        submitted += result.submitted
    wait_for(lambda: not slurm.jobs(), what="the broken job to end")
    with pytest.raises(SlurmError) as stopped:
        scale(queue)
    last = submitted[-1]
    message = str(stopped.value)
    assert "the last 3 submissions or worker starts failed" in message
    assert f"SLURM job {last} ended without starting its worker; its output is in {tmp_path}/slurm-{last}.out" in (
        message
    )
    assert "unrecognized arguments: --no-such-option" in (tmp_path / f"slurm-{last}.out").read_text()
    assert not slurm.jobs()  # nothing more submitted
    assert list_jobs(queue) == []  # their records are pruned
    # A healthy worker that starts resets the count (the pool was fixed before the third failure).
    policy = read_policy(queue)
    assert policy is not None
    policy.failures = 2
    policy.options.worker_args = ("--burst",)
    write_policy(queue, policy)
    (healthy,) = scale(queue).submitted
    assert {job.wait(timeout=WAIT) for job in jobs} == {healthy}
    wait_for(lambda: not slurm.jobs(), what="the healthy burst worker to end")
    assert scale(queue).submitted == []  # nothing waits
    policy = read_policy(queue)
    assert policy is not None and policy.failures == 0 and policy.last_error == ""
