"""The claim -> run -> commit loop that serves tasks.

With process isolation (the default) a :class:`TaskLoop` runs in the worker's
task process, which claims and runs tasks and hands their outcomes to the
worker process to publish (:mod:`fs_task_queue.supervise`).
With ``isolation="none"`` it runs in the worker process itself.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fs_task_queue import layout
from fs_task_queue.board import Board
from fs_task_queue.durations import DurationCache, DurationLog, duration_key
from fs_task_queue.execute import (
    CallResult,
    Task,
    attempt_record,
    call_task,
    outcome_record,
    publish_outcome,
    read_claimed,
    release,
    requeue,
    seal_outcome,
)
from fs_task_queue.runtime import TaskContext
from fs_task_queue.status import JobStatus
from fs_task_queue.watch import DirWatcher

if TYPE_CHECKING:
    from fs_task_queue.job import Job
    from fs_task_queue.queue import Claimer

__all__ = ["LoopExit", "LoopSettings", "OutcomeSink", "TaskLoop", "commit_outcome", "settle_outcome"]

log = logging.getLogger("fs_task_queue.worker")

_NO_RETRY_KINDS = frozenset({"corrupt", "version", "serialization"})
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


@dataclass(frozen=True)
class LoopSettings:
    """When a task loop stops, and how it waits (see :class:`~fs_task_queue.worker.Worker`)."""

    burst: bool = False
    max_jobs: int | None = None
    max_idle: float | None = None
    timeout: float | None = None
    max_tasks: int | None = None  # then the loop ends so a fresh task process takes over
    #: With a board: claim nothing while the worker process has been silent this
    #: long (frozen or hung), since its heartbeat stops too and other hosts will
    #: soon presume the worker dead and re-run what it holds.
    supervisor_timeout: float = 10.0
    poll_interval: float = 0.05
    max_poll_interval: float = 1.0


@dataclass(frozen=True)
class LoopExit:
    """Why a task loop ended; ``recycle``: only this task process, not the worker, is done."""

    reason: str
    recycle: bool = False


class OutcomeSink(Protocol):
    """Where a task loop hands finished outcomes to be published by another process.

    The worker's task process hands them to the worker process, which seals and
    publishes them while the task process claims and reads the next task.
    """

    def hand_over(self, job: Job, record: dict[str, Any], payload: bytes) -> bool:
        """Queue the outcome of the claimed ``job`` (see :func:`commit_outcome`) for publishing.

        False when too many outcomes are on their way already: the caller then publishes it.
        """

    #: Whether the publisher refused an outcome (full or read-only filesystem).
    refused: bool

    def wait_published(self, *, everything: bool = False) -> None:
        """Learn which outcomes were published; with ``everything``, wait until all are."""

    def in_flight(self, job_id: str) -> bool:
        """Whether an outcome of ``job_id`` was handed over and may not be published yet."""


def settle_outcome(
    job: Job, task: Task, result: CallResult, worker_id: str, sink: OutcomeSink | None = None
) -> str | None:
    """Retry or commit ``result``; return a reason to stop the worker, or None.

    A failed attempt with retries left goes back to the queue (after its delay)
    with its history; otherwise the outcome is committed, here or by ``sink``.
    """
    attempt = retries = 0
    if result.status is JobStatus.FAILED:  # only a failure reads the retry options
        attempt, retries = int(task.header.get("attempt", 1)), int(task.options.get("retries", 0))
    if attempt and attempt <= retries and (result.error or {}).get("kind") not in _NO_RETRY_KINDS:
        delay = float(task.options.get("retry_delay", 0.0)) * float(task.options.get("retry_backoff", 2.0)) ** (
            attempt - 1
        )
        history = [*task.header.get("hist", []), attempt_record(task, worker_id, result, "failed")]
        requeue(job, task, {"attempt": attempt + 1, "hist": history}, delay=delay)
        log.info("job %s failed (attempt %d of %d); retrying in %.1f s", job.id, attempt, retries + 1, delay)
        return None
    if result.status is JobStatus.FAILED:
        # A batch job's log is often all its user reads: each final failure is named there.
        error = result.error or {}
        message = " ".join(str(error.get("message", "")).split())
        log.info(
            "job %s failed: %s%s%s",
            job.id,
            str(error.get("type") or "error").rpartition(".")[2],
            " (timed out)" if error.get("kind") == "timeout" else "",
            f": {message[:200]}" if message else "",
        )
    record = outcome_record(job, task, result, worker=worker_id)
    if sink is not None and sink.hand_over(job, record, result.payload):
        return None
    return commit_outcome(job, record, result.payload)


def commit_outcome(
    job: Job, record: dict[str, Any], payload: bytes, *, on_published: Callable[[], None] | None = None
) -> str | None:
    """Seal and publish an outcome (see :func:`outcome_record`); return a reason to stop the worker, or None.

    An outcome that the filesystem refuses (full, read-only) is not marked
    done: the task is re-queued and the worker should stop.
    """
    try:
        failed = record["status"] == JobStatus.FAILED.value
        publish_outcome(job, seal_outcome(job, record, payload), failed=failed, on_published=on_published)
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        # A rename needs no space: the task goes back for when writes work again.
        log.error("cannot write the outcome of job %s (%s): re-queued it", job.id, exc.strerror)
        requeue(job)
        return f"the queue's filesystem refuses writes ({exc.strerror})"
    return None


class TaskLoop:
    """Claims tasks oldest first and runs each in this process until told to stop.

    ``board`` (optional) is where the loop posts which task runs, for a
    supervising worker process; ``on_deadline`` is called when a task with a
    timeout starts, so the supervisor wakes to enforce it. With ``sink`` the
    outcomes are published by another process while the loop goes on, as many
    at a time as the sink accepts (see :class:`~fs_task_queue.supervise.RunAhead`);
    the loop publishes the others itself.
    """

    def __init__(
        self,
        claimer: Claimer,
        settings: LoopSettings,
        *,
        board: Board | None = None,
        on_deadline: Callable[[], None] | None = None,
        sink: OutcomeSink | None = None,
        claim_until: Callable[[], float | None] | None = None,
    ) -> None:
        self.claimer = claimer
        self.queue = claimer.queue
        self.worker_id = claimer.worker_id
        self.settings = settings
        self.board = board
        self.on_deadline = on_deadline
        self.sink = sink
        # When a task claimed now must end (a SLURM job's walltime): posted on
        # the board by the worker process, else asked of the caller.
        self.claim_until = claim_until or (board.claim_until if board is not None else None)
        #: Task files that do not fit the time left: left queued for other workers.
        self.too_long: set[str] = set()
        # Run times of finished tasks, learned per function (see fs_task_queue.durations).
        self.durations = DurationLog(self.queue.storage)
        self._learned: DurationCache | None = None
        self._most_left: float | None = None  # time left at the first claim with a deadline
        self.jobs_done = 0
        self._exit: LoopExit | None = None
        self._delayed_since_look = False
        self._watcher: DirWatcher | None = None

    def stop(self, reason: str = "asked to stop", *, recycle: bool = False) -> None:
        """End the loop after the current task (safe from a signal handler)."""
        if self._exit is None:
            self._exit = LoopExit(reason, recycle)
        if self._watcher is not None:
            self._watcher.interrupt()

    def _refused(self, job: Job) -> None:
        # Writes fail: run nothing more (its outcome could not be kept either).
        requeue(job)
        self.stop("the worker process cannot write outcomes")

    def _fits(self, job: Job) -> bool:
        """Whether ``job`` (claimed) can end before the worker's allocation; if not, put it back."""
        until = self.claim_until() if self.claim_until is not None else None
        if until is None:
            return True
        task = read_claimed(job)
        expected, learned = 0.0, ""
        if task is not None:
            expected = float(task.options.get("expected_duration", 0.0))
            if not expected:
                expected, learned = self._learned_duration(task.header)
        left = until - time.time()
        if self._most_left is None:
            self._most_left = left  # the first look: as much time as this loop will ever have
        if expected <= left and left > 0:
            return True
        if learned and left > 0 and expected > self._most_left:
            # Held back here, it would be held back by every worker of this size, forever, with nothing
            # learned again: one long run can set the estimate. Run it; the margin puts it back if need be.
            log.warning(
                "job %s: its function's earlier runs took up to %.0f s, more than this worker ever had (%.0f s):"
                " running it anyway (it is put back, not failed, if the allocation ends first)",
                job.id,
                expected,
                self._most_left,
            )
            return True
        requeue(job)  # renamed back as it was: not an attempt
        if left <= 0:
            self.stop("the worker's allocation is ending: claiming nothing more")
        else:
            assert job._name is not None
            self.too_long.add(job._name)
            log.info(
                "job %s expects to run %.0f s%s; this worker has %.0f s left: left it queued for another worker",
                job.id,
                expected,
                learned,
                left,
            )
        return False

    def _learned_duration(self, header: dict[str, Any]) -> tuple[float, str]:
        """What earlier runs of this task's function took (0: nothing learned), and a note saying so."""
        key = duration_key(header)
        if key is None:
            return 0.0, ""
        if self._learned is None:
            self._learned = DurationCache(self.queue.storage)
        estimate = self._learned.estimate(key)
        if estimate is None:
            return 0.0, ""
        return estimate.high, f" (the longest of its function's last {len(estimate.recent)} runs)"

    def _run_one(self, job: Job) -> None:
        task = read_claimed(job)
        if task is None:
            return
        if self.sink is not None:
            self.sink.wait_published()
            if self.sink.refused:
                self._refused(job)
                return
        timeout = task.options.get("timeout", self.settings.timeout)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("running job %s (%s), attempt %s", job.id, task.header.get("fn"), task.header.get("attempt", 1))
        board = self.board
        if board is not None:
            board.running(task.name, None if timeout is None else time.monotonic() + timeout)
            if timeout is not None and self.on_deadline is not None:
                self.on_deadline()
        result = call_task(task, TaskContext(self.queue, task.job_id, name=task.name))
        if board is not None:
            board.committing(task.name)
        reason = settle_outcome(job, task, result, self.worker_id, self.sink)
        if result.status is JobStatus.FINISHED:
            key = duration_key(task.header)
            if key is not None:
                self.durations.add(key, result.ended - result.started)
        if result.status is JobStatus.FAILED and task.options.get("retries") and reason is None:
            self._delayed_since_look = self._delayed_since_look or bool(task.options.get("retry_delay"))
        if reason is not None:
            self.stop(reason)

    def run(self) -> LoopExit:
        """Serve until stopped; return why it ended."""
        settings, claimer, storage = self.settings, self.claimer, self.queue.storage
        watcher = self._watcher = DirWatcher(
            [storage.local_path(layout.QUEUED)],
            nested=True,  # tasks arrive in the shard folders of queued/
            min_interval=settings.poll_interval,
            max_interval=settings.max_poll_interval,
        )
        handled = 0
        idle_since = time.monotonic()
        board = self.board
        try:
            while self._exit is None:
                if board is not None and board.supervisor_silence() > settings.supervisor_timeout:
                    log.warning(
                        "the worker process has not responded for %.1f s; claiming nothing until it does",
                        board.supervisor_silence(),
                    )
                    while self._exit is None and board.supervisor_silence() > settings.supervisor_timeout:
                        watcher.wait(0.5)
                    continue
                next_due = claimer.promote_delayed()
                job = claimer.claim(self.too_long)
                if job is None and self._delayed_since_look:
                    # A retry was just put off: learn its due time before idling.
                    self._delayed_since_look = False
                    next_due = claimer.promote_delayed(force=True)
                    if claimer.promoted:
                        job = claimer.claim(self.too_long)
                if job is not None and self.sink is not None and self.sink.in_flight(job.id):
                    # The claim checked results/ while an outcome of this job was
                    # on its way: a duplicate task file, or the task itself put
                    # back because its outcome could not be written.
                    self.sink.wait_published(everything=True)
                    if self.queue.storage.exists(layout.result_path(job.id)):
                        release(job)
                        continue
                    if self.sink.refused:
                        self._refused(job)
                        continue
                if job is not None and not self._fits(job):
                    continue
                if job is not None:
                    watcher.reset()
                    try:
                        self._run_one(job)
                    finally:
                        if self.board is not None:
                            self.board.idle(finished=True)
                    self.jobs_done += 1
                    handled += 1
                    idle_since = time.monotonic()
                    if settings.max_jobs is not None and self.jobs_done >= settings.max_jobs:
                        self.stop(f"reached --max-jobs {settings.max_jobs}")
                    elif settings.max_tasks and handled >= settings.max_tasks:
                        self.stop("task process reached --max-tasks-per-child", recycle=True)
                    continue
                if settings.burst and next_due is None:
                    self.stop("no task left (burst mode)")
                    break
                idle = time.monotonic() - idle_since
                if settings.max_idle is not None and idle >= settings.max_idle:
                    self.stop(f"idle for {settings.max_idle} s")
                    break
                timeouts = [60.0]
                if settings.max_idle is not None:
                    timeouts.append(settings.max_idle - idle)
                if next_due is not None:
                    timeouts.append(next_due - time.time())
                watcher.wait(max(0.0, min(timeouts)))
        finally:
            self._watcher = None
            watcher.close()
            self.durations.flush()
        assert self._exit is not None
        return self._exit
