"""Remote helper mode: chosen when the remote has fs-task-queue, refused when another version, gone with the link."""

from __future__ import annotations

import logging
import operator
import sys
import threading
from pathlib import Path

import pytest
from helpers import WAIT, wait_for
from ssh_server import Sshd, ssh_opts

from fs_task_queue import Queue, QueueError
from fs_task_queue.plugins import SSHQueue


def test_auto_mode_uses_the_helper_where_installed_and_says_so(
    sshd: Sshd, qdir: Path, local: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fs_task_queue.ssh")
    with SSHQueue(sshd.url(qdir), **ssh_opts(sshd, remote_python=sys.executable)) as queue:
        assert queue.storage.mode == "helper"  # type: ignore[attr-defined]
        assert queue.storage.why_not_helper is None  # type: ignore[attr-defined]
        group = queue.map(operator.pos, range(5))
        assert {s.status.value for s in queue.snapshot(group).values()} == {"queued"}
    assert any("using the remote helper" in r.getMessage() for r in caplog.records)


def test_without_fs_task_queue_there_it_falls_back_to_sftp_saying_why(
    sshd: Sshd, qdir: Path, local: Queue, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="fs_task_queue.ssh")
    bare = tmp_path / "bare-python"  # an interpreter where fs-task-queue is not importable
    bare.write_text(f'#!/bin/sh\nexec {sys.base_prefix}/bin/python3 -I "$@"\n')
    bare.chmod(0o755)
    with SSHQueue(sshd.url(qdir), **ssh_opts(sshd, remote_python=str(bare))) as queue:
        assert queue.storage.mode == "sftp"  # type: ignore[attr-defined]
        assert "No module named fs_task_queue" in queue.storage.why_not_helper  # type: ignore[attr-defined]
        assert len(queue.map(operator.pos, range(5))) == 5  # everything works over SFTP
    assert any("using pure SFTP" in r.getMessage() for r in caplog.records)
    with pytest.raises(QueueError, match=r"helper=True.*No module named fs_task_queue.*remote_python"):
        SSHQueue(sshd.url(qdir), **ssh_opts(sshd, remote_python=str(bare), helper=True))


def test_a_helper_of_another_version_is_refused(sshd: Sshd, qdir: Path, local: Queue, tmp_path: Path) -> None:
    # A stand-in for another release installed there (only its hello matters): a fake, as
    # two releases cannot be installed here.
    other = tmp_path / "other-release"
    other.write_text(
        '#!/bin/sh\necho \'{"hello": "fs-task-queue-helper", "protocol": 99, "version": "9.9.9",'
        ' "format": 99, "python": "3.11", "pid": 1}\'\nexec cat >/dev/null\n'
    )
    other.chmod(0o755)
    with SSHQueue(sshd.url(qdir), **ssh_opts(sshd, remote_python=str(other))) as queue:
        assert queue.storage.mode == "sftp"  # type: ignore[attr-defined]
        why = queue.storage.why_not_helper  # type: ignore[attr-defined]
        assert "9.9.9" in why and "protocol 99" in why and "install the same version" in why
    with pytest.raises(QueueError, match=r"version 9\.9\.9 .*install the same version"):
        SSHQueue(sshd.url(qdir), **ssh_opts(sshd, remote_python=str(other), helper=True))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_the_helper_ends_when_the_connection_drops_and_comes_back(
    sshd: Sshd, qdir: Path, local: Queue, worker: str
) -> None:
    with SSHQueue(sshd.url(qdir), **ssh_opts(sshd, remote_python=sys.executable, helper=True)) as queue:
        storage = queue.storage
        pid = storage._helper.hello["pid"]  # type: ignore[attr-defined]
        assert _alive(pid)
        # Cut the TCP connection under the client, as a network drop would.
        transport = storage._conn._clients[-1].get_transport()  # type: ignore[attr-defined]
        transport.sock.shutdown(2)
        wait_for(lambda: not _alive(pid), what="the helper to exit")
        assert queue.enqueue(operator.add, 2, 3).wait(timeout=WAIT) == 5  # reconnected
        wait_for(lambda: storage.mode == "helper", what="a new helper")  # type: ignore[attr-defined]
        assert storage._helper.hello["pid"] != pid  # type: ignore[attr-defined]


def test_a_waiter_is_woken_by_the_push(sshd: Sshd, qdir: Path, local: Queue) -> None:
    with SSHQueue(sshd.url(qdir), **ssh_opts(sshd, remote_python=sys.executable, helper=True)) as queue:
        job = queue.enqueue(operator.pos, 7)
        woke = threading.Event()
        storage = queue.storage
        watcher = storage.watcher("results")
        watcher.max_interval = watcher.min_interval = 3600.0  # it could only wake by the push
        watcher.reset()

        def wait() -> None:
            watcher.wait()
            woke.set()

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        claimed = local.dequeue(timeout=WAIT, worker_id="test-runner")
        assert claimed.id == job.id
        claimed()
        waiter.join(WAIT)
        assert woke.is_set() and job.wait(timeout=WAIT) == 7
        watcher.close()
        local._claimer.close()  # type: ignore[union-attr]
