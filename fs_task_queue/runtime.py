"""What a running task sees: :func:`current_job`, :func:`progress`, captured output.

While a worker runs a task it activates a :class:`TaskContext`: ``print`` output
goes to ``jobs/<id>/stdout`` and ``stderr`` (written through, so readable while
the task runs) and :func:`progress` writes ``jobs/<id>/progress``. The job folder
is created only when the task first writes output or progress, so a silent task
costs no extra filesystem operations.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
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
_current: TaskContext | None = None

#: Progress is written at most this often (seconds); the last report is always kept.
PROGRESS_INTERVAL = 0.2


class _LogStream(io.TextIOBase):
    """A text stream that appends to a file of the running job, opened on the first write.

    One pair serves every task a process runs (made once: a stream costs more
    to create than a no-op task takes to run); :meth:`release` ends a task's use.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self._fd = -1
        self._owner: TaskContext | None = None

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
        ctx = _current
        if self._owner is not ctx:  # a task run inside a task, or one just ended
            self.release()
        if self._fd < 0:
            if ctx is None:  # written to after its task ended (a thread left behind)
                return sys.__stderr__.write(text) if sys.__stderr__ is not None else len(text)
            if ctx.refused:
                return len(text)  # its job folder is a symlink: the output goes nowhere
            try:
                self._fd = ctx.open_output(self._name)
            except SymlinkInQueueError as exc:
                ctx.refuse(exc)
                return len(text)
            self._owner = ctx
        os.write(self._fd, text.encode("utf-8", "replace"))
        return len(text)

    def release(self) -> None:
        self._owner = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_STDOUT, _STDERR = _LogStream("stdout"), _LogStream("stderr")


class _Activation:
    """The context manager returned by :meth:`TaskContext.activate` (a class: cheaper than a generator)."""

    __slots__ = ("_ctx", "_saved")

    def __init__(self, ctx: TaskContext) -> None:
        self._ctx = ctx

    def __enter__(self) -> TaskContext:
        global _current
        self._saved = _current, sys.stdout, sys.stderr
        _current, sys.stdout, sys.stderr = self._ctx, _STDOUT, _STDERR
        return self._ctx

    def __exit__(self, *exc: object) -> None:
        global _current
        _current, sys.stdout, sys.stderr = self._saved
        _STDOUT.release()
        _STDERR.release()
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
    return _current.job if _current is not None else None


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
    ctx = _current
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
    if _current is not None:
        _current.report(done, total, message)
