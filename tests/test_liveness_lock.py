"""The liveness lock a claimer takes on ``claimed/<worker-id>/.alive``."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap

import pytest

from fs_task_queue import Queue, layout
from fs_task_queue.liveness import AliveLock


def _holder(path: str, seconds: float) -> subprocess.Popen[bytes]:
    """Another process that holds the flock on ``path`` for ``seconds`` (as a probe or a live worker)."""
    code = textwrap.dedent(
        f"""
        import fcntl, os, sys, time
        fd = os.open({path!r}, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        sys.stdout.write("held\\n"); sys.stdout.flush()
        time.sleep({seconds})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.readline() == b"held\n"
    return proc


def _lock_path(queue: Queue, worker_id: str) -> str:
    queue.storage.mkdir(layout.claimed_dir(worker_id))
    path = queue.storage.local_path(layout.alive_path(worker_id))
    assert path is not None
    return path


def test_a_probe_holding_the_lock_for_a_moment_does_not_refuse_a_new_worker(tmp_path):
    # A recoverer on this host probes a worker's lock by taking it for an
    # instant; a worker registering at that instant must still get its name.
    queue = Queue(tmp_path / "q")
    probe = _holder(_lock_path(queue, "w"), 0.1)
    lock = AliveLock(queue.storage, "w")
    try:
        lock.acquire()
        fd = os.open(lock.path or "", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # now it is really ours
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        lock.release(remove=True)
        probe.wait(10)


def test_a_live_holder_keeps_the_name(tmp_path):
    queue = Queue(tmp_path / "q")
    live = _holder(_lock_path(queue, "w"), 30)
    try:
        with pytest.raises(FileExistsError, match="held by a live process"):
            AliveLock(queue.storage, "w").acquire()
    finally:
        live.kill()
        live.wait(10)
