"""The batch script and sbatch command, without running SLURM."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from fs_task_queue import Queue
from fs_task_queue.cli import main
from fs_task_queue.slurm import SubmitOptions, batch_script, sbatch_argv


def test_the_worker_replaces_the_batch_shell_and_odd_paths_stay_one_argument(tmp_path: Path) -> None:
    path = tmp_path / "a queue; rm -rf ~ $(x)"
    script = batch_script(path, SubmitOptions(time="1:00:00", worker_args=["--max-idle", "30"]))
    (exec_line,) = [line for line in script.splitlines() if line.startswith("exec ")]
    assert shlex.split(exec_line) == [
        "exec", sys.executable, "-m", "fs_task_queue", "worker", "--path", str(path), "--max-idle", "30",
    ]  # fmt: skip
    assert script.startswith("#!/bin/sh\n") and script.count("\n") == len(script.splitlines())


def test_sbatch_gets_one_argument_per_option() -> None:
    options = SubmitOptions(
        time="0-01:00:00", partition="gpu", account="proj-1", cpus_per_task=4, mem="8G", array="0-3%2",
        sbatch_args=["--qos=short x"],
    )  # fmt: skip
    assert sbatch_argv(options) == [
        "sbatch", "--parsable", "--time=0-01:00:00", "--job-name=fsq-worker", "--partition=gpu",
        "--account=proj-1", "--cpus-per-task=4", "--mem=8G", "--array=0-3%2", "--qos=short x",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"time": "1h"}, "not a SLURM time"),
        ({"time": "1:00", "partition": "a b"}, "partition 'a b'"),
        ({"time": "1:00", "mem": "lots"}, "mem 'lots'"),
        ({"time": "1:00", "array": "0-3; x"}, "array"),
        ({"time": "1:00", "cpus_per_task": 0}, "cpus_per_task"),
    ],
)
def test_bad_options_are_refused_with_the_fix(bad: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        sbatch_argv(SubmitOptions(**bad))  # type: ignore[arg-type]


def test_dry_run_prints_the_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Queue(tmp_path / "q")
    assert main(["slurm", "submit", str(tmp_path / "q"), "-n", "3", "--time", "10:00", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# 3 x: sbatch --parsable --time=10:00" in out and f"--path {tmp_path / 'q'}" in out
    assert "exec " in out


def test_expected_duration_must_be_a_positive_number(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    for bad in (0, -1, float("inf"), "10"):
        with pytest.raises(ValueError, match="expected_duration must be a positive number"):
            queue.enqueue_call(print, expected_duration=bad)  # type: ignore[arg-type]


def test_submitted_workers_end_when_idle_unless_told_otherwise(tmp_path: Path) -> None:
    exec_line = batch_script(tmp_path, SubmitOptions(time="5:00")).splitlines()[-1]
    assert shlex.split(exec_line)[-2:] == ["--max-idle", "300"]
    own = batch_script(tmp_path, SubmitOptions(time="5:00", worker_args=["--max-idle=30"])).splitlines()[-1]
    assert shlex.split(own)[-1] == "--max-idle=30" and own.count("--max-idle") == 1
    never = batch_script(tmp_path, SubmitOptions(time="5:00", max_idle=None)).splitlines()[-1]
    assert "--max-idle" not in never


def test_pool_options_need_a_pool_size(tmp_path: Path) -> None:
    from fs_task_queue.slurm import submit_workers

    Queue(tmp_path / "q")
    with pytest.raises(ValueError, match=r"give max_workers \(--max N\) too"):
        submit_workers(tmp_path / "q", time="5:00", max_pending=2, dry_run=True)


def test_a_pool_is_not_started_bigger_than_its_size(tmp_path: Path) -> None:
    from fs_task_queue.slurm import submit_workers

    Queue(tmp_path / "q")
    with pytest.raises(ValueError, match="more than the pool size 2: lower -n or raise --max"):
        submit_workers(tmp_path / "q", 3, time="5:00", max_workers=2, dry_run=True)


def test_scale_without_squeue_says_where_to_run_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fs_task_queue.errors import SlurmError
    from fs_task_queue.slurm import PoolPolicy, scale, write_policy

    queue = Queue(tmp_path / "q")
    queue.enqueue(print)
    write_policy(queue, PoolPolicy(2, 2, 10, SubmitOptions(time="5:00")))
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands here
    with pytest.raises(SlurmError, match="squeue not found: run this on a SLURM login node"):
        scale(queue)


def test_one_scale_at_a_time_and_a_dead_holders_lock_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from fs_task_queue import slurm
    from fs_task_queue.errors import SlurmError

    queue = Queue(tmp_path / "q")
    queue.enqueue(print)
    slurm.write_policy(queue, slurm.PoolPolicy(2, 2, 10, SubmitOptions(time="5:00")))
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM here: getting as far as squeue means the lock was taken
    lock = tmp_path / "q" / slurm.LOCK_PATH
    lock.write_text("otherhost 1")
    monkeypatch.setattr(slurm, "LOCK_WAIT", 0.0)
    with pytest.raises(SlurmError, match=f"is busy .*remove {lock}"):
        slurm.scale(queue)
    assert lock.exists()  # not ours to remove
    os.utime(lock, (0, 0))  # its holder died long ago
    with pytest.raises(SlurmError, match="squeue not found"):
        slurm.scale(queue)
    assert not lock.exists()
