"""Running a task where its crash cannot take the worker down.

:class:`ChildRunner` keeps one child process (started with ``spawn``, reused
for many tasks, respawned when it dies) and sends it tasks over a pipe. A task
that segfaults, calls ``os._exit``, raises ``SystemExit`` or hits the memory
limit fails with a recorded cause while the worker goes on. The parent enforces
timeouts and cancellation by killing the child. :class:`InProcessRunner` runs
tasks in the worker itself (``--isolation none``): faster to start, but a crash
is the worker's crash and timeouts cannot be enforced.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from fs_task_queue.errors import JobError, JobTimeoutError
from fs_task_queue.execute import CallResult, Task, call_task, failed
from fs_task_queue.runtime import TaskContext

__all__ = ["Aborted", "ChildRunner", "InProcessRunner", "Runner"]

log = logging.getLogger("fs_task_queue.worker")

#: How often a running task is checked for cancellation and shutdown (seconds).
CHECK_INTERVAL = 0.5


@dataclass(frozen=True)
class Aborted:
    """The task was stopped from outside: ``reason`` is "canceled" or "shutdown"."""

    reason: str


#: Called while a task runs; returns a reason to abort it ("canceled", "shutdown") or None.
AbortCheck = Callable[[], "str | None"]


class Runner:
    """Runs tasks and returns a CallResult (or Aborted)."""

    def run(self, task: Task, timeout: float | None, should_abort: AbortCheck) -> CallResult | Aborted:
        raise NotImplementedError

    def prepare(self) -> None:
        """Get ready to run the next task at once (start processes ahead)."""

    def close(self) -> None:
        """Release processes and pipes."""


class InProcessRunner(Runner):
    """Runs tasks in the calling process (no isolation, no enforced timeout)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def run(self, task: Task, timeout: float | None, should_abort: AbortCheck) -> CallResult | Aborted:
        return call_task(task, TaskContext(self.queue, task.job_id, name=task.name))


def _die_with_parent() -> None:
    # If the worker is SIGKILLed the child must not live on running a task that
    # recovery will hand to another worker.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child_main(conn: Connection, queue_args: dict[str, Any], memory_limit: int | None) -> None:
    # The worker decides when the task stops: a SIGTERM sent to the whole job
    # step by SLURM, or Ctrl-C in a terminal, must not kill the task directly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _die_with_parent()
    if memory_limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    from fs_task_queue.queue import Queue

    queue = Queue(queue_args.pop("path"), create=False, **queue_args)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        task: Task = pickle.loads(data)
        result = call_task(task, TaskContext(queue, task.job_id, name=task.name))
        try:
            conn.send_bytes(pickle.dumps(result, protocol=5))
        except (BrokenPipeError, OSError):
            return


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown cause"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class ChildRunner(Runner):
    """Runs each task in a reusable child process.

    ``max_tasks_per_child`` respawns the child after that many tasks (None:
    never). ``memory_limit`` (bytes) caps the child's address space.
    """

    def __init__(
        self,
        queue_args: dict[str, Any],
        *,
        max_tasks_per_child: int | None = None,
        memory_limit: int | None = None,
    ) -> None:
        self.queue_args = queue_args
        self.max_tasks_per_child = max_tasks_per_child
        self.memory_limit = memory_limit
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self._tasks = 0
        self.spawned = 0

    def _start(self) -> Connection:
        parent, child = self._ctx.Pipe()
        # Not a daemon: tasks may start processes of their own (multiprocessing).
        proc = self._ctx.Process(
            target=_child_main,
            args=(child, dict(self.queue_args), self.memory_limit),
            name="fsq-task",
            daemon=False,
        )
        proc.start()
        child.close()
        self._proc, self._conn, self._tasks = proc, parent, 0
        self.spawned += 1
        return parent

    def prepare(self) -> None:
        if self._proc is None or not self._proc.is_alive():
            self.kill()
            self._start()

    def kill(self) -> None:
        """Kill the child now (the next task starts a new one)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            proc.close()

    def run(self, task: Task, timeout: float | None, should_abort: AbortCheck) -> CallResult | Aborted:
        conn = self._conn if self._proc is not None and self._proc.is_alive() else None
        if conn is None:
            self.kill()
            conn = self._start()
        started = time.time()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            conn.send_bytes(pickle.dumps(task, protocol=5))
        except (BrokenPipeError, OSError):
            return self._crashed(task, started)
        while True:
            wait = CHECK_INTERVAL if deadline is None else min(CHECK_INTERVAL, max(0.0, deadline - time.monotonic()))
            if conn.poll(wait):
                try:
                    result: CallResult = pickle.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    return self._crashed(task, started)
                self._tasks += 1
                if self.max_tasks_per_child and self._tasks >= self.max_tasks_per_child:
                    self.kill()
                return result
            reason = should_abort()
            if reason is not None:
                self.kill()
                return Aborted(reason)
            if deadline is not None and time.monotonic() >= deadline:
                self.kill()
                result = failed(
                    JobTimeoutError(
                        f"job {task.job_id} ran longer than its timeout of {timeout:g} s and was killed", task.job_id
                    ),
                    kind="timeout",
                )
                result.started, result.ended = started, time.time()
                return result

    def _crashed(self, task: Task, started: float) -> CallResult:
        proc = self._proc
        code = None
        if proc is not None:
            proc.join(5)
            code = proc.exitcode
        self.kill()
        cause = _describe_exit(code)
        hint = " (out of memory?)" if code == -signal.SIGKILL else ""
        err = JobError(
            f"the process running job {task.job_id} died with {cause}{hint}: the task crashed it"
            " (segfault, os._exit, killed); the worker survived",
            task.job_id,
        )
        result = failed(err, kind="crash")
        result.error = dict(result.error or {}, type="ProcessDied")
        result.started, result.ended = started, time.time()
        return result

    def close(self) -> None:
        conn, proc = self._conn, self._proc
        self._proc = self._conn = None
        if conn is not None:
            conn.close()  # the child sees EOF and exits
        if proc is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            proc.close()
