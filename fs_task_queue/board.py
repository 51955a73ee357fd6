"""What a task process is doing, posted where its worker can read it for free.

A worker's task process claims and runs tasks by itself (the worker process
publishes their outcomes). To enforce timeouts, cancel a running task and
settle the claims of a task process that died, the worker must know which task
runs now. Telling it over a pipe would cost process wake-ups per task, more
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
from typing import NamedTuple

__all__ = ["IDLE", "RUNNING", "COMMITTING", "Board", "Post"]

IDLE, RUNNING, COMMITTING = 0, 1, 2

# At 0: the sequence number; at 8: state, tasks done, started (wall clock),
# deadline (monotonic, 0 = none), name length, name.
_SEQ = struct.Struct("=Q")
_BODY = struct.Struct("=BQddH200s")
_BODY_AT = _SEQ.size
# Written by the worker process only: when it last looked, on the monotonic
# clock, which all processes share.
_STAMP = struct.Struct("=d")
_STAMP_AT = 512
# Written by the worker process only: the wall-clock time by which a task
# claimed now must end (its SLURM job's end less a margin; 0 = no limit).
_LIMIT = struct.Struct("=d")
_LIMIT_AT = 520
#: A post still half-written after this long (seconds) was left by a writer that died.
_WRITER_DEAD_AFTER = 0.2
# Every store is a slice assignment of packed bytes, never struct.pack_into:
# pack_into zeroes its target before writing it, so a reader in the other
# process could see a zero sequence number or stamp that no writer meant.
_SIZE = 4096


class Post(NamedTuple):
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
        body = _BODY.pack(state, self._done, started, deadline or 0.0, len(raw), raw)
        board = self._map
        # The sequence word goes in by slice assignment (one 8-byte copy), not
        # _SEQ.pack_into, which stores it byte by byte: a reader could then see
        # half of an old and half of a new number (tests/test_board.py did).
        board[0:_BODY_AT] = _SEQ.pack(self._seq + 1)  # odd: a reader retries
        board[_BODY_AT : _BODY_AT + _BODY.size] = body
        self._seq += 2
        board[0:_BODY_AT] = _SEQ.pack(self._seq)

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
        self._map[_STAMP_AT : _STAMP_AT + _STAMP.size] = _STAMP.pack(time.monotonic())

    def set_claim_until(self, when: float | None) -> None:
        """Post the time by which a task claimed now must end (worker side; None: no limit)."""
        self._map[_LIMIT_AT : _LIMIT_AT + _LIMIT.size] = _LIMIT.pack(when or 0.0)

    def claim_until(self) -> float | None:
        """What :meth:`set_claim_until` posted (task process side)."""
        when: float = _LIMIT.unpack_from(self._map, _LIMIT_AT)[0]
        return when or None

    def supervisor_silence(self) -> float:
        """Seconds since the worker process last stamped the board (task process side)."""
        # One writer, no lock: two equal reads in a row are one whole stamp.
        stamped: float = _STAMP.unpack_from(self._map, _STAMP_AT)[0]
        for _ in range(1000):
            again: float = _STAMP.unpack_from(self._map, _STAMP_AT)[0]
            if again == stamped:
                break
            stamped = again
        return time.monotonic() - stamped

    def read(self) -> Post:
        """The current state; consistent even while the task process writes."""
        board = self._map
        give_up = 0.0
        while True:
            for _ in range(100):
                seq = _SEQ.unpack_from(board, 0)[0]
                state, done, started, deadline, length, raw = _BODY.unpack_from(board, _BODY_AT)
                if seq % 2 == 0 and _SEQ.unpack_from(board, 0)[0] == seq:
                    break
            else:
                # A post takes microseconds, unless its writer was descheduled in
                # the middle (a busy machine) or died there: wait for the one,
                # not forever for the other.
                now = time.monotonic()
                give_up = give_up or now + _WRITER_DEAD_AFTER
                if now < give_up:
                    time.sleep(0.0005)
                    continue
            break
        # Still odd: the writer died in the middle of a post. Its fields may be
        # mixed; the name at least is decoded leniently.
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
