"""The "floor": the least a directory-as-queue can do, to compare fs-task-queue against.

Everything here is deliberately featureless: no pickling, no signatures, no
heartbeat, no liveness lock, no isolation child, no cancellation check, no
clean-up of claimed files. What is left is the filesystem protocol itself:

* enqueue: write ``tmp/<name>.tmp``, rename it to ``queued/<name>``;
* drain: list ``queued/`` once, and for each name (oldest first) rename it to
  ``claimed/<worker>/<name>``, read it, write ``tmp/<name>.r``, rename that to
  ``results/<name>``;
* serve: the same, but waiting on inotify when the queue is empty;
* client: wait for ``results/<name>`` with one inotify watch kept for the whole
  run, then read it.

A real queue cannot beat these loops on the same filesystem with the same
interpreter, so "fs-task-queue as a fraction of the floor" says how much its
features cost. This module must not import fs_task_queue: its start-up cost is
part of what the floor leaves out.

Run as a script it plays the roles the benchmark starts as separate processes::

    python floor.py drain ROOT WORKER_ID     # burst worker: list once, drain, exit
    python floor.py serve ROOT WORKER_ID     # idle worker (writes ROOT/ready.<id>)
    python floor.py client ROOT N            # enqueue N, wait for all N results
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import sys
import time

__all__ = ["Inotify", "drain", "enqueue", "make_root", "read_small", "serve", "wait_for"]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_CLOEXEC
#: One read of this many bytes returns a whole task or result file (they are ~200 bytes).
_READ_SIZE = 1 << 16
RESULT = b"floor-result\n" * 16  # about the size of a small fs-task-queue result file
SUBDIRS = ("tmp", "queued", "claimed", "results")

_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_EVENT = struct.Struct("iIII")


def make_root(root: str) -> None:
    """Create the floor's folders (the floor has no format file, key or worker registry)."""
    for sub in SUBDIRS:
        os.makedirs(f"{root}/{sub}", exist_ok=True)


def publish(tmp: str, final: str, data: bytes) -> None:
    """open/write/close ``tmp``, then rename it to ``final``: readers see the whole file or none."""
    fd = os.open(tmp, _CREATE, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, final)


def enqueue(root: str, n: int, payload: bytes, *, start: int = 0) -> list[str]:
    """Submit ``n`` tasks: one open/write/close/rename each. Names sort in submission order."""
    names = []
    prefix = f"{os.getpid()}"
    for i in range(start, start + n):
        # time_ns keeps names from different runs in order; the counter breaks ties.
        name = f"{time.time_ns():020d}-{prefix}-{i:09d}"
        publish(f"{root}/tmp/{name}.tmp", f"{root}/queued/{name}", payload)
        names.append(name)
    return names


def read_small(path: str) -> bytes:
    """open/read/close: one read returns these small files whole (no fstat to size the buffer)."""
    fd = os.open(path, _READ)
    try:
        return os.read(fd, _READ_SIZE)
    finally:
        os.close(fd)


def _run_one(root: str, worker_id: str, name: str) -> bool:
    claimed = f"{root}/claimed/{worker_id}/{name}"
    try:
        os.rename(f"{root}/queued/{name}", claimed)
    except FileNotFoundError:
        return False  # another worker took it
    read_small(claimed)
    publish(f"{root}/tmp/{name}.r", f"{root}/results/{name}", RESULT)
    return True


def drain(root: str, worker_id: str) -> int:
    """Burst worker: list ``queued/`` once, run every name it can claim, return how many."""
    os.makedirs(f"{root}/claimed/{worker_id}", exist_ok=True)
    done = 0
    for name in sorted(os.listdir(f"{root}/queued")):
        done += _run_one(root, worker_id, name)
    return done


class Inotify:
    """The minimum of inotify: watch some folders for new names, wait, read the names."""

    def __init__(self, paths: list[str]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        for path in paths:
            if libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_MOVED_TO | _IN_CREATE) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch failed for {path}")

    def wait(self, timeout: float | None) -> set[str]:
        """Names that appeared (empty on timeout)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return set()
        names: set[str] = set()
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return names
        offset = 0
        while offset + _EVENT.size <= len(data):
            length = _EVENT.unpack_from(data, offset)[3]
            offset += _EVENT.size
            names.add(data[offset : offset + length].rstrip(b"\0").decode())
            offset += length
        return names


def serve(root: str, worker_id: str) -> None:
    """Idle-capable worker: drain, then sleep on inotify until something is queued; forever."""
    os.makedirs(f"{root}/claimed/{worker_id}", exist_ok=True)
    watch = Inotify([f"{root}/queued"])
    with open(f"{root}/ready.{worker_id}", "w") as f:
        f.write(str(os.getpid()))
    while True:
        for name in sorted(os.listdir(f"{root}/queued")):
            _run_one(root, worker_id, name)
        watch.wait(None)


def wait_for(root: str, name: str, watch: Inotify, timeout: float = 60.0) -> bytes:
    """Read ``results/<name>`` once it exists (the watch must predate the submission)."""
    deadline = time.monotonic() + timeout
    path = f"{root}/results/{name}"
    while True:
        try:
            return read_small(path)
        except FileNotFoundError:
            pass
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no result for {name} within {timeout} s")
            if name in watch.wait(left):
                break


def _client(root: str, n: int) -> None:
    # Same shape as benchmarks/client.py: submit n, then wait for every result in order.
    watch = Inotify([f"{root}/results"])
    payload = read_small(f"{root}/payload")  # read in the baseline run too, so it cancels out
    for name in enqueue(root, n, payload):
        wait_for(root, name, watch)


def main(argv: list[str]) -> int:
    role, root, arg = argv[0], argv[1], argv[2]
    if role == "drain":
        drain(root, arg)
    elif role == "serve":
        serve(root, arg)
    elif role == "client":
        _client(root, int(arg))
    else:
        raise SystemExit(f"unknown role {role!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
