"""A batched status query: where many jobs are, from a few directory listings.

Asking each :class:`~fs_task_queue.job.Job` for its status costs two to four
file operations a job, ``job.info()`` of a running job about ten: a notebook
showing 100 live jobs would make hundreds of operations a tick, and over SSH
every one is a round trip. :func:`snapshot` classifies any number of jobs with
one listing of ``claimed/`` (plus one per claiming worker) and either one listing
of ``results/`` or, for a few jobs, one look each; it reads a result only the
first time its job is seen done, and a progress file only for running jobs.
What it costs does not grow with the number of queued jobs.

Details for live views (when a job started, on which host, which attempt) are
found once per job and worker and remembered per queue: a ``stat`` of the
claimed task file and one read of its header the first time a job is seen
started, one read of ``claimed/<worker>/.identity`` per new worker. A done
job's times and error come from the result it reads anyway.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fs_task_queue import layout
from fs_task_queue.errors import FSQError
from fs_task_queue.ids import job_id_of
from fs_task_queue.progress import Progress
from fs_task_queue.serialize import RESULT_MAGIC, TASK_MAGIC, open_envelope
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.job import Job
    from fs_task_queue.queue import Queue
    from fs_task_queue.storage import Storage

__all__ = ["JobState", "snapshot"]

#: Up to this many undecided jobs, one look at each result is cheaper than listing results/.
LOOK_EACH_MAX = 8


@dataclass(frozen=True)
class JobState:
    """What a :func:`snapshot` found for one job."""

    id: str
    status: JobStatus
    #: The worker (claimer) holding the task while the job is started; the one that ran it once done.
    worker: str | None = None
    #: The last progress report, read for started jobs only.
    progress: Progress | None = None
    #: When the job's current attempt started (epoch seconds): while started, and once done.
    started_at: float | None = None
    #: Which attempt runs (or ran) the job: 1, then 2... after retries or a lost worker.
    attempt: int | None = None
    #: The host of ``worker``, if it is known.
    host: str | None = None
    #: When the job ended (done jobs whose result was read by this snapshot).
    ended_at: float | None = None
    #: ``"Type: message"`` of a failed or canceled job.
    error: str | None = None


@dataclass
class _Known:
    """What a queue's snapshots found once and need not look up again (all ids and workers seen)."""

    #: job id -> (worker, task name, started_at, attempt) of its current claim.
    claims: dict[str, tuple[str, str, float | None, int | None]] = field(default_factory=dict)
    #: worker id -> host name (None: unknown, e.g. its identity file is gone).
    hosts: dict[str, str | None] = field(default_factory=dict)
    #: job id -> the state of a job whose end is final (finished or canceled).
    ended: dict[str, JobState] = field(default_factory=dict)


# Per queue (two Queue objects of one directory compare equal and share it),
# gone with the queue objects.
_known: weakref.WeakKeyDictionary[Queue, _Known] = weakref.WeakKeyDictionary()
_known_lock = threading.Lock()


def _known_for(queue: Queue) -> _Known:
    with _known_lock:
        known = _known.get(queue)
        if known is None:
            known = _known[queue] = _Known()
        return known


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


def _ended_state(queue: Queue, job_id: str, data: bytes | OSError | None) -> JobState | None:
    """A done job's state from its result file's bytes (None if it has no valid one); final ones are remembered."""
    if not isinstance(data, bytes):
        return None  # gone meanwhile (requeued, purged), or unreadable
    try:
        header = open_envelope(RESULT_MAGIC, queue._key, job_id, data).header
        status = JobStatus(header["status"])
    except (OSError, FSQError, KeyError, ValueError):
        return None
    err = header.get("error") or {}
    error = f"{err.get('type', 'Error')}: {err.get('message', '')}" if err else None
    if status is JobStatus.CANCELED and error is None:
        error = "canceled"
    state = JobState(
        job_id,
        status,
        worker=header.get("worker"),
        started_at=header.get("start"),
        attempt=header.get("attempt"),
        host=header.get("host"),
        ended_at=header.get("end"),
        error=error,
    )
    if status is not JobStatus.FAILED:  # failed jobs can be requeued
        queue._status_cache[job_id] = status
        _known_for(queue).ended[job_id] = state
    return state


def _claim_details(queue: Queue, job_id: str, worker: str, name: str) -> tuple[float | None, int | None]:
    """(started_at, attempt) of a claimed task: a stat and a header read, once per claim."""
    known = _known_for(queue)
    seen = known.claims.get(job_id)
    if seen is not None and seen[:2] == (worker, name):
        return seen[2], seen[3]
    path = layout.claimed_path(worker, name)
    started: float | None = None
    attempt: int | None = None
    header: dict[str, Any] = {}
    try:
        header = open_envelope(TASK_MAGIC, queue._key, job_id, queue.storage.read(path)).header
        attempt = int(header.get("attempt", 1))
        started = claimed_at(queue.storage, worker, name, header.get("at"))
    except (OSError, FSQError, ValueError, TypeError):
        pass  # it ended or moved meanwhile: the next snapshot tells
    known.claims[job_id] = (worker, name, started, attempt)
    return started, attempt


def claimed_at(storage: Storage, worker: str, name: str, submitted_at: float | None) -> float | None:
    """When ``worker`` claimed the task file ``name``, as well as the storage tells without a write per claim.

    The claim's rename sets the task file's ctime. A storage without ctime
    (SFTP) gives the worker folder's mtime instead: a claim or release in that
    folder, the claim itself unless the worker released an earlier task just
    after (milliseconds later). Never before the submission (coarse clocks).
    """
    try:
        when = storage.stat(layout.claimed_path(worker, name)).ctime
        if when is None:
            when = storage.stat(layout.claimed_dir(worker)).mtime
    except OSError:
        return None
    return max(when, float(submitted_at or 0.0))


def _host_of(queue: Queue, worker: str) -> str | None:
    known = _known_for(queue)
    if worker not in known.hosts:
        try:
            record = json.loads(queue.storage.read(layout.identity_path(worker)))
            known.hosts[worker] = record.get("host") if isinstance(record, dict) else None
        except (OSError, ValueError):
            known.hosts[worker] = None
    return known.hosts[worker]


def snapshot(
    queue: Queue, jobs: Iterable[Job | str], *, progress: bool = True, details: bool = True
) -> dict[str, JobState]:
    """The state of each of ``jobs`` (jobs or ids), by job id, from as few file operations as it can.

    A job that is neither claimed nor done is reported QUEUED (waiting, or
    delayed for a retry): the query never lists ``queued/``. With
    ``progress=False`` started jobs' progress files are not read; with
    ``details=False`` nothing is read to find a started job's start time,
    attempt and host (see the module's docstring for what that costs).
    """
    storage = queue.storage
    known = _known_for(queue)
    out: dict[str, JobState] = {}
    undecided: list[str] = []
    for job in jobs:
        job_id = job if isinstance(job, str) else job.id
        if job_id in out:
            continue
        cached = queue._status_cache.get(job_id)  # finished and canceled never change
        if cached is not None:
            out[job_id] = known.ended.get(job_id) or JobState(job_id, cached)
        else:
            undecided.append(job_id)
    if not undecided:
        return out
    # claimed/ before results/: a job that finishes between the two looks is
    # seen done, never missed (its result is published before its claim goes).
    claims = {
        job_id_of(n): (w, n) for w in queue._list(layout.CLAIMED) for n in queue._list_tasks(layout.claimed_dir(w))
    }
    if len(undecided) <= LOOK_EACH_MAX:
        has_result = {j for j in undecided if storage.exists(layout.result_path(j))}
    else:
        has_result = set(queue._result_ids()).intersection(undecided)
    # Each outcome is read once, and all of them together, as are the progress
    # files of started jobs (over SSH: a few round trips for all, not one per file).
    done = [j for j in undecided if j in has_result]
    results = storage.read_many([layout.result_path(j) for j in done]) if done else {}
    ended = {j: st for j in done if (st := _ended_state(queue, j, results.get(layout.result_path(j)))) is not None}
    running = [j for j in undecided if j not in ended and j in claims]
    reports = storage.read_many([layout.job_file(j, "progress") for j in running]) if progress and running else {}
    for job_id in undecided:
        if job_id in ended:
            out[job_id] = ended[job_id]
            known.claims.pop(job_id, None)
        elif job_id in claims:
            worker, name = claims[job_id]
            data = reports.get(layout.job_file(job_id, "progress"))
            report = parse_progress(data) if isinstance(data, bytes) else None
            started = attempt = host = None
            if details:
                started, attempt = _claim_details(queue, job_id, worker, name)
                host = _host_of(queue, worker)
            out[job_id] = JobState(job_id, JobStatus.STARTED, worker, report, started, attempt, host)
        else:
            # Back in queued/ or delayed/ (a retry): the next claim is a new attempt.
            known.claims.pop(job_id, None)
            out[job_id] = JobState(job_id, JobStatus.QUEUED)
    return out
