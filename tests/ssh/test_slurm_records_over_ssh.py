"""SLURM job records and learned run times through SSH: core functions that use the storage seam only."""

from __future__ import annotations

from fs_task_queue import Queue
from fs_task_queue.durations import DurationLog, learned_durations, read_estimate
from fs_task_queue.plugins import SSHQueue
from fs_task_queue.slurm import SlurmJob, SubmitOptions, list_jobs, mark_started, record_jobs


def test_list_jobs_and_learned_durations_over_ssh(remote: SSHQueue, local: Queue) -> None:
    # What submit_workers and a starting worker write on the cluster side.
    record_jobs(local, ["101", "102"], SubmitOptions(time="5:00", partition="short"))
    mark_started(local, SlurmJob("102", "short"), "node7-1-abc")
    jobs = list_jobs(remote)
    assert [(j.job_id, j.state, j.partition) for j in jobs] == [("101", "pending", "short"), ("102", "ended", "short")]
    assert jobs[1].worker_id == "node7-1-abc"
    assert jobs[0].output is not None and jobs[0].output.endswith("slurm-101.out")
    # A run time recorded through SSH is read on the cluster side, and the other way round.
    writer = DurationLog(remote.storage)
    writer.add("m.simulate", 42.0)
    estimate = read_estimate(local.storage, "m.simulate")
    assert estimate is not None and estimate.high == 42.0
    assert [e.key for e in learned_durations(remote)] == ["m.simulate"]
