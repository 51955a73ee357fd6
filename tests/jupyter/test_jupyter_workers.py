"""Local workers of a notebook die with it: ``fs-task-queue-worker --parent-pid``; job files of a task."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Workers, wait_for

from fs_task_queue import Queue
from fs_task_queue.runtime import write_job_file


def test_worker_exits_when_its_parent_is_killed(qpath: Path, workers: Workers) -> None:
    queue = Queue(qpath)
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        proc = workers.start(qpath, "--name", "child", "--parent-pid", str(parent.pid))
        wait_for(lambda: proc.poll() is not None or queue.workers() != [], what="the worker to register")
        assert proc.poll() is None, workers.log(proc)
        parent.send_signal(signal.SIGKILL)  # a kernel killed runs no exit handler
        parent.wait()
        assert workers.wait(proc) == 0
        assert "parent process" in workers.log(proc)
        assert queue.workers() == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_parent_pid_that_does_not_exist_is_refused(qpath: Path, workers: Workers) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    proc = workers.start(qpath, "--parent-pid", str(gone.pid))
    assert workers.wait(proc) == 1
    assert f"--parent-pid {gone.pid}: no such process" in workers.log(proc)


def _writes_file() -> bool:
    return write_job_file("notes.json", b'{"ok": 1}')


def test_job_file_written_by_the_task_is_read_back(qpath: Path, workers: Workers) -> None:
    queue = Queue(qpath)
    job = queue.enqueue(_writes_file)
    workers.wait(workers.start(qpath, "--burst"))
    assert job.wait(0) is True
    assert job.read_file("notes.json") == b'{"ok": 1}'
    assert job.read_file("other.json") is None
    assert _writes_file() is False  # outside a task: nothing written
    for bad in ("stdout", "../x", ".hidden", "a/b", "UPPER"):
        with pytest.raises(ValueError, match="invalid job file name"):
            job.read_file(bad)
