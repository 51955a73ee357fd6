"""SLURM's warning signal (--signal=B:USR1@N): the worker drains, its running task finishes, nothing is lost."""

from __future__ import annotations

import re
import time
from pathlib import Path

from fs_task_queue import Queue
from fs_task_queue.slurm import submit_workers

from .conftest import SlurmCluster
from .support import WAIT, job_log, wait_for
from .tasks import hold_until, note_run


def test_usr1_drains_the_worker_and_the_rest_is_served_by_another(slurm: SlurmCluster, tmp_path: Path) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    release = tmp_path / "release"
    runs = tmp_path / "runs"
    holder = queue.enqueue(hold_until, str(release), str(runs))
    rest = [queue.enqueue(note_run, str(runs)) for _ in range(3)]
    out = str(tmp_path / "slurm-%j.out")
    # A 2-minute job warned 110 s before its end: SLURM sends USR1 on its next 30 s tick. The worker
    # looks at squeue too rarely to drain by itself (its own margin is 30 s), and its --grace is 2 s:
    # a plain graceful stop would kill the running task 2 s after the signal. It is a pool's job
    # (--max 2): warned, it submits its successor, which serves the rest.
    (first,) = submit_workers(
        qpath,
        time="2:00",
        output=out,
        sbatch_args=["--signal=B:USR1@110"],
        worker_args=["--walltime-check=600", "--grace=2"],
        max_workers=2,
    )
    wait_for(lambda: holder.get_status().value == "started", what="the first task to start")
    wait_for(lambda: "received SIGUSR1" in job_log(tmp_path, first), timeout=90, what="SLURM's USR1")
    signalled = time.monotonic()
    # Past the --grace: the task still runs (it may go on until 10 s before the job's end).
    time.sleep(4)
    assert holder.get_status().value == "started", job_log(tmp_path, first)
    log = job_log(tmp_path, first)
    assert "stopping: received SIGUSR1 from SLURM" in log and "may go on for" in log, log
    assert all(job.get_status().value == "queued" for job in rest)  # it claims nothing more
    release.touch()
    assert holder.wait(timeout=WAIT) == first
    wait_for(lambda: slurm.job_state(first) == "COMPLETED", what="the drained worker to end")
    print(f"USR1 -> worker ended: {time.monotonic() - signalled:.1f} s")
    said = re.search(rf"successor of SLURM job {first}: .* submitted 1 of .* as job\(s\) (\d+)", log)
    assert said, log
    second = said.group(1)
    assert {job.wait(timeout=WAIT) for job in rest} == {second}
    # Nothing lost, nothing run twice, no attempt used up.
    assert sorted(runs.read_text().split()) == sorted([first] + [second] * 3)
    assert all(job.info().attempt == 1 and job.info().history == () for job in [holder, *rest])


def test_a_task_that_cannot_finish_after_usr1_is_put_back_not_counted(slurm: SlurmCluster, tmp_path: Path) -> None:
    qpath = tmp_path / "queue"
    queue = Queue(qpath)
    release = tmp_path / "release"
    runs = tmp_path / "runs"
    job = queue.enqueue(hold_until, str(release), str(runs))  # no retries: a counted attempt would fail it
    out = str(tmp_path / "slurm-%j.out")
    # A 1-minute job warned 50 s before its end: its task never ends by itself, so it is put back
    # kill_margin (7.5 s here) before the end, not killed by SLURM and not counted.
    (first,) = submit_workers(
        qpath, time="1:00", output=out, sbatch_args=["--signal=B:USR1@50"], worker_args=["--walltime-check=600"]
    )
    wait_for(lambda: job.get_status().value == "started", what="the task to start")
    wait_for(lambda: "received SIGUSR1 from SLURM" in job_log(tmp_path, first), timeout=60, what="SLURM's USR1")
    wait_for(lambda: slurm.job_state(first) in ("COMPLETED", "TIMEOUT"), timeout=90, what="the job to end")
    log = job_log(tmp_path, first)
    assert slurm.job_state(first) == "COMPLETED", log  # it ended before SLURM's limit
    assert "put back in the queue" in log, log
    assert job.get_status().value == "queued"
    assert job.info().attempt == 1 and job.info().history == ()
    release.touch()
    (second,) = submit_workers(qpath, time="5:00", output=out, worker_args=["--burst"])
    assert job.wait(timeout=WAIT) == second
    assert runs.read_text().split() == [first, second]
    assert job.info().status == "finished" and job.info().attempt == 1
