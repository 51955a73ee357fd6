"""What a task process is doing, posted where its worker can read it for free.

A worker's task process claims, runs and commits tasks by itself; the worker
process only supervises it. To enforce timeouts, cancel a running task and
settle the claims of a task process that died, the worker must know which task
runs now. Telling it over a pipe would cost two process wake-ups per task, more
than the task's own file operations, so the task process posts its state on a
small shared-memory *board* instead: writing it costs a few microseconds and no
system call. Updates use a sequence lock (odd while writing) so a reader never
takes a half-written name.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass

__all__ = ["IDLE", "RUNNING", "COMMITTING", "Board", "Post"]

IDLE, RUNNING, COMMITTING = 0, 1, 2

# seq, state, tasks done, started (wall clock), deadline (monotonic, 0 = none), name length, name
_FIELDS = struct.Struct("=QBQddH200s")
_SEQ = struct.Struct("=Q")
# Written by the worker process only (one aligned 8-byte store, so no lock):
# when it last looked, on the monotonic clock, which all processes share.
_STAMP = struct.Struct("=d")
_STAMP_AT = 512
_SIZE = 4096


@dataclass(frozen=True)
class Post:
    """One consistent reading of a board."""

    seq: int
    state: int
    done: int
    started: float | None
    deadline: float | None
    name: str


class Board:
    """A shared-memory record of one task process's state (see the module docstring).

    The worker creates it before starting the task process, which inherits (or
    is passed) :meth:`fileno` and attaches with :meth:`attach`.
    """

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = _anonymous_file()
            os.ftruncate(fd, _SIZE)
        self._fd = fd
        self._map = mmap.mmap(fd, _SIZE)
        self._seq = _SEQ.unpack_from(self._map, 0)[0]
        self._done = 0

    @classmethod
    def attach(cls, fd: int) -> Board:
        """The board behind an inherited descriptor (in the task process)."""
        board = cls(fd)
        board._done = board.read().done
        return board

    def fileno(self) -> int:
        return self._fd

    def _write(self, state: int, name: str, deadline: float | None = None, started: float = 0.0) -> None:
        raw = name.encode()
        seq = self._seq + 1  # odd: a reader retries
        _FIELDS.pack_into(self._map, 0, seq, state, self._done, started, deadline or 0.0, len(raw), raw)
        self._seq = seq + 1
        _SEQ.pack_into(self._map, 0, self._seq)

    def running(self, name: str, deadline: float | None) -> None:
        """Post that the task file ``name`` is being run (until ``deadline``, if any)."""
        self._write(RUNNING, name, deadline, time.time())

    def committing(self, name: str) -> None:
        """Post that the task's function returned and its outcome is being written."""
        self._write(COMMITTING, name)

    def idle(self, *, finished: bool) -> None:
        """Post that no task runs (``finished``: one more task was handled)."""
        self._done += finished
        self._write(IDLE, "")

    def stamp(self) -> None:
        """Record that the supervising worker process is alive and looking (worker side)."""
        _STAMP.pack_into(self._map, _STAMP_AT, time.monotonic())

    def supervisor_silence(self) -> float:
        """Seconds since the worker process last stamped the board (task process side)."""
        stamped: float = _STAMP.unpack_from(self._map, _STAMP_AT)[0]
        return time.monotonic() - stamped

    def read(self) -> Post:
        """The current state; consistent even while the task process writes."""
        for _ in range(1000):
            seq, state, done, started, deadline, length, raw = _FIELDS.unpack_from(self._map, 0)
            if seq % 2 == 0 and _SEQ.unpack_from(self._map, 0)[0] == seq:
                break
        # Still odd: the writer died between its two stores. The first one wrote
        # every field, so they are whole; only the closing sequence bump is missing.
        name = raw[:length].decode(errors="replace")
        return Post(seq, state, done, started or None, deadline or None, name)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def _anonymous_file() -> int:
    # memfd on Linux; elsewhere an unlinked temporary file does the same job.
    if hasattr(os, "memfd_create"):
        return os.memfd_create("fsq-board")
    import tempfile

    fd, path = tempfile.mkstemp(prefix="fsq-board-")
    os.unlink(path)
    return fd
