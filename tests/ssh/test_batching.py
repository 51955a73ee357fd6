"""Bulk reads over SSH take a few round trips for all jobs, not a few per job (counted by the storage).

Without batching, a first status poll of N finished jobs reads each outcome at
three round trips, and a purge costs about eight per job.
"""

from __future__ import annotations

import operator
import time

from helpers import run_burst

from fs_task_queue import JobStatus, Queue
from fs_task_queue.maintenance import purge
from fs_task_queue.plugins import SSHQueue


def test_first_snapshot_of_finished_jobs_reads_all_outcomes_together(remote: SSHQueue, local: Queue) -> None:
    group = remote.map(operator.pos, range(120))
    run_burst(local.path)
    fresh = SSHQueue(remote.storage.location, **_options(remote))
    try:
        counts = fresh.storage.counts  # type: ignore[attr-defined]
        before = counts.round_trips
        states = fresh.snapshot([job.id for job in group])
        assert {s.status for s in states.values()} == {JobStatus.FINISHED} and len(states) == 120
        assert counts.round_trips - before <= 12  # two listings (4 each) and one batch of reads (3)
        before = counts.round_trips
        assert fresh.stats()["finished"] == 120
        assert counts.round_trips - before <= 30  # listings and the worker records: no read per job
    finally:
        fresh.close()


def test_purge_over_ssh_is_batched(remote: SSHQueue, local: Queue) -> None:
    group = remote.map(print, range(100))  # each job leaves a stdout file in jobs/<id>/
    run_burst(local.path)
    assert all(local.storage.exists(f"jobs/{job.id}/stdout") for job in group)
    counts = remote.storage.counts  # type: ignore[attr-defined]
    before = counts.round_trips
    report = purge(remote, older_than=0)
    assert sorted(report) == sorted(job.id for job in group)
    assert counts.round_trips - before <= 45  # about 10 listings and 10 batches, whatever the number of jobs
    assert local.storage.listdir("jobs") == [] and local._result_ids() == []


def _options(queue: SSHQueue) -> dict[str, object]:
    return dict(vars(queue.storage.options))  # type: ignore[attr-defined]


def test_an_enqueue_is_three_round_trips_even_into_a_new_shard(remote_sftp: SSHQueue) -> None:
    remote = remote_sftp
    remote.enqueue(operator.pos, 0)  # connected, queue checked, clock measured
    counts = remote.storage.counts  # type: ignore[attr-defined]
    for i in range(3):
        time.sleep(0.15)  # into a new shard (one per tenth of a second): its folder is looked at and made
        before = counts.round_trips
        remote.enqueue(operator.pos, i)
        assert counts.round_trips - before == 3  # open (+ look at the shard), write (+ mkdir), rename
