"""`fs-task-queue slurm cancel` and `cancel_workers`: the queue's worker jobs end, and nothing is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from fs_task_queue import JobStatus, Queue
from fs_task_queue.cli import main
from fs_task_queue.slurm import cancel_workers, submit_workers

from .conftest import SlurmCluster
from .support import wait_for
from .tasks import hold_until


def test_cancel_pending_then_running_puts_the_running_task_back(
    slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = Queue(tmp_path / "q")
    out = str(tmp_path / "slurm-%j.out")
    go = tmp_path / "go"
    holder = queue.enqueue(hold_until, str(go))
    (running,) = submit_workers(queue, 1, time="10:00", output=out)
    wait_for(lambda: holder.get_status() is JobStatus.STARTED, what="the task to start")
    held = submit_workers(queue, 2, time="10:00", output=out, sbatch_args=["--hold"])
    other = submit_workers(tmp_path / "q", 1, time="10:00", output=out, sbatch_args=["--hold"])  # by path
    # --pending: only the jobs that have not started (all of this queue's), the running one stays.
    assert main(["slurm", "cancel", str(queue.path), "--pending"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("canceled 3 worker job(s): ") and set(said.split(": ")[1].split()) == {*held, *other}
    wait_for(lambda: not {*held, *other} & set(slurm.jobs()), what="the pending jobs to go")
    assert running in slurm.jobs()
    # Then the running one: SLURM's SIGTERM, the task goes back to the queue (not an attempt), nothing lost.
    assert cancel_workers(queue) == [running]
    wait_for(lambda: running not in slurm.jobs(), what="the running job to end")
    assert holder.get_status() is JobStatus.QUEUED
    assert holder.info().attempt == 1 and not holder.info().history
    assert cancel_workers(queue) == []
    go.touch()
    (again,) = submit_workers(queue, 1, time="10:00", output=out, max_idle=1)
    assert holder.wait(timeout=60) == again
