"""Recovering tasks held by workers that died, without any daemon.

Any worker (periodically) and ``fs-task-queue recover`` run a
:class:`Recoverer`. For each other worker with a ``claimed/<id>/`` folder it
asks whether that worker is alive:

* same host and boot, same mount: try its flock (exact, instant);
* same host name, other boot id: the host rebooted, so it is dead;
* otherwise: its heartbeat file must change within ``dead_after`` seconds,
  timed on this process's monotonic clock (never by comparing remote mtimes
  with the local wall clock, which caches and clock skew make unreliable).
  One-shot callers may instead judge the heartbeat's age by the wall clock.

A dead worker's tasks are first moved into the recoverer's own claimed folder
(one atomic rename: of two racing recoverers exactly one gets each task), then
re-queued with their lost-worker count raised, or failed with WorkerLostError
once that count reaches ``max_lost``, so a task that kills its worker every
time cannot loop forever.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from fs_task_queue import layout
from fs_task_queue.errors import CorruptFileError, SymlinkInQueueError, WorkerLostError
from fs_task_queue.execute import Task, attempt_record, commit, failed, quarantine, read_task, release, requeue
from fs_task_queue.ids import is_worker_id, job_id_of
from fs_task_queue.job import Job
from fs_task_queue.liveness import HostIdentity, probe_alive_lock
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.queue import Queue

__all__ = ["DEFAULT_DEAD_AFTER", "DEFAULT_MAX_LOST", "Recoverer", "lose_task"]

log = logging.getLogger("fs_task_queue.recovery")

#: Seconds without a heartbeat change before a worker on another host is presumed
#: dead: above the 30 s touch interval + ~20-60 s of NFS/sshfs attribute caching +
#: clock skew.
DEFAULT_DEAD_AFTER = 120.0
#: Lost-worker attempts after which a task is failed instead of re-queued.
DEFAULT_MAX_LOST = 3


class Recoverer:
    """Finds dead workers and re-queues (or fails) their tasks.

    ``worker_id`` is the recoverer's own claimer identity (it must hold a
    registered claimed folder). ``wall_clock=True`` judges remote heartbeats by
    their age instead of watching them change (for one-shot use).
    """

    def __init__(
        self,
        queue: Queue,
        worker_id: str,
        *,
        dead_after: float = DEFAULT_DEAD_AFTER,
        max_lost: int = DEFAULT_MAX_LOST,
        wall_clock: bool = False,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.dead_after = dead_after
        self.max_lost = max_lost
        self.wall_clock = wall_clock
        self.here = HostIdentity.here(queue.storage)
        self._seen: dict[str, tuple[Any, float]] = {}

    def _identity(self, worker_id: str) -> dict[str, Any] | None:
        try:
            identity = json.loads(self.queue.storage.read(layout.identity_path(worker_id)))
        except (OSError, ValueError):
            return None
        return identity if isinstance(identity, dict) else None

    def verdict(self, worker_id: str) -> str:
        """ "alive", "dead" or "unsure" (still watching its heartbeat)."""
        record, mtime = self.queue._worker_record(worker_id)
        registered = self._identity(worker_id)
        identity = registered or record
        if identity is None:
            # Neither identity nor heartbeat: long dead, or registering right now
            # (folder made, lock being taken, the files not yet written). A held
            # lock is proof of life wherever it is held; a young folder may be a
            # claimer between those steps, so only its age can condemn it.
            if probe_alive_lock(self.queue.storage, worker_id):
                return "alive"
            try:
                mtime = self.queue.storage.stat(layout.claimed_dir(worker_id)).mtime
            except OSError:
                return "unsure"  # removed meanwhile (its clean exit)
        if identity is not None and identity.get("host") == self.here.host:
            if identity.get("boot") and self.here.boot and identity["boot"] != self.here.boot:
                return "dead"  # that host rebooted since: all its processes are gone
            if identity.get("dev") == self.here.dev:
                # Same host and mount: the lock is exact, heartbeat or not.
                held = probe_alive_lock(self.queue.storage, worker_id)
                if held:
                    return "alive"
                # A free lock means dead only once the claimer has written its
                # identity file, which it does after taking the lock: before
                # that it may be registering right now (between creating the
                # lock file and locking it), so its heartbeat decides instead.
                # A clean exit removes the identity file before it drops the
                # lock, so read it again: an exit between the first read and
                # the probe left the lock free and the identity gone.
                if held is False and registered is not None and self._identity(worker_id) is not None:
                    return "dead"
        if self.wall_clock:
            return "dead" if mtime is None or time.time() - mtime > self.dead_after else "alive"
        now = time.monotonic()
        previous = self._seen.get(worker_id)
        if previous is None or previous[0] != mtime:
            self._seen[worker_id] = (mtime, now)
            return "alive" if previous is not None else "unsure"
        return "dead" if now - previous[1] > self.dead_after else "unsure"

    def run_once(self) -> list[str]:
        """Check every other worker once; return the ids of the jobs recovered."""
        recovered: list[str] = []
        for worker_id in self.queue._list(layout.CLAIMED):
            if worker_id == self.worker_id or worker_id.startswith("."):
                continue
            if not is_worker_id(worker_id) or not self._is_folder(worker_id):
                continue
            if self.verdict(worker_id) != "dead":
                continue
            record, _ = self.queue._worker_record(worker_id)
            host = (record or {}).get("host")
            log.warning("worker %s (host %s) is dead; recovering its tasks", worker_id, host)
            try:
                names = self.queue._list_tasks(layout.claimed_dir(worker_id))
            except (NotADirectoryError, SymlinkInQueueError):
                self._quarantine(worker_id, "became a symlink or a file")
                continue
            for name in names:
                job_id = self._recover_task(worker_id, host, name)
                if job_id is not None:
                    recovered.append(job_id)
            self._forget(worker_id)
        return recovered

    def _is_folder(self, worker_id: str) -> bool:
        """Whether ``claimed/<worker_id>`` is a real folder; anything else is moved to quarantine/.

        A symlink there (to a folder of someone else's files, say) is never
        probed, listed, moved from or emptied: the link itself goes aside.
        """
        try:
            info = self.queue.storage.stat(layout.claimed_dir(worker_id))
        except FileNotFoundError:
            return False
        if info.is_dir:
            return True
        self._quarantine(worker_id, "is not a folder (a symlink?)")
        return False

    def _quarantine(self, worker_id: str, what: str) -> None:
        try:
            self.queue.storage.rename(layout.claimed_dir(worker_id), f"{layout.QUARANTINE}/{worker_id}")
        except OSError as exc:
            log.warning("claimed/%s %s; left alone, not recovered (cannot move it aside: %s)", worker_id, what, exc)
            return
        log.warning("claimed/%s %s; moved to %s/ unread, not recovered", worker_id, what, layout.QUARANTINE)

    def _recover_task(self, dead: str, host: str | None, name: str) -> str | None:
        storage = self.queue.storage
        try:
            storage.rename(layout.claimed_path(dead, name), layout.claimed_path(self.worker_id, name))
        except FileNotFoundError:
            return None  # another recoverer took it
        job = Job(self.queue, job_id_of(name), name=name, claimed_by=self.worker_id)
        if storage.exists(layout.result_path(job.id)) and self.queue._has_outcome(job.id):
            # It committed just before dying, or it was a requeuer that died
            # before removing the failed result: keep the task file where the
            # worker would have (a failed one can be requeued again).
            failed_job = self.queue._result_status(job.id) is JobStatus.FAILED
            release(job, keep_as=(layout.failed_task_path if failed_job else layout.done_task_path)(name))
            return None
        try:
            task = read_task(job)
        except FileNotFoundError:
            return None
        except CorruptFileError as exc:
            quarantine(job, exc)
            return job.id
        lose_task(job, task, worker=dead, host=host, max_lost=self.max_lost)
        return job.id

    def _forget(self, worker_id: str) -> None:
        storage = self.queue.storage
        self._seen.pop(worker_id, None)
        try:
            if self.queue._list_tasks(layout.claimed_dir(worker_id)):
                return  # a task arrived meanwhile (it was alive after all?): leave it be
        except (NotADirectoryError, SymlinkInQueueError):
            return  # swapped for a symlink meanwhile: the next pass moves it aside
        for path in (layout.worker_path(worker_id), layout.alive_path(worker_id), layout.identity_path(worker_id)):
            try:
                storage.remove(path)
            except FileNotFoundError:
                pass
        storage.remove_tree(layout.claimed_dir(worker_id))


def lose_task(
    job: Job, task: Task, *, worker: str, host: str | None, max_lost: int, what: str = "workers that died"
) -> bool:
    """Settle a claimed task whose run was lost with its worker; True if it was failed.

    The one capped policy for every kind of lost run (a dead worker here, a
    dead dask worker under DaskWorker): re-queued with its lost count raised,
    or failed with WorkerLostError once that count reaches ``max_lost``, so a
    task that kills whatever runs it cannot loop forever.
    """
    lost = int(task.header.get("lost", 0)) + 1
    history = [*task.header.get("hist", []), {**attempt_record(task, worker, None, "worker lost"), "host": host}]
    if lost >= max_lost:
        error = WorkerLostError(
            f"job {job.id} was running on {what} {lost} times (last: {worker} on {host});"
            " it was failed so it cannot loop forever: find out what kills the worker (memory,"
            " walltime, a crash in native code), then requeue it",
            job.id,
        )
        result = failed(error, kind="lost")
        result.started = result.ended = time.time()
        task.header.update(lost=lost, hist=history)
        commit(job, task, result, worker=worker)
        log.error("job %s failed: worker lost %d times", job.id, lost)
        return True
    attempt = int(task.header.get("attempt", 1)) + 1
    requeue(job, task, {"lost": lost, "attempt": attempt, "hist": history})
    log.warning("job %s re-queued (worker %s lost, attempt %d next)", job.id, worker, attempt)
    return False
