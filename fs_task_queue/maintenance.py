"""Keeping a queue tidy: purge old jobs, requeue failed ones, sweep temporary files."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from fs_task_queue import layout
from fs_task_queue.errors import FSQError, NoSuchJobError
from fs_task_queue.ids import job_id_of, validate_job_id, validate_worker_id
from fs_task_queue.serialize import TASK_MAGIC, open_envelope, seal
from fs_task_queue.shards import publish_queued
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.queue import Queue

__all__ = ["TMP_MAX_AGE", "purge", "requeue_failed", "stop_worker", "sweep_tmp"]

log = logging.getLogger("fs_task_queue.maintenance")

#: Temporary files older than this (seconds) were left by a writer that died.
TMP_MAX_AGE = 3600.0


def sweep_tmp(queue: Queue, max_age: float = TMP_MAX_AGE) -> int:
    """Delete temporary files older than ``max_age`` seconds; return how many.

    A client killed mid-submit leaves a partial file in ``tmp/``; it was never
    visible as a task, so deleting it loses nothing.
    """
    storage = queue.storage
    now = time.time()
    removed = 0
    for name in queue._list(layout.TMP):
        path = f"{layout.TMP}/{name}"
        try:
            if now - storage.stat(path).mtime > max_age:
                storage.remove(path)
                removed += 1
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            continue
    if removed:
        log.info("swept %d stale temporary files from %s", removed, queue.path)
    return removed


def purge(queue: Queue, older_than: float, statuses: set[JobStatus] | None = None) -> list[str]:
    """Delete done jobs (outcome, logs, kept task file) older than ``older_than`` seconds; return their ids.

    ``statuses`` limits it to some terminal states (default: all of them).
    """
    storage = queue.storage
    wanted = statuses or {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED}
    now = time.time()
    kept = {
        job_id_of(n): f"{folder}/{n}"
        for folder in (layout.DONE_TASKS, layout.FAILED_TASKS)
        for n in queue._list(folder)
    }
    purged = []
    for job_id in queue._list(layout.RESULTS):
        try:
            age = now - storage.stat(layout.result_path(job_id)).mtime
        except FileNotFoundError:
            continue
        if age < older_than or queue._result_status(job_id) not in wanted:
            continue
        storage.remove_tree(layout.job_dir(job_id))
        if job_id in kept:
            try:
                storage.remove(kept[job_id])
            except FileNotFoundError:
                pass
        try:
            storage.remove(layout.result_path(job_id))
        except FileNotFoundError:
            continue
        queue._status_cache.pop(job_id, None)
        purged.append(job_id)
    return purged


def requeue_failed(queue: Queue, job_ids: list[str] | None = None) -> list[str]:
    """Put failed jobs (all, or those in ``job_ids``) back in the queue; return their ids.

    Their attempt and lost-worker counts start again; their history is kept.
    """
    storage = queue.storage
    names = {job_id_of(n): n for n in queue._list(layout.FAILED_TASKS)}
    targets = list(names) if job_ids is None else job_ids
    done = []
    for job_id in targets:
        name = names.get(job_id)
        if name is None:
            if job_ids is not None:
                try:
                    validate_job_id(job_id)
                except ValueError as exc:
                    raise NoSuchJobError(f"no job {job_id!r} in {queue.path}: {exc}") from None
                raise NoSuchJobError(f"job {job_id!r} is not a failed job with a kept task in {queue.path}")
            continue
        try:
            env = open_envelope(TASK_MAGIC, queue._key, job_id, storage.read(layout.failed_task_path(name)))
        except (OSError, FSQError) as exc:
            log.error("cannot requeue %s: %s", job_id, exc)
            continue
        if queue._result_status(job_id) not in (JobStatus.FAILED, None):
            continue
        header = {**env.header, "attempt": 1, "lost": 0}
        # The result goes first: a worker that found both would skip the task as done.
        try:
            storage.remove(layout.result_path(job_id))
        except FileNotFoundError:
            pass
        queue._status_cache.pop(job_id, None)
        storage.remove_tree(layout.job_dir(job_id))
        try:
            publish_queued(storage, name, seal(TASK_MAGIC, queue._key, job_id, header, env.payload))
        except FileExistsError:
            pass
        storage.remove(layout.failed_task_path(name))
        done.append(job_id)
    return done


def stop_worker(queue: Queue, worker_id: str) -> None:
    """Ask a worker to stop after its current task by deleting its heartbeat file.

    ``worker_id`` must be a valid worker id (ValueError otherwise): it names a
    file, so '..', '/' or a trailing newline would name another one.
    """
    validate_worker_id(worker_id)
    try:
        queue.storage.remove(layout.worker_path(worker_id))
    except FileNotFoundError:
        raise NoSuchJobError(
            f"no worker {worker_id!r} is registered in {queue.path} (see 'fs-task-queue info')"
        ) from None
