"""The seam between a worker's shell and the executor that runs its claimed tasks.

A :class:`~fs_task_queue.worker.Worker` is a *shell*: it registers the worker,
keeps its heartbeat, stops when the heartbeat file is deleted, turns signals
into a graceful stop with a grace period, recovers the tasks of dead workers
and sweeps temporary files. How the tasks it claims are run is an
:class:`Executor`'s business:

* :class:`TaskProcesses` (``isolation="process"``, the default): a supervised
  task process claims and runs them, so crashes, timeouts and cancellation are
  contained (:mod:`fs_task_queue.supervise`);
* :class:`InProcess` (``isolation="none"``): the worker process runs them itself;
* :class:`fs_task_queue.plugins.dask.DaskExecutor`: a dask cluster runs them.

An executor gets the shell (the :class:`Shell` protocol: what it may use) in
:meth:`Executor.serve`, serves until the shell stops, and leaves no claim it
has not settled or put back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from fs_task_queue import contain, layout
from fs_task_queue.board import RUNNING, Post
from fs_task_queue.errors import WorkerError
from fs_task_queue.ids import job_id_of
from fs_task_queue.serve import LoopSettings, TaskLoop
from fs_task_queue.supervise import TaskProcess, describe_exit

if TYPE_CHECKING:
    from fs_task_queue.queue import Claimer, Queue

__all__ = ["CHECK_INTERVAL", "LOOK_INTERVAL", "Executor", "InProcess", "Shell", "TaskProcesses", "has_result"]

log = logging.getLogger("fs_task_queue.worker")

#: How often the worker process looks at its running task (cancellation, shutdown), seconds.
CHECK_INTERVAL = 0.5
#: The least time between two such looks while outcomes keep it awake, seconds.
LOOK_INTERVAL = 0.02


class Shell(Protocol):
    """What an executor may use of the worker that runs it."""

    queue: Queue
    id: str
    grace: float
    jobs_done: int
    #: Runs lost with their worker after which a task is failed (see recovery.lose_task).
    max_lost: int

    @property
    def claimer(self) -> Claimer:
        """This worker's registered claimer (its ``claimed/<id>/`` folder and liveness lock)."""

    @property
    def stopping(self) -> bool:
        """Whether the worker was told to stop (claim nothing more)."""

    @property
    def hard_deadline(self) -> float | None:
        """Once stopping: the monotonic time after which unfinished tasks are ended and put back."""

    def stop(self, reason: str = "asked to stop") -> None:
        """Stop claiming; running tasks get the grace period."""

    def chores(self, *, beat: bool = True) -> float:
        """Heartbeat, recovery and sweeping when due; seconds until the next one."""

    def watch(self, timeout: float, also: tuple[int, ...] = ()) -> set[str] | None:
        """Wait up to ``timeout`` s for a change in ``workers/`` (or a readable ``also`` fd, or :meth:`wake`)."""

    def check_heartbeat(self, changed: set[str] | None) -> None:
        """Stop if ``changed`` (from :meth:`watch`) shows this worker's heartbeat file deleted."""

    def wake(self) -> None:
        """End a :meth:`watch` now (from any thread)."""

    def settings(self) -> LoopSettings:
        """When a task loop stops and how it waits, from the worker's options."""

    def claim_until(self) -> float | None:
        """The wall-clock time by which a task claimed now must end (None: any time)."""

    def chores_in_background(self) -> contextlib.AbstractContextManager[None]:
        """Keep the heartbeat, recovery and sweeps going in a thread while the block runs."""


class Executor(Protocol):
    """How a worker runs the tasks it claims."""

    #: Shown in the worker's log ("isolation: process").
    description: str

    def serve(self, shell: Shell) -> None:
        """Claim and run tasks until the shell stops (or the loop ends: burst, max jobs, idle)."""

    def stop(self, reason: str) -> None:
        """Wake the serving loop to stop (called from signal handlers and other threads)."""


def has_result(queue: Queue, name: str) -> bool:
    """Whether the task ``name`` has an outcome (canceled, or finished by a worker that took it over)."""
    try:
        return queue.storage.exists(layout.result_path(job_id_of(name)))
    except OSError:
        return False  # cannot tell now (a network filesystem gone away): look again later


def log_ended(whose: str, ended: list[str]) -> None:
    if ended:
        log.warning("ended %d process(es) the tasks of %s left running: %s", len(ended), whose, ", ".join(ended))


class InProcess:
    """Runs tasks one at a time in the worker process (``isolation="none"``)."""

    description = "none"

    def __init__(self) -> None:
        self._loop: TaskLoop | None = None

    def stop(self, reason: str) -> None:
        if self._loop is not None:
            self._loop.stop(reason)

    def serve(self, shell: Shell) -> None:
        loop = self._loop = TaskLoop(shell.claimer, shell.settings(), claim_until=shell.claim_until)
        # Tasks run in this process: what they leave running is its children
        # (or, once orphaned, comes to it), ended when the loop ends, not per task.
        orphans = contain.Orphans()
        try:
            with shell.chores_in_background():
                if not shell.stopping:
                    ended = loop.run()
                    shell.stop(ended.reason)
        finally:
            shell.jobs_done += loop.jobs_done
            self._loop = None
            log_ended("this worker process", contain.end_processes(orphans.find))
            orphans.close()


class TaskProcesses:
    """Keeps a supervised task process serving (``isolation="process"``).

    It enforces timeouts, cancellation and the grace, and settles what each
    task process leaves (see :mod:`fs_task_queue.supervise`).
    """

    description = "process"

    def __init__(self, *, memory_limit: int | None = None, max_tasks_per_child: int | None = None) -> None:
        self.memory_limit = memory_limit
        self.max_tasks_per_child = max_tasks_per_child

    def stop(self, reason: str) -> None:
        pass  # the supervising loop looks at shell.stopping at least every CHECK_INTERVAL

    def serve(self, shell: Shell) -> None:
        storage: Any = shell.queue.storage
        queue_args = {"path": shell.queue.path, "durable": getattr(storage, "durable", False)}
        if shell.queue._format.get("shared"):
            queue_args["shared"] = True
        orphans = contain.Orphans()  # what tasks leave behind comes here, not to init
        try:
            self._serve_task_processes(shell, queue_args, orphans)
        finally:
            # Orphans of earlier task processes that ended by themselves since.
            log_ended("worker", contain.end_processes(orphans.find))
            orphans.close()

    def _settings(self, shell: Shell) -> LoopSettings:
        return dataclasses.replace(shell.settings(), max_tasks=self.max_tasks_per_child)

    def _serve_task_processes(self, shell: Shell, queue_args: dict[str, Any], orphans: contain.Orphans) -> None:
        deaths_without_work = 0
        while not shell.stopping:
            proc = TaskProcess(
                shell.queue, shell.id, self._settings(shell), memory_limit=self.memory_limit, queue_args=queue_args
            )
            proc.board.stamp()
            proc.board.set_claim_until(shell.claim_until())
            proc.start()
            try:
                post, reason, target = self._watch(shell, proc)
            except BaseException:
                proc.kill()  # never leave a task process running unsupervised
                raise
            finally:
                try:
                    # Before the reap, which frees its session id for reuse.
                    log_ended(f"task process {proc.pid}", proc.end_leftovers(orphans))
                finally:
                    proc.reap()
                    try:
                        proc.drain()
                    finally:
                        proc.close()
            handled, stop = proc.settle(post, reason, target)
            shell.jobs_done += post.done + handled
            for why in (proc.refused, stop):
                if why:
                    shell.stop(why)
            if proc.exit is not None:
                if not proc.exit.recycle:
                    shell.stop(proc.exit.reason)
                continue
            if reason is None:
                log.warning("task process %d died with %s", proc.pid, describe_exit(proc.exit_code))
                deaths_without_work = 0 if post.done + handled else deaths_without_work + 1
                if deaths_without_work >= 3:
                    raise WorkerError(
                        f"the task process of worker {shell.id} died {deaths_without_work} times before running a"
                        f" task (last: {describe_exit(proc.exit_code)}); see the messages above"
                    )

    def _watch(self, shell: Shell, proc: TaskProcess) -> tuple[Post, str | None, int]:
        """Wait until the task process ends or must be killed: (last post, kill reason, kill target)."""
        last_cancel_check = 0.0
        inbox = proc.filenos()
        wake_at = looked = 0.0
        while True:
            now = time.monotonic()
            stopping = shell.stopping
            # While outcomes stream in (one per task) a full look at most every
            # LOOK_INTERVAL keeps this process's share of each task small.
            if now - looked >= LOOK_INTERVAL or now >= wake_at or proc.poked or stopping:
                looked, proc.poked = now, False
                post = proc.post()
                reason = None
                hard_deadline = shell.hard_deadline
                if stopping and hard_deadline is not None and now >= hard_deadline:
                    reason = "shutdown"
                elif post.state == RUNNING and post.deadline is not None and now >= post.deadline:
                    reason = "timeout"
                elif post.state == RUNNING and now - last_cancel_check >= 1.0:
                    # A result that appeared while the task still runs: it was
                    # canceled, or taken over by a worker that presumed this one dead.
                    last_cancel_check = now
                    if has_result(shell.queue, post.name) and proc.post().seq == post.seq:
                        reason = "canceled"
                        log.info(
                            "job %s got an outcome while running here (canceled, or finished by a worker that"
                            " took it over); killed this run",
                            job_id_of(post.name),
                        )
                if reason is not None:
                    proc.kill()
                    return proc.post(), reason, post.seq
                wait = min(shell.chores(beat=True), CHECK_INTERVAL)
                proc.board.stamp()
                proc.board.set_claim_until(shell.claim_until())
                if post.deadline is not None and post.state == RUNNING:
                    wait = min(wait, post.deadline - now)
                if stopping:
                    proc.ask_to_stop()
                    if hard_deadline is not None:
                        wait = min(wait, hard_deadline - now)
                wake_at = now + max(0.0, wait)
            changed = shell.watch(max(0.0, wake_at - time.monotonic()), also=inbox)
            # Outcomes first: the task process waits for their publication.
            if not proc.read():
                return proc.post(), None, 0
            if proc.refused:
                shell.stop(proc.refused)
            shell.check_heartbeat(changed)
