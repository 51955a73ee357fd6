"""A full disk: a 2 MB tmpfs holds the queue."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from fs_task_queue import JobStatus, QueueError

from .faultlib import all_claimed, executions, mark, names, queued_file, queued_names


def big_result(fx: str, key: str, size: int) -> bytes:
    """Record the run, then return ``size`` incompressible bytes."""
    os.close(os.open(os.path.join(fx, f"{key}.{uuid.uuid4().hex}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    return os.urandom(size)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M,mode=0700", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        message = f"cannot mount a tmpfs (needs root): {done.stderr.decode(errors='replace').strip()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message + "; run the tests as root")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def lab_path(small_fs: Path) -> Path:
    """The fault suite's ``lab`` keeps its queue on the small tmpfs (its side-effect folder stays in tmp_path)."""
    return small_fs / "q"


@pytest.mark.timeout(90)
def test_disk_full_on_submit_and_on_commit(small_fs, lab, procs):
    path, queue, fx = lab.path, lab.queue, lab.fx
    # A task that does not fit: refused whole, nothing queued, no temporary file left.
    with pytest.raises(QueueError, match="No space left on device") as err:
        queue.enqueue(len, os.urandom(3 << 20))
    assert "Nothing was queued" in str(err.value)
    assert names(path / "queued") == [] and names(path / "tmp") == []  # not even a shard folder

    # A map that fills the disk part way: the error says how many went in, and they are
    # whole; once within the first chunk of 256 sealed tasks, once past it (a page a task).
    for count, size, at_least in ((6, 500_000, 1), (600, 3000, 257)):
        with pytest.raises(QueueError, match=rf"The first (\d+) of {count} tasks were queued") as err:
            queue.map(len, [os.urandom(size) for _ in range(count)])
        queued = queued_names(path)
        assert f"The first {len(queued)} of {count}" in str(err.value) and at_least <= len(queued) < count
        assert names(path / "tmp") == []
        for name in queued:
            os.unlink(queued_file(path, name))

    # Leave ~300 KB free: the task fits, its 700 KB result does not.
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * (free_bytes(small_fs) - 300_000))
    print(f"free before the big result: {free_bytes(small_fs)} bytes")
    job = queue.enqueue(big_result, str(fx), "big", 700_000)
    after = queue.enqueue(mark, str(fx), "after")

    worker = procs.worker(path, "w", "--recover-interval", "0.5", "--max-poll-interval", "0.2")
    assert procs.wait(worker) == 0, procs.log(worker)  # it stops by itself
    log = procs.log(worker)
    assert "cannot write the outcome" in log and "refuses writes" in log, log
    assert executions(fx)["big"] == 1
    assert job.get_status() is JobStatus.QUEUED, log  # not lost, not marked done
    assert job.id not in names(path / "results") and job.id in queued_names(path)
    # The task process may have run the next task while the big outcome was being
    # written (one outcome may lag): then its small outcome fitted. Either way it
    # ran at most once, and nothing ran after the refusal was known.
    ran_after = executions(fx)["after"]
    assert (after.get_status(), ran_after) in ((JobStatus.QUEUED, 0), (JobStatus.FINISHED, 1)), log
    assert all_claimed(path) == [] and names(path / "tmp") == []

    ballast.unlink()
    again = procs.worker(path, "w2", "--burst")
    assert procs.wait(again) == 0, procs.log(again)
    assert len(job.wait(0)) == 700_000 and after.wait(0).startswith("after.")
    t = lab.tally(
        "disk full (2 MB tmpfs)",
        {"big": job, "after": after},
        note="submit refused; result that did not fit requeued, done after space freed",
    )
    # The first run's outcome could not be kept, so it ran again: at least once, committed once.
    assert t.executed_twice == ["big"] and lab.commits.snapshot()[job.id] == 1
    assert not t.lost and not t.committed_twice and not t.not_finished
