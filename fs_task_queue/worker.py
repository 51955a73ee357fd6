"""The worker: claim tasks, run them isolated, commit outcomes, keep a heartbeat.

A worker registers ``workers/<worker-id>`` (JSON: host, pid, start time,
version), touches it every ``heartbeat_interval`` seconds and stops after its
current task when the file is deleted (or cannot be written). The first
SIGINT/SIGTERM/SIGUSR1 makes it stop claiming and give the running task
``grace`` seconds to finish; then (or at a second signal) the task is killed
and put back in the queue without counting as a failed attempt. Meanwhile it
re-queues the tasks of dead workers and sweeps temporary files left by clients
killed mid-write. With process isolation the tasks themselves are claimed, run
and committed by a task process that this worker process supervises
(:mod:`fs_task_queue.supervise`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Literal

from fs_task_queue import contain, layout
from fs_task_queue._version import __version__
from fs_task_queue.board import RUNNING, Post
from fs_task_queue.errors import WorkerError
from fs_task_queue.ids import job_id_of, validate_worker_id
from fs_task_queue.liveness import HostIdentity
from fs_task_queue.maintenance import sweep_tmp
from fs_task_queue.queue import Claimer, Queue, default_worker_id
from fs_task_queue.recovery import DEFAULT_DEAD_AFTER, DEFAULT_MAX_LOST, Recoverer
from fs_task_queue.security import check_queue_permissions
from fs_task_queue.serve import LoopSettings, TaskLoop
from fs_task_queue.supervise import TaskProcess, describe_exit
from fs_task_queue.watch import DirWatcher

__all__ = ["Worker"]

log = logging.getLogger("fs_task_queue.worker")

#: How often the worker process looks at its running task (cancellation, shutdown), seconds.
CHECK_INTERVAL = 0.5
#: The least time between two such looks while outcomes keep it awake, seconds.
LOOK_INTERVAL = 0.02


def _log_ended(whose: str, ended: list[str]) -> None:
    if ended:
        log.warning("ended %d process(es) the tasks of %s left running: %s", len(ended), whose, ", ".join(ended))


def _has_result(queue: Queue, name: str) -> bool:
    try:
        return queue.storage.exists(layout.result_path(job_id_of(name)))
    except OSError:
        return False  # cannot tell now (a network filesystem gone away): look again later


class Worker:
    """Runs tasks from ``queue`` until told to stop.

    ``burst``: return when no task is left. ``max_jobs``: return after that many.
    ``max_idle``: return after that many seconds without a task.
    ``isolation``: "process" (default: tasks run in a supervised task
    process, so crashes, timeouts and cancellation are contained) or "none".
    ``timeout``: default per-task timeout in seconds. ``grace``: seconds a
    running task gets to finish after SIGTERM. ``max_tasks_per_child``,
    ``memory_limit`` (bytes): task process limits. ``dead_after``,
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
        # The one whole-name check (ids.py): the id names workers/<id> and claimed/<id>.
        self.id = validate_worker_id(name) if name is not None else default_worker_id()
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
        self._watcher: DirWatcher | None = None
        self._loop: TaskLoop | None = None
        self._next_beat = self._next_recover = self._next_sweep = 0.0

    # -------------------------------------------------------------- control
    def stop(self, reason: str = "asked to stop") -> None:
        """Stop claiming; the running task (if any) gets the grace period to finish."""
        if not self._stop.is_set():
            self._stop_reason = reason
            log.info("worker %s stopping: %s", self.id, reason)
            self._hard_deadline = time.monotonic() + self.grace
        self._stop.set()
        if self._loop is not None:
            self._loop.stop(reason)
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

    def _check_heartbeat(self, changed: set[str] | None) -> None:
        if changed and self.id in changed and not self.queue.storage.exists(self._heartbeat_path):
            self.stop(f"heartbeat file {layout.WORKERS}/{self.id} was deleted")

    # ---------------------------------------------------------------- chores
    def _chores(self, recoverer: Recoverer, *, beat: bool) -> float:
        """Heartbeat, recovery and sweeping when due; seconds until the next one."""
        now = time.monotonic()
        if beat and now >= self._next_beat:
            self._heartbeat_alive()
            self._next_beat = now + self.heartbeat_interval
        if now >= self._next_recover:
            try:
                recoverer.run_once()
            except OSError as exc:
                # e.g. a shard that kept vanishing: what was taken over stays in
                # this worker's claimed folder (put back when it closes); try again later.
                log.warning("recovery pass stopped: %s; trying again in %.0f s", exc, self.recover_interval)
            self._next_recover = now + self.recover_interval
        if now >= self._next_sweep:
            sweep_tmp(self.queue)
            self._next_sweep = now + 600.0
        due = [self._next_recover, self._next_sweep] + ([self._next_beat] if beat else [])
        return max(0.0, min(due) - time.monotonic())

    def _chore_loop(self, recoverer: Recoverer, watcher: DirWatcher) -> None:
        # With isolation "none" the tasks run in the main thread; this thread
        # keeps the heartbeat, recovers dead workers' tasks and sweeps.
        while not self._stop.is_set():
            wait = self._chores(recoverer, beat=True)
            self._check_heartbeat(watcher.wait(wait))

    # ------------------------------------------------------------------ run
    def _settings(self) -> LoopSettings:
        return LoopSettings(
            burst=self.burst,
            max_jobs=None if self.max_jobs is None else self.max_jobs - self.jobs_done,
            max_idle=self.max_idle,
            timeout=self.timeout,
            max_tasks=self.max_tasks_per_child if self.isolation == "process" else None,
            supervisor_timeout=max(1.0, min(self.dead_after, self.heartbeat_interval) / 3),
            poll_interval=self.poll_interval,
            max_poll_interval=self.max_poll_interval,
        )

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
        recoverer = Recoverer(self.queue, self.id, dead_after=self.dead_after, max_lost=self.max_lost)
        watcher = self._watcher = DirWatcher(
            [self.queue.storage.local_path(layout.WORKERS)],
            min_interval=self.poll_interval,
            max_interval=self.max_poll_interval,
        )
        now = time.monotonic()
        self._next_beat, self._next_recover, self._next_sweep = now + self.heartbeat_interval, now, now
        log.info("worker %s serving %s (isolation: %s)", self.id, self.queue.path, self.isolation)
        try:
            # Recovery first: tasks of dead workers are the oldest work there is.
            self._chores(recoverer, beat=False)
            if self.isolation == "none":
                self._run_in_process(claimer, recoverer, watcher)
            else:
                self._supervise(recoverer, watcher)
        finally:
            self._stop.set()
            self._watcher = None
            watcher.close()
            claimer.close()
            self._unregister()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            log.info("worker %s stopped after %d jobs (%s)", self.id, self.jobs_done, self._stop_reason)
        return self.jobs_done

    def _run_in_process(self, claimer: Claimer, recoverer: Recoverer, watcher: DirWatcher) -> None:
        loop = self._loop = TaskLoop(claimer, self._settings())
        # Tasks run in this process: what they leave running is its children
        # (or, once orphaned, comes to it), ended when the loop ends, not per task.
        orphans = contain.Orphans()
        chores = threading.Thread(target=self._chore_loop, args=(recoverer, watcher), name=f"fsq-chores-{self.id}")
        chores.daemon = True
        chores.start()
        try:
            if not self._stop.is_set():
                ended = loop.run()
                self.stop(ended.reason)
        finally:
            self.jobs_done += loop.jobs_done
            self._loop = None
            self._stop.set()
            watcher.interrupt()
            chores.join()
            _log_ended("this worker process", contain.end_processes(orphans.find))
            orphans.close()

    def _supervise(self, recoverer: Recoverer, watcher: DirWatcher) -> None:
        """Keep a task process serving; enforce timeouts, cancellation, the grace; settle what it leaves."""
        storage: Any = self.queue.storage
        queue_args = {"path": self.queue.path, "durable": getattr(storage, "durable", False)}
        if self.queue._format.get("shared"):
            queue_args["shared"] = True
        orphans = contain.Orphans()  # what tasks leave behind comes here, not to init
        try:
            self._serve_task_processes(recoverer, watcher, queue_args, orphans)
        finally:
            # Orphans of earlier task processes that ended by themselves since.
            _log_ended("worker", contain.end_processes(orphans.find))
            orphans.close()

    def _serve_task_processes(
        self, recoverer: Recoverer, watcher: DirWatcher, queue_args: dict[str, Any], orphans: contain.Orphans
    ) -> None:
        deaths_without_work = 0
        while not self._stop.is_set():
            proc = TaskProcess(
                self.queue, self.id, self._settings(), memory_limit=self.memory_limit, queue_args=queue_args
            )
            proc.board.stamp()
            proc.start()
            try:
                post, reason, target = self._watch(proc, recoverer, watcher)
            except BaseException:
                proc.kill()  # never leave a task process running unsupervised
                raise
            finally:
                try:
                    # Before the reap, which frees its session id for reuse.
                    _log_ended(f"task process {proc.pid}", proc.end_leftovers(orphans))
                finally:
                    proc.reap()
                    try:
                        proc.drain()
                    finally:
                        proc.close()
            handled, stop = proc.settle(post, reason, target)
            self.jobs_done += post.done + handled
            for why in (proc.refused, stop):
                if why:
                    self.stop(why)
            if proc.exit is not None:
                if not proc.exit.recycle:
                    self.stop(proc.exit.reason)
                continue
            if reason is None:
                log.warning("task process %d died with %s", proc.pid, describe_exit(proc.exit_code))
                deaths_without_work = 0 if post.done + handled else deaths_without_work + 1
                if deaths_without_work >= 3:
                    raise WorkerError(
                        f"the task process of worker {self.id} died {deaths_without_work} times before running a"
                        f" task (last: {describe_exit(proc.exit_code)}); see the messages above"
                    )

    def _watch(self, proc: TaskProcess, recoverer: Recoverer, watcher: DirWatcher) -> tuple[Post, str | None, int]:
        """Wait until the task process ends or must be killed: (last post, kill reason, kill target)."""
        last_cancel_check = 0.0
        inbox = proc.filenos()
        wake_at = looked = 0.0
        while True:
            now = time.monotonic()
            # While outcomes stream in (one per task) a full look at most every
            # LOOK_INTERVAL keeps this process's share of each task small.
            if now - looked >= LOOK_INTERVAL or now >= wake_at or proc.poked or self._stop.is_set():
                looked, proc.poked = now, False
                post = proc.post()
                reason = None
                if self._stop.is_set() and self._hard_deadline is not None and now >= self._hard_deadline:
                    reason = "shutdown"
                elif post.state == RUNNING and post.deadline is not None and now >= post.deadline:
                    reason = "timeout"
                elif post.state == RUNNING and now - last_cancel_check >= 1.0:
                    # A result that appeared while the task still runs: it was
                    # canceled, or taken over by a worker that presumed this one dead.
                    last_cancel_check = now
                    if _has_result(self.queue, post.name) and proc.post().seq == post.seq:
                        reason = "canceled"
                        log.info(
                            "job %s got an outcome while running here (canceled, or finished by a worker that"
                            " took it over); killed this run",
                            job_id_of(post.name),
                        )
                if reason is not None:
                    proc.kill()
                    return proc.post(), reason, post.seq
                wait = min(self._chores(recoverer, beat=True), CHECK_INTERVAL)
                proc.board.stamp()
                if post.deadline is not None and post.state == RUNNING:
                    wait = min(wait, post.deadline - now)
                if self._stop.is_set():
                    proc.ask_to_stop()
                    if self._hard_deadline is not None:
                        wait = min(wait, self._hard_deadline - now)
                wake_at = now + max(0.0, wait)
            changed = watcher.wait(max(0.0, wake_at - time.monotonic()), also=inbox)
            # Outcomes first: the task process waits for their publication.
            if not proc.read():
                return proc.post(), None, 0
            if proc.refused:
                self.stop(proc.refused)
            self._check_heartbeat(changed)
