"""Queue directories other users could write into are refused; new queues are private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fs_task_queue import JobStatus, Queue
from fs_task_queue.layout import SUBDIRS

from .faultlib import mark, queued_file


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.timeout(60)
def test_new_queue_is_private(lab):
    job = lab.queue.enqueue(mark, str(lab.fx), "p")
    path = lab.path
    assert mode(path) == 0o700
    for sub in SUBDIRS:
        assert mode(path / sub) == 0o700, sub
    assert mode(path / "key") == 0o600
    assert mode(path / "fsq-format.json") == 0o600
    assert mode(queued_file(path, job.id)) == 0o600
    assert mode(queued_file(path, job.id).parent) == 0o700  # its shard folder
    worker = lab.worker("w", "--burst")
    assert lab.procs.wait(worker) == 0, lab.procs.log(worker)
    assert job.get_status() is JobStatus.FINISHED
    assert mode(path / "results" / job.id) == 0o600


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("where", "bits", "fix"),
    [
        ("", 0o777, "chmod o-w"),
        ("queued", 0o777, "chmod o-w"),
        ("", 0o770, "chmod g-w"),
        ("results", 0o770, "chmod g-w"),
    ],
    ids=["root-0777", "queued-0777", "root-0770-unshared", "results-0770-unshared"],
)
def test_worker_refuses_writable_queue(lab, where, bits, fix):
    target = lab.path / where if where else lab.path
    os.chmod(target, bits)
    job = lab.queue.enqueue(mark, str(lab.fx), "never")
    worker = lab.worker("w", "--burst")
    assert lab.procs.wait(worker) == 1
    log = lab.procs.log(worker)
    shown = str(target).rstrip("/")
    assert f"{fix} {shown}" in log and "writable" in log, log
    assert job.get_status() is JobStatus.QUEUED
    assert not os.listdir(lab.fx)


@pytest.mark.timeout(60)
def test_shared_queue_accepts_group_write(tmp_path, procs):
    path = tmp_path / "shared"
    queue = Queue(path, shared=True)
    assert mode(path) & 0o070 == 0o070 and mode(path) & 0o007 == 0
    assert mode(path / "queued") & 0o020 and mode(path / "key") == 0o660
    fx = tmp_path / "fx"
    fx.mkdir()
    job = queue.enqueue(mark, str(fx), "shared")
    assert mode(queued_file(path, job.id)) == 0o660
    assert mode(queued_file(path, job.id).parent) == 0o2770  # its shard folder: group-usable, setgid
    worker = procs.worker(path, "w", "--burst")
    assert procs.wait(worker) == 0, procs.log(worker)  # group-writable, but shared on purpose: accepted
    assert job.get_status() is JobStatus.FINISHED


@pytest.mark.timeout(60)
def test_files_written_into_a_shared_queue_stay_group_readable(tmp_path, procs):
    """Regression: a worker or client opening an existing shared queue once wrote 0600/0700 files."""
    path = tmp_path / "shared"
    Queue(path, shared=True)
    fx = tmp_path / "fx"
    fx.mkdir()
    job = Queue(path).enqueue(mark, str(fx), "shared")  # a group member opens the existing queue
    task_mode = mode(queued_file(path, job.id))
    worker = procs.worker(path, "w", "--burst")
    assert procs.wait(worker) == 0, procs.log(worker)
    assert job.get_status() is JobStatus.FINISHED
    result_mode = mode(path / "results" / job.id)
    print(f"in a shared queue: task file {task_mode:04o}, result file {result_mode:04o} (want 0660)")
    assert (task_mode, result_mode) == (0o660, 0o660)
