"""What a running task sees: :func:`current_job`, :func:`progress`, captured output.

While a worker runs a task it activates a :class:`TaskContext`: ``print`` output
goes to ``jobs/<id>/stdout`` and ``stderr`` (written through, so readable while
the task runs) and :func:`progress` writes ``jobs/<id>/progress``. The job folder
is created only when the task first writes output or progress, so a silent task
costs no extra filesystem operations.

The running task is held in a context variable and ``sys.stdout``/``sys.stderr``
are replaced once by streams that route each write to the writer's task, so
several tasks can run in one process (threads, as dask runs them) without
mixing their output or progress.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from fs_task_queue import layout
from fs_task_queue.errors import SymlinkInQueueError
from fs_task_queue.storage.local import LocalStorage

if TYPE_CHECKING:
    from fs_task_queue.job import Job
    from fs_task_queue.queue import Queue

__all__ = ["TaskContext", "check_job_file_name", "current_job", "progress", "write_job_file"]

log = logging.getLogger("fs_task_queue.worker")

_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC

#: The task this code runs in. A context variable, not a global: an executor
#: that runs several tasks at once in threads (DaskWorker) gives each its own.
_current: ContextVar[TaskContext | None] = ContextVar("fs_task_queue_task", default=None)
#: The tasks running in this process now (replaced whole, never mutated: read without a lock).
_running: tuple[TaskContext, ...] = ()
_running_lock = threading.Lock()

#: Progress is written at most this often (seconds); the last report is always kept.
PROGRESS_INTERVAL = 0.2


def _context() -> TaskContext | None:
    """The task the calling code belongs to.

    A thread that a task started begins with an empty context: while that task
    is the only one running in this process (every executor but DaskWorker's
    threads) the thread's output and progress are still the task's, as before
    tasks could share a process.
    """
    ctx = _current.get()
    if ctx is None:
        running = _running
        if len(running) == 1:
            return running[0]
    return ctx


class _TaskStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while tasks run: each write goes to the file of the writer's task.

    Installed once per process (a stream costs more to create than a no-op
    task takes to run) and left in place; writes from outside any task go to
    the stream it replaced.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self.fallback: Any = None

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not text:
            return 0
        ctx = _context()
        if ctx is None:  # not a task's (a thread left behind by one, or the worker itself)
            fallback = self.fallback
            return int(fallback.write(text)) if fallback is not None else len(text)
        return ctx.write_output(self._name, text)

    def flush(self) -> None:
        if _context() is None and self.fallback is not None:
            self.fallback.flush()

    def install(self) -> None:
        current = getattr(sys, self._name)
        if current is not self:
            # Re-installed when something replaced it since (pytest's capture, a notebook).
            self.fallback = current
            setattr(sys, self._name, self)


_STDOUT, _STDERR = _TaskStream("stdout"), _TaskStream("stderr")


class _Activation:
    """The context manager returned by :meth:`TaskContext.activate` (a class: cheaper than a generator)."""

    __slots__ = ("_ctx", "_token")

    def __init__(self, ctx: TaskContext) -> None:
        self._ctx = ctx

    def __enter__(self) -> TaskContext:
        global _running
        self._token = _current.set(self._ctx)
        with _running_lock:
            _running = (*_running, self._ctx)
        _STDOUT.install()
        _STDERR.install()
        return self._ctx

    def __exit__(self, *exc: object) -> None:
        global _running
        with _running_lock:
            _running = tuple(ctx for ctx in _running if ctx is not self._ctx)
        _current.reset(self._token)
        self._ctx.close_outputs()
        try:
            self._ctx.flush()
        except OSError:
            pass  # progress is best effort; the outcome matters more


class TaskContext:
    """The job a process is running now and the files it reports through."""

    def __init__(self, queue: Queue, job_id: str, *, name: str | None = None) -> None:
        self.queue = queue
        self.job_id = job_id
        self.name = name
        self.file_mode = getattr(queue.storage, "file_mode", 0o600)
        self._has_dir = False
        #: Set when jobs/<id> turned out to be a symlink: no output or progress is written.
        self.refused = False
        self._last_write = 0.0
        self._pending: dict[str, Any] | None = None
        self._job: Job | None = None
        self._fds: dict[str, int] = {}
        self._fd_lock = threading.Lock()

    def file_path(self, name: str) -> str:
        """OS path of a file in the job folder (created on first use)."""
        if not self._has_dir:
            self.queue.storage.mkdir(layout.job_dir(self.job_id))
            self._has_dir = True
        path = self.queue.storage.local_path(layout.job_file(self.job_id, name))
        if path is None:
            raise RuntimeError("tasks run on a mounted queue directory")
        return path

    def open_output(self, name: str) -> int:
        """A descriptor appending to ``jobs/<id>/<name>``; SymlinkInQueueError if that folder is a symlink."""
        storage = self.queue.storage
        if isinstance(storage, LocalStorage):
            if not self._has_dir:
                storage.mkdir(layout.job_dir(self.job_id))
                self._has_dir = True
            # Opened relative to jobs/ with no symlink followed: a jobs/<id>
            # planted as a symlink must not receive (or redirect) the output.
            return storage.open_append(layout.job_file(self.job_id, name))
        return os.open(self.file_path(name), _APPEND, self.file_mode)

    def write_output(self, name: str, text: str) -> int:
        """Append ``text`` to ``jobs/<id>/<name>`` (stdout or stderr), opening it on the first write."""
        fd = self._fds.get(name)
        if fd is None:
            if self.refused:
                return len(text)  # its job folder is a symlink: the output goes nowhere
            with self._fd_lock:  # the task's own threads may write at once
                fd = self._fds.get(name)
                if fd is None:
                    try:
                        fd = self._fds[name] = self.open_output(name)
                    except SymlinkInQueueError as exc:
                        self.refuse(exc)
                        return len(text)
        os.write(fd, text.encode("utf-8", "replace"))
        return len(text)

    def close_outputs(self) -> None:
        """Close the output files (the task ended); a later write opens them again."""
        with self._fd_lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def refuse(self, exc: SymlinkInQueueError) -> None:
        """Stop writing output and progress of this task, and say why once."""
        if not self.refused:
            self.refused = True
            log.error("job %s: not writing its output or progress: %s", self.job_id, exc)

    @property
    def job(self) -> Job:
        if self._job is None:
            from fs_task_queue.job import Job

            self._job = Job(self.queue, self.job_id, name=self.name)
        return self._job

    def report(self, done: float, total: float | None, message: str | None) -> None:
        record = {"done": done, "total": total, "message": message, "at": time.time()}
        now = time.monotonic()
        final = total is not None and done >= total
        if final or now - self._last_write >= PROGRESS_INTERVAL:
            self._write(record)
            self._last_write = now
        else:
            self._pending = record

    def _write(self, record: dict[str, Any]) -> None:
        self._pending = None
        if self.refused:
            return
        try:
            self.file_path("progress")  # makes the folder
            self.queue.storage.publish(
                layout.job_file(self.job_id, "progress"), json.dumps(record).encode(), replace=True
            )
        except SymlinkInQueueError as exc:
            self.refuse(exc)  # the task goes on; only its reports are lost

    def flush(self) -> None:
        """Write a progress report that was held back by the rate limit."""
        if self._pending is not None:
            self._write(self._pending)

    def activate(self) -> _Activation:
        """Make this the current job and capture stdout/stderr while the ``with`` block runs."""
        return _Activation(self)


def current_job() -> Job | None:
    """The job this code runs in, or None outside a task."""
    ctx = _context()
    return ctx.job if ctx is not None else None


_JOB_FILE_NAME = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,63}")
_RESERVED = frozenset({"stdout", "stderr", "progress"})


def check_job_file_name(name: str) -> str:
    """``name`` if a task may write it into its job folder, else ValueError saying why."""
    if not isinstance(name, str) or not _JOB_FILE_NAME.fullmatch(name) or name in _RESERVED:
        raise ValueError(
            f"invalid job file name {name!r}: use 1-64 of a-z, 0-9, '_', '.', '-' (not starting with '.' or"
            " '-'), other than stdout, stderr and progress (written by the worker)"
        )
    return name


def write_job_file(name: str, data: bytes) -> bool:
    """Write ``jobs/<id>/<name>`` of the running task atomically; False (nothing written) outside a task.

    For what a task produces besides its result and wants kept with the job
    (``Job.read_file(name)`` reads it back), e.g. a notebook cell's outputs.
    """
    check_job_file_name(name)
    ctx = _context()
    if ctx is None or ctx.refused:
        return False
    try:
        ctx.queue.storage.publish(layout.job_file(ctx.job_id, name), bytes(data), replace=True, make_parent=True)
    except SymlinkInQueueError as exc:
        ctx.refuse(exc)
        return False
    return True


def progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Report progress of the running task (``done`` out of ``total``, and a message).

    Cheap to call often: reports are written atomically at most every
    :data:`PROGRESS_INTERVAL` seconds, and the last one is always kept. Outside
    a task it does nothing, so task functions also run as plain functions.
    """
    ctx = _context()
    if ctx is not None:
        ctx.report(done, total, message)
