"""Found trying the CLI as a new user would: failures in the worker's log, numbers, usage, --path."""

from __future__ import annotations

import subprocess
import time

import pytest
from helpers import ADMIN_SCRIPT, WAIT, WORKER_SCRIPT, divide, run_burst

from fs_task_queue import Queue


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL)


def sleepy(seconds: float) -> None:
    time.sleep(seconds)


def test_the_info_log_names_each_failed_or_timed_out_task(queue: Queue) -> None:
    bad = queue.enqueue(divide, 1, 0)
    slow = queue.enqueue_call(sleepy, (30,), timeout=0.5)
    log = run_burst(queue.path).stderr
    assert f"job {bad.id} failed: ZeroDivisionError: division by zero" in log, log
    assert f"job {slow.id} failed: JobTimeoutError (timed out)" in log, log


@pytest.mark.parametrize(
    "argv, words",
    [
        ([*ADMIN_SCRIPT, "worker", "--path", "Q", "--timeout", "-1"], "--timeout: -1 is not allowed: use a number > 0"),
        ([*WORKER_SCRIPT, "--path", "Q", "--max-jobs", "0"], "--max-jobs: 0 is not allowed: use a whole number > 0"),
        ([*ADMIN_SCRIPT, "jobs", "Q", "--limit", "-1"], "--limit: -1 is not allowed: use a whole number > 0"),
        ([*ADMIN_SCRIPT, "worker", "--path", "Q", "--grace", "-2"], "--grace: -2 is not allowed: use a number >= 0"),
    ],
)
def test_bad_numbers_are_refused(argv: list[str], words: str) -> None:
    proc = run(*argv)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "args, usage",
    [
        (["jobs", "Q", "--stauts", "failed"], "usage: fs-task-queue jobs"),
        (["info", "Q", "--nope"], "usage: fs-task-queue info"),
        (["slurm", "submit", "Q", "--time", "1:00", "--nope"], "usage: fs-task-queue slurm submit"),
    ],
)
def test_a_usage_error_shows_the_commands_usage(args: list[str], usage: str) -> None:
    proc = run(*ADMIN_SCRIPT, *args)
    assert proc.returncode == 2 and proc.stderr.startswith(usage), proc.stderr
    assert "unrecognized arguments" in proc.stderr


def test_admin_commands_take_path_as_an_option_too(queue: Queue) -> None:
    a, b = queue.enqueue(divide, 1, 1), queue.enqueue(divide, 2, 1)
    proc = run(*ADMIN_SCRIPT, "info", "--path", str(queue.path))
    assert proc.returncode == 0 and "queued: 2" in proc.stdout, proc.stderr
    proc = run(*ADMIN_SCRIPT, "cancel", "--path", str(queue.path), a.id, b.id)
    assert proc.returncode == 0 and proc.stdout.split() == [f"{a.id}:", "canceled", f"{b.id}:", "canceled"]
    proc = run(*ADMIN_SCRIPT, "info", str(queue.path), "--path", str(queue.path) + "/")
    assert proc.returncode == 2 and "given twice, differently" in proc.stderr
    proc = run(*ADMIN_SCRIPT, "info", str(queue.path), "--path", str(queue.path))  # the same twice: no harm
    assert proc.returncode == 0 and "canceled: 2" in proc.stdout, proc.stderr
    proc = run(*ADMIN_SCRIPT, "info")
    assert proc.returncode == 2 and "give the queue directory: PATH or --path PATH" in proc.stderr
