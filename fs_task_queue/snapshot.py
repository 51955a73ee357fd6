"""A batched status query: where many jobs are, from a few directory listings.

Asking each :class:`~fs_task_queue.job.Job` for its status costs two to four
file operations a job, ``job.info()`` of a running job about ten: a notebook
showing 100 live jobs would make hundreds of operations a tick, and over SSH
every one is a round trip. :func:`snapshot` classifies any number of jobs with
one listing of ``claimed/`` (plus one per claiming worker) and either one listing
of ``results/`` or, for a few jobs, one look each; it reads a result only the
first time its job is seen done, and a progress file only for running jobs.
What it costs does not grow with the number of queued jobs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fs_task_queue import layout
from fs_task_queue.ids import job_id_of
from fs_task_queue.progress import Progress
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.job import Job
    from fs_task_queue.queue import Queue

__all__ = ["JobState", "snapshot"]

#: Up to this many undecided jobs, one look at each result is cheaper than listing results/.
LOOK_EACH_MAX = 8


@dataclass(frozen=True)
class JobState:
    """What a :func:`snapshot` found for one job."""

    id: str
    status: JobStatus
    #: The worker (claimer) holding the task, while the job is started.
    worker: str | None = None
    #: The last progress report, read for started jobs only.
    progress: Progress | None = None


def parse_progress(data: bytes) -> Progress | None:
    """A ``jobs/<id>/progress`` file's report, or None if it is not one."""
    try:
        record = json.loads(data)
        return Progress(
            done=record.get("done", 0),
            total=record.get("total"),
            message=record.get("message"),
            updated_at=record.get("at", 0.0),
        )
    except (ValueError, AttributeError):
        return None


def snapshot(queue: Queue, jobs: Iterable[Job | str], *, progress: bool = True) -> dict[str, JobState]:
    """The state of each of ``jobs`` (jobs or ids), by job id, from as few file operations as it can.

    A job that is neither claimed nor done is reported QUEUED (waiting, or
    delayed for a retry): the query never lists ``queued/``. With
    ``progress=False`` started jobs' progress files are not read.
    """
    storage = queue.storage
    out: dict[str, JobState] = {}
    undecided: list[str] = []
    for job in jobs:
        job_id = job if isinstance(job, str) else job.id
        if job_id in out:
            continue
        cached = queue._status_cache.get(job_id)  # finished and canceled never change
        if cached is not None:
            out[job_id] = JobState(job_id, cached)
        else:
            undecided.append(job_id)
    if not undecided:
        return out
    # claimed/ before results/: a job that finishes between the two looks is
    # seen done, never missed (its result is published before its claim goes).
    claimers = {job_id_of(n): w for w in queue._list(layout.CLAIMED) for n in queue._list_tasks(layout.claimed_dir(w))}
    if len(undecided) <= LOOK_EACH_MAX:
        has_result = {j for j in undecided if storage.exists(layout.result_path(j))}
    else:
        has_result = set(queue._result_ids()).intersection(undecided)
    # Each outcome is read once, all of them together (over SSH: a few round trips for all).
    statuses = queue._result_statuses([j for j in undecided if j in has_result])
    running = [j for j in undecided if statuses.get(j) is None and j in claimers]
    reports = storage.read_many([layout.job_file(j, "progress") for j in running]) if progress and running else {}
    for job_id in undecided:
        status = statuses.get(job_id)
        if status is not None:
            out[job_id] = JobState(job_id, status)
        elif job_id in claimers:
            data = reports.get(layout.job_file(job_id, "progress"))
            report = parse_progress(data) if isinstance(data, bytes) else None
            out[job_id] = JobState(job_id, JobStatus.STARTED, claimers[job_id], report)
        else:
            out[job_id] = JobState(job_id, JobStatus.QUEUED)
    return out
