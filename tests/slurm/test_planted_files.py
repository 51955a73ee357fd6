"""Files planted among a queue's SLURM and duration records are data, checked: none crashes or reaches scancel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fs_task_queue import Queue
from fs_task_queue.durations import duration_key, duration_path, read_estimate
from fs_task_queue.errors import SlurmError
from fs_task_queue.reprs import queue_html
from fs_task_queue.slurm import POLICY_PATH, list_jobs, read_policy

from .conftest import SlurmCluster

DEEP = b"[" * 8000  # json.loads raises RecursionError, which is no ValueError


def test_a_worker_record_cannot_name_an_option_as_its_slurm_job(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    record = {"id": "evil-1-abcd", "host": "h", "pid": 1, "slurm": {"job_id": "--user=root", "partition": "x"}}
    (tmp_path / "q" / "workers" / "evil-1-abcd").write_text(json.dumps(record))
    (worker,) = queue.workers()
    assert worker.slurm_job_id is None  # not a SLURM job id: never listed, never given to scancel
    assert list_jobs(queue) == []


@pytest.mark.parametrize("planted", [DEEP, b'"just a string"', b"{}", b"\xff\xfe", b"{" + b" " * 100_000 + b"}"])
def test_bad_estimate_and_job_record_files_are_ignored(tmp_path: Path, planted: bytes) -> None:
    queue = Queue(tmp_path / "q")
    key = duration_key({"fn": "mymodule.simulate"})
    assert key is not None
    estimate = tmp_path / "q" / duration_path(key)
    estimate.parent.mkdir(mode=0o700, exist_ok=True)
    estimate.write_bytes(planted)
    assert read_estimate(queue.storage, key) is None
    records = tmp_path / "q" / "slurm" / "jobs"
    records.mkdir(parents=True, mode=0o700)
    (records / "5.json").write_bytes(planted)
    assert list_jobs(queue) == []
    assert "Queue" in queue_html(queue)  # the dashboard still draws


@pytest.mark.parametrize(
    "planted",
    [
        DEEP,
        b'"just a string"',
        b'{"options": {"time": "1:00"}, "max_workers": "many", "max_pending": 1, "max_per_minute": 1}',
        b'{"options": {"time": "1:00", "sbatch_args": "--x"}, "max_workers": 1, "max_pending": 1, "max_per_minute": 1}',
        b'{"options": {"time": "1:00"}, "max_workers": 1, "max_pending": 1, "max_per_minute": 1, "submitted": "x"}',
    ],
)
def test_a_bad_pool_policy_is_a_clear_error(tmp_path: Path, planted: bytes) -> None:
    queue = Queue(tmp_path / "q")
    (tmp_path / "q" / POLICY_PATH).write_bytes(planted)
    with pytest.raises(SlurmError, match=r"is not a SLURM pool policy.*set it again with"):
        read_policy(queue)


def test_info_prunes_only_its_own_users_ended_jobs(
    slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a shared queue, another member's pending job is not in this user's squeue: it is left alone."""
    from fs_task_queue.cli import main

    queue = Queue(tmp_path / "q")
    records = tmp_path / "q" / "slurm" / "jobs"
    records.mkdir(parents=True, mode=0o700)
    import getpass

    for job_id, user in (("999901", "someone-else"), ("999902", getpass.getuser())):
        record = {"job_id": job_id, "user": user, "submitted": 1.0, "output": f"/x/slurm-{job_id}.out"}
        (records / f"{job_id}.json").write_text(json.dumps(record))
    assert main(["info", str(queue.path)]) == 0
    out = capsys.readouterr().out
    assert "SLURM job 999902 ended without starting its worker" in out, out
    assert "SLURM job 999901 ended" not in out
    assert sorted(p.name for p in records.iterdir()) == ["999901.json"]
