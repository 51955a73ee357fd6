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
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fs_task_queue import layout

if TYPE_CHECKING:
    from fs_task_queue.job import Job
    from fs_task_queue.queue import Queue

__all__ = ["TaskContext", "current_job", "progress"]

_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_current: TaskContext | None = None

#: Progress is written at most this often (seconds); the last report is always kept.
PROGRESS_INTERVAL = 0.2


class _LogStream(io.TextIOBase):
    """A text stream that appends to a job file, opening it on the first write."""

    def __init__(self, ctx: TaskContext, name: str) -> None:
        super().__init__()
        self._ctx = ctx
        self._name = name
        self._fd = -1

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
        if self._fd < 0:
            path = self._ctx.file_path(self._name)
            self._fd = os.open(path, _APPEND, self._ctx.file_mode)
        os.write(self._fd, text.encode("utf-8", "replace"))
        return len(text)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class TaskContext:
    """The job a process is running now and the files it reports through."""

    def __init__(self, queue: Queue, job_id: str, *, name: str | None = None) -> None:
        self.queue = queue
        self.job_id = job_id
        self.name = name
        self.file_mode = getattr(queue.storage, "file_mode", 0o600)
        self._has_dir = False
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
        self.file_path("progress")  # makes the folder
        self.queue.storage.publish(layout.job_file(self.job_id, "progress"), json.dumps(record).encode(), replace=True)

    def flush(self) -> None:
        """Write a progress report that was held back by the rate limit."""
        if self._pending is not None:
            self._write(self._pending)

    @contextmanager
    def activate(self) -> Iterator[TaskContext]:
        """Make this the current job and capture stdout/stderr while the block runs."""
        global _current
        out, err = _LogStream(self, "stdout"), _LogStream(self, "stderr")
        saved = _current, sys.stdout, sys.stderr
        _current, sys.stdout, sys.stderr = self, out, err
        try:
            yield self
        finally:
            _current, sys.stdout, sys.stderr = saved
            out.release()
            err.release()
            try:
                self.flush()
            except OSError:
                pass  # progress is best effort; the outcome matters more


def current_job() -> Job | None:
    """The job this code runs in, or None outside a task."""
    return _current.job if _current is not None else None


def progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Report progress of the running task (``done`` out of ``total``, and a message).

    Cheap to call often: reports are written atomically at most every
    :data:`PROGRESS_INTERVAL` seconds, and the last one is always kept. Outside
    a task it does nothing, so task functions also run as plain functions.
    """
    if _current is not None:
        _current.report(done, total, message)
