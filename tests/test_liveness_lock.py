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


def test_a_free_lock_before_the_identity_file_is_not_a_dead_worker(tmp_path):
    # A worker registers by creating claimed/<id>/.alive, locking it, then
    # writing claimed/<id>/.identity. A recoverer that probes between the
    # first two steps finds the lock free: that must not make the worker dead
    # (it would delete the worker's folder and heartbeat under it).
    import json

    from fs_task_queue.liveness import HostIdentity
    from fs_task_queue.recovery import Recoverer

    queue = Queue(tmp_path / "q")
    here = json.dumps({"id": "w", "pid": 1, **HostIdentity.here(queue.storage).as_record()}).encode()
    queue.storage.publish(layout.worker_path("w"), here, replace=True)  # its heartbeat, written first
    os.close(os.open(_lock_path(queue, "w"), os.O_RDWR | os.O_CREAT, 0o600))  # lock file made, not locked yet
    recoverer = Recoverer(queue, "me", dead_after=60)
    assert recoverer.verdict("w") == "unsure"
    assert recoverer.run_once() == [] and os.path.isdir(tmp_path / "q" / "claimed" / "w")
    assert (tmp_path / "q" / "workers" / "w").exists()

    # Once registered (identity written after locking), a free lock is a dead worker.
    queue.storage.publish(layout.identity_path("w"), here, replace=True)
    assert recoverer.verdict("w") == "dead"
    live = _holder(_lock_path(queue, "w"), 30)
    try:
        assert recoverer.verdict("w") == "alive"
    finally:
        live.kill()
        live.wait(10)


def test_a_clean_exit_between_the_identity_read_and_the_probe_is_not_a_death(tmp_path, monkeypatch):
    # A claimer that exits removes its identity file, then releases its lock,
    # then deletes the lock file. A recoverer that read the identity file just
    # before and probes the lock just after the release finds it free: that
    # worker exited cleanly and must not be presumed dead (seen once in the
    # two-sshfs-mounts test: "worker host-a-2 is dead" as the drain ended).
    import fs_task_queue.recovery as recovery
    from fs_task_queue.queue import Claimer

    queue = Queue(tmp_path / "q")
    leaving = Claimer(queue, "w")
    leaving.register()
    recoverer = recovery.Recoverer(queue, "me", dead_after=60)
    real_probe = recovery.probe_alive_lock

    def exit_then_probe(storage, worker_id):
        # The exit's first two steps happen in the recoverer's window; the lock file stays.
        storage.remove(layout.identity_path(worker_id))
        assert leaving._lock is not None
        leaving._lock.release(remove=False)
        return real_probe(storage, worker_id)

    monkeypatch.setattr(recovery, "probe_alive_lock", exit_then_probe)
    assert recoverer.verdict("w") != "dead"
