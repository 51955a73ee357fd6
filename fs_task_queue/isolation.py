"""Running a task where its crash cannot take the worker down.

:class:`ChildRunner` keeps one child process (``python -m fs_task_queue._child``, reused
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
import os
import pickle
import select
import signal
import subprocess
import sys
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


def child_main(read_fd: int, write_fd: int) -> None:
    """Serve tasks from the worker until the pipe closes (runs in the task process)."""
    # The worker decides when the task stops: a SIGTERM sent to the whole job
    # step by SLURM, or Ctrl-C in a terminal, must not kill the task directly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _die_with_parent()
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        setup = pickle.loads(inbox.recv_bytes())
    except (EOFError, OSError):
        return
    sys.path[:] = setup["sys_path"]  # import what the worker can import
    if setup["memory_limit"]:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (setup["memory_limit"], setup["memory_limit"]))
    from fs_task_queue.queue import Queue

    queue_args = dict(setup["queue_args"])
    queue = Queue(queue_args.pop("path"), create=False, **queue_args)
    while True:
        try:
            data = inbox.recv_bytes()
        except (EOFError, OSError):
            return
        task: Task = pickle.loads(data)
        result = call_task(task, TaskContext(queue, task.job_id, name=task.name))
        try:
            outbox.send_bytes(pickle.dumps(result, protocol=5))
        except OSError:
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

    The child is ``python -m fs_task_queue._child`` (not multiprocessing's
    spawn, which would re-import the worker's ``__main__``); it gets the
    worker's ``sys.path``. ``max_tasks_per_child`` respawns it after that many
    tasks (None: never). ``memory_limit`` (bytes) caps its address space.
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
        self._proc: subprocess.Popen[bytes] | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None
        self._poller: Any = None
        self._tasks = 0
        self.spawned = 0

    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            # Not a daemon-like helper: tasks may start processes of their own.
            proc = subprocess.Popen(
                [sys.executable, "-m", "fs_task_queue._child", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            for fd in (to_child_w, from_child_r):
                os.close(fd)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        os.set_inheritable(to_child_w, False)
        os.set_inheritable(from_child_r, False)
        send, recv = Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)
        # One poll object per child: building a selector for every wait costs
        # more than the wait itself for short tasks.
        poller = select.poll()
        poller.register(from_child_r, select.POLLIN)
        self._proc, self._send, self._recv, self._poller, self._tasks = proc, send, recv, poller, 0
        self.spawned += 1
        setup = {"sys_path": list(sys.path), "memory_limit": self.memory_limit, "queue_args": self.queue_args}
        try:
            send.send_bytes(pickle.dumps(setup))
        except OSError:
            pass  # it died at once: the first task will find out and say why

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def prepare(self) -> None:
        if not self._alive():
            self.kill()
            self._start()

    def _drop_pipes(self) -> None:
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._send = self._recv = self._poller = None

    def kill(self) -> None:
        """Kill the child now (the next task starts a new one)."""
        proc, self._proc = self._proc, None
        self._drop_pipes()
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)

    def run(self, task: Task, timeout: float | None, should_abort: AbortCheck) -> CallResult | Aborted:
        if not self._alive() or self._send is None:
            self.kill()
            self._start()
        send, recv, poller = self._send, self._recv, self._poller
        assert send is not None and recv is not None and poller is not None
        started = time.time()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            send.send_bytes(pickle.dumps(task, protocol=5))
        except OSError:
            return self._crashed(task, started)
        while True:
            wait = CHECK_INTERVAL if deadline is None else min(CHECK_INTERVAL, max(0.0, deadline - time.monotonic()))
            if poller.poll(wait * 1000):
                try:
                    result: CallResult = pickle.loads(recv.recv_bytes())
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
                error = JobTimeoutError(
                    f"job {task.job_id} ran longer than its timeout of {timeout:g} s and was killed", task.job_id
                )
                result = failed(error, kind="timeout")
                result.started, result.ended = started, time.time()
                return result

    def _crashed(self, task: Task, started: float) -> CallResult:
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(5)
            except subprocess.TimeoutExpired:
                code = None
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
        proc, self._proc = self._proc, None
        self._drop_pipes()  # the child sees EOF and exits
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
