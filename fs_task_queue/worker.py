"""The worker: claim tasks, run them isolated, commit outcomes, keep a heartbeat.

A worker registers ``workers/<worker-id>`` (JSON: host, pid, start time,
version), touches it every ``heartbeat_interval`` seconds and stops after its
current task when the file is deleted (or cannot be written). The first
SIGINT/SIGTERM/SIGUSR1 makes it stop claiming and give the running task
``grace`` seconds to finish; then (or at a second signal) the task is killed
and put back in the queue without counting as a failed attempt. Between tasks
it re-queues the tasks of dead workers and sweeps temporary files left by
clients killed mid-write.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Literal

from fs_task_queue import layout
from fs_task_queue._version import __version__
from fs_task_queue.execute import CallResult, Task, attempt_record, commit, read_claimed, release, requeue
from fs_task_queue.isolation import Aborted, ChildRunner, InProcessRunner, Runner
from fs_task_queue.job import Job
from fs_task_queue.liveness import HostIdentity
from fs_task_queue.maintenance import sweep_tmp
from fs_task_queue.queue import Claimer, Queue, default_worker_id
from fs_task_queue.recovery import DEFAULT_DEAD_AFTER, DEFAULT_MAX_LOST, Recoverer
from fs_task_queue.security import check_queue_permissions
from fs_task_queue.status import JobStatus
from fs_task_queue.watch import DirWatcher

__all__ = ["Worker"]

log = logging.getLogger("fs_task_queue.worker")

_NO_RETRY_KINDS = frozenset({"corrupt", "version", "serialization"})
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class Worker:
    """Runs tasks from ``queue`` until told to stop.

    ``burst``: return when no task is left. ``max_jobs``: return after that many.
    ``max_idle``: return after that many seconds without a task.
    ``isolation``: "process" (default: each task runs in a reusable child
    process, so crashes, timeouts and cancellation are contained) or "none".
    ``timeout``: default per-task timeout in seconds. ``grace``: seconds a
    running task gets to finish after SIGTERM. ``max_tasks_per_child``,
    ``memory_limit`` (bytes): child process limits. ``dead_after``,
    ``max_lost``, ``recover_interval``: dead-worker recovery (see
    :mod:`fs_task_queue.recovery`). ``heartbeat_interval``: seconds between
    touches of the heartbeat file. ``poll_interval``/``max_poll_interval``: the
    polling backoff used where change notifications cannot see other hosts.
    """

    def __init__(
        self,
        queue: Queue | str | os.PathLike[str],
        *,
        name: str | None = None,
        burst: bool = False,
        max_jobs: int | None = None,
        max_idle: float | None = None,
        isolation: Literal["process", "none"] = "process",
        timeout: float | None = None,
        grace: float = 30.0,
        max_tasks_per_child: int | None = None,
        memory_limit: int | None = None,
        dead_after: float = DEFAULT_DEAD_AFTER,
        max_lost: int = DEFAULT_MAX_LOST,
        recover_interval: float = 15.0,
        heartbeat_interval: float = 30.0,
        poll_interval: float = 0.05,
        max_poll_interval: float = 1.0,
    ) -> None:
        self.queue = queue if isinstance(queue, Queue) else Queue(queue)
        self.id = name or default_worker_id()
        if not self.id or "/" in self.id or self.id.startswith(".") or self.id != self.id.strip():
            raise ValueError(f"invalid worker name {self.id!r}: use letters, digits, '-' and '_'")
        if isolation not in ("process", "none"):
            raise ValueError(f"isolation must be 'process' or 'none', not {isolation!r}")
        self.burst = burst
        self.max_jobs = max_jobs
        self.max_idle = max_idle
        self.isolation = isolation
        self.timeout = timeout
        self.grace = grace
        self.max_tasks_per_child = max_tasks_per_child
        self.memory_limit = memory_limit
        self.dead_after = dead_after
        self.max_lost = max_lost
        self.recover_interval = recover_interval
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.jobs_done = 0
        self._stop = threading.Event()
        self._stop_reason = ""
        self._hard_deadline: float | None = None
        self._heartbeat_path = layout.worker_path(self.id)
        self._last_cancel_check = 0.0
        self._watcher: DirWatcher | None = None
        self._last_beat_look = 0.0
        self._delayed_since_look = False

    # -------------------------------------------------------------- control
    def stop(self, reason: str = "asked to stop") -> None:
        """Stop claiming; the running task (if any) gets the grace period to finish."""
        if not self._stop.is_set():
            self._stop_reason = reason
            log.info("worker %s stopping: %s", self.id, reason)
            self._hard_deadline = time.monotonic() + self.grace
        self._stop.set()
        if self._watcher is not None:
            self._watcher.interrupt()

    def kill_task(self, reason: str = "asked to stop now") -> None:
        """Stop at once: the running task is killed and put back in the queue."""
        if self._stop.is_set():
            log.info("worker %s stopping now: %s", self.id, reason)
        self.stop(reason)
        self._hard_deadline = time.monotonic()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set():
            self.kill_task(f"received a second signal ({name})")
        else:
            self.stop(f"received {name}")

    # ------------------------------------------------------------ heartbeat
    def _register(self) -> None:
        record = {
            "id": self.id,
            **HostIdentity.here(self.queue.storage).as_record(),
            "pid": os.getpid(),
            "started_at": time.time(),
            "version": __version__,
            "python": sys.version.split()[0],
        }
        try:
            self.queue.storage.publish(self._heartbeat_path, json.dumps(record).encode(), replace=False)
        except FileExistsError:
            raise ValueError(
                f"a worker named {self.id!r} is already registered in {self.queue.path}: pick another"
                f" --name, or run 'fs-task-queue stop-worker {self.queue.path} {self.id}' if it is gone"
            ) from None

    def _unregister(self) -> None:
        try:
            self.queue.storage.remove(self._heartbeat_path)
        except FileNotFoundError:
            pass

    def _heartbeat_alive(self) -> bool:
        """Touch the heartbeat file; False (and stop) if it was deleted or cannot be written."""
        try:
            self.queue.storage.touch(self._heartbeat_path)
        except FileNotFoundError:
            self.stop(f"heartbeat file {layout.WORKERS}/{self.id} was deleted")
            return False
        except OSError as exc:
            self.stop(f"heartbeat file cannot be written ({exc.strerror})")
            return False
        return True

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            self._heartbeat_alive()

    # ------------------------------------------------------------- one task
    def _should_abort(self, job: Job) -> str | None:
        if self._hard_deadline is not None and time.monotonic() >= self._hard_deadline:
            return "shutdown"
        now = time.monotonic()
        if now - self._last_cancel_check >= 1.0:
            self._last_cancel_check = now
            if self.queue.storage.exists(layout.result_path(job.id)):
                return "canceled"
        return None

    def _process(self, job: Job, runner: Runner) -> None:
        task = read_claimed(job)
        if task is None:
            return
        opts = task.options
        timeout = opts.get("timeout", self.timeout)
        log.debug("running job %s (%s), attempt %s", job.id, task.header.get("fn"), task.header.get("attempt", 1))
        self._last_cancel_check = time.monotonic()
        result = runner.run(task, timeout, lambda: self._should_abort(job))
        if isinstance(result, Aborted):
            if result.reason == "canceled":
                log.info(
                    "job %s got an outcome while running here (canceled, or finished by a worker that"
                    " took it over); killed this run",
                    job.id,
                )
                release(job)
            else:
                log.warning("job %s interrupted by shutdown; put back in the queue", job.id)
                requeue(job, task)
            return
        self._finish(job, task, result)

    def _finish(self, job: Job, task: Task, result: CallResult) -> None:
        attempt = int(task.header.get("attempt", 1))
        retries = int(task.options.get("retries", 0))
        kind = (result.error or {}).get("kind")
        if result.status is JobStatus.FAILED and attempt <= retries and kind not in _NO_RETRY_KINDS:
            delay = float(task.options.get("retry_delay", 0.0)) * float(task.options.get("retry_backoff", 2.0)) ** (
                attempt - 1
            )
            history = [*task.header.get("hist", []), attempt_record(task, self.id, result, "failed")]
            requeue(job, task, {"attempt": attempt + 1, "hist": history}, delay=delay)
            self._delayed_since_look = self._delayed_since_look or delay > 0
            log.info("job %s failed (attempt %d of %d); retrying in %.1f s", job.id, attempt, retries + 1, delay)
            return
        try:
            commit(job, task, result)
        except OSError as exc:
            if exc.errno not in _DISK_ERRORS:
                raise
            # The outcome cannot be written: it is not marked done, and the task
            # goes back to the queue (a rename needs no space) for when it can.
            log.error("cannot write the outcome of job %s (%s): re-queued it", job.id, exc.strerror)
            requeue(job, task)
            self.stop(f"the queue's filesystem refuses writes ({exc.strerror})")

    def _check_heartbeat(self, changed: set[str] | None) -> None:
        if changed and self.id in changed and not self.queue.storage.exists(self._heartbeat_path):
            self.stop(f"heartbeat file {layout.WORKERS}/{self.id} was deleted")

    # ------------------------------------------------------------------ run
    def _runner(self) -> Runner:
        if self.isolation == "none":
            return InProcessRunner(self.queue)
        storage: Any = self.queue.storage
        queue_args = {"path": self.queue.path, "durable": getattr(storage, "durable", False)}
        if self.queue._format.get("shared"):
            queue_args["shared"] = True
        return ChildRunner(queue_args, max_tasks_per_child=self.max_tasks_per_child, memory_limit=self.memory_limit)

    def run(self) -> int:
        """Work until stopped; return the number of jobs processed."""
        check_queue_permissions(self.queue.storage, bool(self.queue._format.get("shared")))
        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                handlers[sig] = signal.signal(sig, self._on_signal)
        # The heartbeat file is published without replacing first: it is what
        # makes a second worker with the same name fail fast with a clear error.
        self._register()
        claimer = Claimer(self.queue, self.id, heartbeat=False)
        try:
            claimer.register()
        except BaseException:
            self._unregister()
            raise
        beat = threading.Thread(target=self._heartbeat_loop, name=f"fsq-heartbeat-{self.id}", daemon=True)
        beat.start()
        recoverer = Recoverer(self.queue, self.id, dead_after=self.dead_after, max_lost=self.max_lost)
        runner = self._runner()
        # Start the task process before claiming, so a claimed task waits
        # microseconds, not a process start, before it runs.
        runner.prepare()
        storage = self.queue.storage
        watcher = self._watcher = DirWatcher(
            [storage.local_path(layout.QUEUED), storage.local_path(layout.WORKERS)],
            min_interval=self.poll_interval,
            max_interval=self.max_poll_interval,
        )
        log.info("worker %s serving %s (isolation: %s)", self.id, self.queue.path, self.isolation)
        idle_since = time.monotonic()
        next_recover = 0.0
        next_sweep = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_recover:
                    recoverer.run_once()
                    next_recover = now + self.recover_interval
                if now >= next_sweep:
                    sweep_tmp(self.queue)
                    next_sweep = now + 600.0
                next_due = claimer.promote_delayed()
                job = claimer.claim()
                if job is None and self._delayed_since_look:
                    # A retry was just put off: learn its due time before idling.
                    self._delayed_since_look = False
                    next_due = claimer.promote_delayed(force=True)
                    if claimer.promoted:
                        job = claimer.claim()
                if job is not None:
                    watcher.reset()
                    self._process(job, runner)
                    self.jobs_done += 1
                    idle_since = time.monotonic()
                    if idle_since - self._last_beat_look >= 1.0:
                        # Busy: notifications queued up meanwhile tell (for free)
                        # whether our heartbeat file was deleted.
                        self._last_beat_look = idle_since
                        self._check_heartbeat(watcher.changes_now())
                    if self.max_jobs is not None and self.jobs_done >= self.max_jobs:
                        self.stop(f"reached --max-jobs {self.max_jobs}")
                    continue
                if self.burst and next_due is None:
                    self.stop("no task left (burst mode)")
                    break
                idle = time.monotonic() - idle_since
                if self.max_idle is not None and idle >= self.max_idle:
                    self.stop(f"idle for {self.max_idle} s")
                    break
                timeouts = [next_recover - time.monotonic()]
                if self.max_idle is not None:
                    timeouts.append(self.max_idle - idle)
                if next_due is not None:
                    timeouts.append(next_due - time.time())
                wait_until = time.monotonic() + max(0.0, min(timeouts))
                while not self._stop.is_set():
                    changed = watcher.wait(max(0.0, wait_until - time.monotonic()))
                    self._check_heartbeat(changed)
                    # Our own heartbeat touch is no reason to look for work.
                    if not changed or not changed <= {self.id}:
                        break
        finally:
            self._stop.set()
            self._watcher = None
            watcher.close()
            runner.close()
            claimer.close()
            self._unregister()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            log.info("worker %s stopped after %d jobs (%s)", self.id, self.jobs_done, self._stop_reason)
        return self.jobs_done
