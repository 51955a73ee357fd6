"""Keeping a queue tidy: purge old jobs, requeue failed ones, sweep temporary files."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from fs_task_queue import layout
from fs_task_queue.errors import CorruptFileError, FSQError, NoSuchJobError
from fs_task_queue.faults import crash_point
from fs_task_queue.ids import job_id_of, validate_job_id, validate_worker_id
from fs_task_queue.serialize import TASK_MAGIC, open_envelope, seal
from fs_task_queue.shards import move_to_queued, queued_names
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.queue import Claimer, Queue

__all__ = [
    "TMP_MAX_AGE",
    "TMP_MIN_AGE",
    "Report",
    "fail_orphans",
    "purge",
    "requeue_failed",
    "stop_worker",
    "sweep_tmp",
]

log = logging.getLogger("fs_task_queue.maintenance")

#: Temporary files older than this (seconds) were left by a writer that died.
TMP_MAX_AGE = 3600.0
#: A temporary file modified more recently than this is never swept, whatever
#: ``max_age`` says, unless its writer (named by the pid its name starts with) is
#: gone from this host: a live writer may be about to rename it into place.
TMP_MIN_AGE = 60.0


class Report(list[str]):
    """The ids a maintenance call acted on (a plain list, as before), with notes on what it left and why."""

    def __init__(self) -> None:
        super().__init__()
        #: One line per thing the caller should know (kept jobs, removed bad files, failed jobs).
        self.notes: list[str] = []


def _writer_gone(name: str) -> bool:
    """Whether the process that wrote ``tmp/<name>`` (``<pid hex>-...``) is not running on this host."""
    try:
        pid = int(name.partition("-")[0], 16)
        os.kill(pid, 0)
    except ValueError:
        return True  # not a name this package writes
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's process)
    return False


def sweep_tmp(queue: Queue, max_age: float = TMP_MAX_AGE) -> int:
    """Delete temporary files older than ``max_age`` seconds; return how many.

    A client killed mid-submit leaves a partial file in ``tmp/``; it was never
    visible as a task, so deleting it loses nothing. A file younger than
    :data:`TMP_MIN_AGE` is kept unless the queue is on a local filesystem and
    its writer's pid is not running: a live writer renames it into place any
    moment, and deleting it would fail that submit or commit.
    """
    from fs_task_queue.fsinfo import is_local_filesystem

    storage = queue.storage
    now = time.time()
    removed = 0
    local: bool | None = None
    for name in queue._list(layout.TMP):
        path = f"{layout.TMP}/{name}"
        try:
            age = now - storage.stat(path).mtime
            if age <= max_age:
                continue
            if age < TMP_MIN_AGE:
                if local is None:
                    local = is_local_filesystem(queue.path)
                if not local or not _writer_gone(name):
                    continue
            storage.remove(path)
            removed += 1
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            continue
    if removed:
        log.info("swept %d stale temporary files from %s", removed, queue.path)
    return removed


def _live_ids(queue: Queue) -> set[str]:
    """Job ids with a task file waiting or running (``delayed/``, ``queued/``, ``claimed/``).

    Listed in the direction tasks move (delayed -> queued -> claimed), so a task
    that moves on while this runs is seen in one place or the next, never missed.
    """
    names = queue._list_tasks(layout.DELAYED) + queued_names(queue.storage) + queue._claimed_names()
    return {job_id_of(n) for n in names}


def purge(queue: Queue, older_than: float, statuses: set[JobStatus] | None = None) -> Report:
    """Delete done jobs (outcome, logs, kept task file) older than ``older_than`` seconds; return their ids.

    ``statuses`` limits it to some terminal states (default: all of them). A job
    whose task file still waits or runs keeps its outcome: a canceled job whose
    worker has not dropped it yet would otherwise be committed again as finished.
    A result file that fails verification (older than ``older_than``) is deleted
    too, whatever ``statuses`` says, and named in the report's notes.
    """
    storage = queue.storage
    wanted = statuses or {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED}
    now = time.time()
    done: list[str] = []
    bad: list[str] = []
    # Looked at, read and deleted in batches (over SSH a few round trips in all, not several per job).
    ids = queue._result_ids()
    infos = storage.stat_many([layout.result_path(job_id) for job_id in ids])
    old = [
        job_id for job_id, info in zip(ids, infos, strict=True) if info is not None and now - info.mtime >= older_than
    ]
    for job_id, status in queue._result_statuses(old).items():
        if status is None:
            if storage.exists(layout.result_path(job_id)):
                bad.append(job_id)
        elif status in wanted:
            done.append(job_id)
    # Listed after the outcomes were seen: a task that was waiting or running
    # then is still found (see _live_ids).
    live = _live_ids(queue) if done or bad else set()
    kept = {
        job_id_of(n): f"{folder}/{n}"
        for folder in (layout.DONE_TASKS, layout.FAILED_TASKS)
        for n in queue._list(folder)
    }
    report = Report()
    running = [job_id for job_id in done if job_id in live]
    if running:
        report.notes.append(
            f"kept {len(running)} job(s) whose task is still queued or running (a canceled job whose worker"
            f" has not let go yet): {' '.join(running)}; purge again later"
        )
    removed_bad = []
    gone = [job_id for job_id in done + bad if job_id not in live]
    storage.remove_trees([layout.job_dir(job_id) for job_id in gone])
    storage.remove_many([kept[job_id] for job_id in gone if job_id in kept and job_id not in bad])
    errors = storage.remove_many([layout.result_path(job_id) for job_id in gone])
    for job_id, error in zip(gone, errors, strict=True):
        if isinstance(error, FileNotFoundError):
            continue
        if error is not None:
            raise error
        queue._status_cache.pop(job_id, None)
        if job_id in bad:
            removed_bad.append(job_id)
        else:
            report.append(job_id)
    if removed_bad:
        report.notes.append(
            f"removed {len(removed_bad)} result file(s) that failed verification (empty, foreign or"
            f" tampered with): {' '.join(removed_bad)}"
        )
    return report


def _claimer(queue: Queue, role: str) -> Claimer:
    """A registered claimer for an admin command: its claims are recovered if the command dies."""
    from fs_task_queue.queue import Claimer, default_worker_id

    claimer = Claimer(queue, f"{role}-{default_worker_id()}", heartbeat=False)
    claimer.register()
    return claimer


def requeue_failed(queue: Queue, job_ids: list[str] | None = None) -> Report:
    """Put failed jobs (all, or those in ``job_ids``) back in the queue; return their ids.

    Their attempt and lost-worker counts start again; their history is kept.

    Safe against live workers, a crash at any step and other requeues: the kept
    task file is first renamed from ``failed/`` into this call's own registered
    ``claimed/`` folder (exactly one of racing requeuers wins it), rewritten
    there, then the failed result is removed and the task moved to ``queued/``.
    The job always has its task file, and never two. A requeuer that dies holding
    it is a dead claimer: recovery puts the file back in ``failed/`` while the
    failed result is still there, and re-queues it once that is gone.

    A named job whose result was deleted by hand is requeued from ``done/``;
    one with neither a task file nor a result anywhere is failed (nothing is
    left to run), so clients waiting for it stop; the report's notes say so.
    """
    names = {job_id_of(n): n for n in queue._list(layout.FAILED_TASKS)}
    report = Report()
    claimer = _claimer(queue, "requeue")
    try:
        if job_ids is None:
            for job_id, name in sorted(names.items(), key=lambda item: item[1]):
                if _requeue_one(queue, claimer.worker_id, layout.failed_task_path(name), name, job_id):
                    report.append(job_id)
            return report
        for job_id in job_ids:
            validate_job_id(job_id)
            kept = names.get(job_id)
            found = (layout.failed_task_path(kept), kept) if kept is not None else _not_failed(queue, job_id, report)
            if found[0] is None or found[1] is None:
                continue
            if _requeue_one(queue, claimer.worker_id, found[0], found[1], job_id):
                report.append(job_id)
            else:
                report.notes.append(f"{job_id}: not requeued: another process requeued or purged it first")
    finally:
        claimer.close()
    return report


def _not_failed(queue: Queue, job_id: str, report: Report) -> tuple[str | None, str | None]:
    """For a named job with no task in ``failed/``: where to requeue it from, or say why not (or fail it)."""
    storage = queue.storage
    found = queue._find_task(job_id)
    if found is not None:
        where = "queued" if found[1] is None else f"running (claimed by {found[1]})"
        raise NoSuchJobError(f"job {job_id!r} is {where}, not failed: there is nothing to requeue")
    if storage.exists(layout.result_path(job_id)):
        status = queue._result_status(job_id)
        if status is JobStatus.FAILED:
            return None, None  # requeued by another process meanwhile... or its task was purged
        raise NoSuchJobError(
            f"job {job_id!r} is {status.value if status else 'done (its result file is unreadable)'}, not failed:"
            " only failed jobs can be requeued"
        )
    for folder in (layout.DONE_TASKS, layout.FAILED_TASKS):
        for name in queue._list(folder):
            if job_id_of(name) == job_id:
                # Its result was deleted by hand: the kept task file can run again.
                report.notes.append(f"{job_id}: its result file was missing; requeued its task from {folder}/")
                return f"{folder}/{name}", name
    _fail_missing(queue, job_id)
    report.notes.append(
        f"{job_id}: no task file and no result anywhere (deleted by hand?): nothing left to run, marked failed"
    )
    return None, None


def _fail_missing(queue: Queue, job_id: str) -> bool:
    """Publish a failed outcome for a job whose files are gone; False if it has an outcome already."""
    from fs_task_queue.execute import failed
    from fs_task_queue.job import Outcome

    error = NoSuchJobError(
        f"the task file of job {job_id} was deleted from the queue by hand before it had a result;"
        " nothing was left to run (submit it again)"
    )
    result = failed(error, kind="missing")
    header = {"status": JobStatus.FAILED.value, "id": job_id, "end": time.time(), "error": result.error}
    try:
        queue.storage.publish(
            layout.result_path(job_id), Outcome.seal(queue, job_id, header, result.payload), replace=False
        )
    except FileExistsError:
        return False
    return True


def _requeue_one(queue: Queue, me: str, src: str, name: str, job_id: str) -> bool:
    storage = queue.storage
    mine = layout.claimed_path(me, name)
    try:
        storage.rename(src, mine)  # one racing requeuer (or purge) gets it; the others see it gone
    except FileNotFoundError:
        return False
    crash_point("requeue-claimed")
    try:
        env = open_envelope(TASK_MAGIC, queue._key, job_id, storage.read(mine))
        status = queue._result_status(job_id)
        if status not in (JobStatus.FAILED, None):
            # Another outcome (a cancel that came after its result was lost): nothing to run again.
            storage.rename(mine, layout.done_task_path(name))
            return False
        header = {**env.header, "attempt": 1, "lost": 0}
        # Rewritten in place in our claimed folder: one file, the task, at every instant.
        storage.publish(mine, seal(TASK_MAGIC, queue._key, job_id, header, env.payload), replace=True)
        crash_point("requeue-rewritten")
    except (OSError, FSQError) as exc:
        log.error("cannot requeue %s: %s", job_id, exc)
        with contextlib.suppress(OSError):
            storage.rename(mine, src)  # back where it was, with its failed result
        return False
    if not _drop_failed_result(queue, job_id):
        storage.rename(mine, layout.done_task_path(name))
        return False
    crash_point("requeue-result-removed")
    storage.remove_tree(layout.job_dir(job_id))
    # From here a crash leaves a claimed task without a result: recovery re-queues it.
    move_to_queued(storage, mine, name)
    return True


def _drop_failed_result(queue: Queue, job_id: str) -> bool:
    """Remove the failed (or unreadable) result of ``job_id``; False if another outcome took its place.

    The file is moved aside first and looked at there, so an outcome that a
    cancel published after the failed one was gone is put back, never deleted.
    """
    from fs_task_queue.job import Outcome

    storage = queue.storage
    aside = f"{layout.TMP}/requeue-{os.getpid():x}-{os.urandom(4).hex()}.tmp"
    try:
        storage.rename(layout.result_path(job_id), aside)
    except FileNotFoundError:
        return True  # none (deleted by hand, or purged): nothing to remove
    queue._status_cache.pop(job_id, None)
    try:
        data = storage.read(aside)
        keep = Outcome.parse(queue, job_id, data).status is not JobStatus.FAILED
    except (OSError, CorruptFileError, ValueError, KeyError):
        keep = False  # unreadable: nobody's outcome
    if keep:
        with contextlib.suppress(FileExistsError):
            storage.publish(layout.result_path(job_id), data, replace=False)
    with contextlib.suppress(FileNotFoundError):
        storage.remove(aside)
    return not keep


def fail_orphans(queue: Queue) -> Report:
    """Fail jobs whose result file was deleted by hand while their task file is kept in ``done/`` or ``failed/``.

    A worker publishes the result before it moves the task file there, and
    purge and requeue take the task file away before the result, so such a
    file without a result was left by a hand deletion. The job gets a failed
    outcome that says so, and its task file goes to ``failed/`` so that
    ``requeue`` can run it again.
    """
    storage = queue.storage
    report = Report()
    for folder in (layout.DONE_TASKS, layout.FAILED_TASKS):
        for name in queue._list_tasks(folder):
            job_id = job_id_of(name)
            if storage.exists(layout.result_path(job_id)):
                continue
            # Moved to failed/ first, so a requeue racing us takes it from there.
            if folder == layout.DONE_TASKS:
                try:
                    storage.rename(layout.done_task_path(name), layout.failed_task_path(name))
                except FileNotFoundError:
                    continue
            elif not storage.exists(layout.failed_task_path(name)):
                continue  # requeued or purged meanwhile
            from fs_task_queue.execute import failed
            from fs_task_queue.job import Outcome

            error = NoSuchJobError(
                f"the result file of job {job_id} was deleted by hand; its task file is kept in failed/:"
                f" `fs-task-queue requeue {job_id}` runs it again"
            )
            result = failed(error, kind="missing")
            header = {"status": JobStatus.FAILED.value, "id": job_id, "end": time.time(), "error": result.error}
            with contextlib.suppress(FileExistsError):
                storage.publish(
                    layout.result_path(job_id), Outcome.seal(queue, job_id, header, result.payload), replace=False
                )
                report.append(job_id)
    if report:
        report.notes.append(
            f"failed {len(report)} job(s) whose result file was deleted by hand: {' '.join(report)}"
            " (`fs-task-queue requeue ID` runs one again)"
        )
    return report


def stop_worker(queue: Queue, worker_id: str) -> bool:
    """Ask a worker to stop after its current task by deleting its heartbeat file.

    Returns False when the worker was already on its way out (its heartbeat file
    gone, its claimed folder still there): stopping it twice, or racing its own
    exit, is no error. ``worker_id`` must be a valid worker id (ValueError
    otherwise): it names a file, so '..', '/' or a trailing newline would name
    another one.
    """
    validate_worker_id(worker_id)
    try:
        queue.storage.remove(layout.worker_path(worker_id))
    except FileNotFoundError:
        if queue.storage.exists(layout.claimed_dir(worker_id)):
            return False
        raise NoSuchJobError(
            f"no worker {worker_id!r} is registered in {queue.path} (see 'fs-task-queue info')"
        ) from None
    return True
