"""The command line: fs-task-queue info/jobs/show/worker/demo and fs-task-queue-worker."""

from __future__ import annotations

import operator
import re
import subprocess
import sys

import pytest
from helpers import ADMIN_SCRIPT, WAIT, WORKER_MODULE, WORKER_SCRIPT, divide, run_burst, wait_for, wait_for_file

import fs_task_queue
from fs_task_queue import progress


def run(*argv: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return run(*ADMIN_SCRIPT, *args)


def talks(go: str) -> int:
    print("line one")
    print("line two")
    progress(1, 4, "a quarter")
    wait_for_file(go)
    return 1


# ------------------------------------------------------------------------- --help
@pytest.mark.parametrize(
    "argv",
    [
        [*ADMIN_SCRIPT, "--help"],
        [*ADMIN_SCRIPT, "info", "--help"],
        [*ADMIN_SCRIPT, "jobs", "--help"],
        [*ADMIN_SCRIPT, "show", "--help"],
        [*ADMIN_SCRIPT, "worker", "--help"],
        [*ADMIN_SCRIPT, "demo", "--help"],
        [*WORKER_SCRIPT, "--help"],
        [*WORKER_MODULE, "--help"],
        [sys.executable, "-m", "fs_task_queue", "--help"],
    ],
    ids=lambda argv: " ".join(a.rpartition("/")[2] for a in argv),
)
def test_help(argv):
    proc = run(*argv)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    if "worker" in " ".join(argv):
        for option in ("--path", "--burst", "--max-jobs", "--max-idle", "--heartbeat-interval", "--name"):
            assert option in proc.stdout


def test_help_of_every_listed_command():
    listing = admin("--help")
    assert listing.returncode == 0, listing.stderr
    commands = re.findall(r"^    (\S+)", listing.stdout, flags=re.MULTILINE)
    assert {"info", "jobs", "show", "worker", "demo"} <= set(commands)
    for command in commands:
        proc = admin(command, "--help")
        assert proc.returncode == 0, f"{command} --help: {proc.stderr}"
        assert proc.stdout.startswith(f"usage: fs-task-queue {command}")


def test_version():
    proc = admin("--version")
    assert proc.returncode == 0
    assert fs_task_queue.__version__ in proc.stdout


# ------------------------------------------------------------------ info/jobs/show
@pytest.fixture
def populated(queue):
    """A queue with one finished, one failed, one canceled and one queued job."""
    jobs = {
        "finished": queue.enqueue_call(operator.add, (1, 2), metadata={"owner": "cli-test"}),
        "failed": queue.enqueue(divide, 1, 0),
    }
    run_burst(queue.path, "--name", "cli-burst")
    jobs["canceled"] = queue.enqueue(operator.add, 3, 3)
    jobs["canceled"].cancel()
    jobs["queued"] = queue.enqueue_call(operator.add, (5, 5), job_id="still-queued")
    return jobs


def test_info(queue, populated, worker, workers, tmp_path):
    go = tmp_path / "go"
    running = queue.enqueue(wait_for_file, str(go))
    wait_for(lambda: queue.workers()[0].running == (running.id,), what="the worker to run the job")
    proc = admin("info", str(queue.path))
    go.touch()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert str(queue.path) in out
    # The worker ran "still-queued" (submitted before the running job) and now runs `running`.
    for count in ("queued: 0", "started: 1", "finished: 2", "failed: 1", "canceled: 1", "workers: 1"):
        assert count in out
    assert worker in out
    assert f"pid={workers.procs[0].pid}" in out
    assert running.id in out, "what the worker runs"
    assert populated["failed"].id in out
    assert "ZeroDivisionError" in out


def test_jobs(queue, populated):
    proc = admin("jobs", str(queue.path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    for status, job in populated.items():
        (line,) = [ln for ln in lines if ln.startswith(job.id)]
        assert line.split()[1] == status

    proc = admin("jobs", str(queue.path), "--status", "failed")
    assert proc.returncode == 0, proc.stderr
    assert [ln.split()[0] for ln in proc.stdout.splitlines()] == [populated["failed"].id]

    proc = admin("jobs", str(queue.path), "--limit", "1")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1


def test_show_finished_job(queue, populated):
    job = populated["finished"]
    proc = admin("show", str(queue.path), job.id)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert job.id in out
    assert "finished" in out
    assert "result    3" in out
    assert "cli-burst" in out
    assert "cli-test" in out, "metadata"
    assert "add" in out, "function name"


def test_show_failed_job_prints_the_remote_traceback(queue, populated):
    proc = admin("show", str(queue.path), populated["failed"].id)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "failed" in out
    assert "ZeroDivisionError" in out
    assert "Traceback (most recent call last):" in out
    assert "in divide" in out


def test_show_queued_and_canceled_jobs(queue, populated):
    proc = admin("show", str(queue.path), "still-queued")
    assert proc.returncode == 0, proc.stderr
    assert "queued" in proc.stdout
    proc = admin("show", str(queue.path), populated["canceled"].id)
    assert proc.returncode == 0, proc.stderr
    assert "canceled" in proc.stdout


def test_show_running_job_with_output_and_progress(queue, worker, tmp_path):
    go = tmp_path / "go"
    job = queue.enqueue(talks, str(go))
    wait_for(lambda: job.progress and "line two" in job.stdout, what="output and progress")
    proc = admin("show", str(queue.path), job.id, "--tail", "1")
    go.touch()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "started" in out
    assert worker in out
    assert "1/4" in out and "a quarter" in out
    assert "--- stdout" in out
    assert "line two" in out
    assert "line one" not in out, "--tail 1 shows only the last line"
    assert job.wait(timeout=WAIT) == 1


# ------------------------------------------------------------------------- errors
def test_show_unknown_job_is_an_error(queue):
    proc = admin("show", str(queue.path), "no-such-job")
    assert proc.returncode == 1
    assert proc.stderr.startswith("fs-task-queue: error:")
    assert "no-such-job" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("command", ["info", "jobs"])
def test_commands_on_a_missing_queue_are_errors(tmp_path, command):
    path = tmp_path / "missing"
    proc = admin(command, str(path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("fs-task-queue: error:")
    assert str(path) in proc.stderr
    assert not path.exists(), "inspecting must not create a queue"


def test_worker_on_a_non_queue_directory_is_an_error(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3")
    proc = run(*WORKER_SCRIPT, "--path", str(tmp_path), "--burst")
    assert proc.returncode == 1
    assert proc.stderr.startswith("fs-task-queue-worker: error:")
    assert "data.csv" in proc.stderr
    proc = run(*WORKER_MODULE, "--path", str(tmp_path), "--burst")
    assert proc.returncode == 1
    assert "fs-task-queue: error:" in proc.stderr


def test_worker_name_already_registered_is_an_error(queue, worker):
    proc = run(*WORKER_SCRIPT, "--path", str(queue.path), "--name", worker, "--burst")
    assert proc.returncode == 1
    assert "already registered" in proc.stderr
    assert [w.id for w in queue.workers()] == [worker], "the running worker is left alone"


def test_worker_invalid_name_is_an_error(queue):
    proc = run(*WORKER_SCRIPT, "--path", str(queue.path), "--name", "a/b", "--burst")
    assert proc.returncode == 1
    assert "invalid worker id 'a/b'" in proc.stderr


def test_demo(tmp_path):
    proc = subprocess.run(
        [*ADMIN_SCRIPT, "demo", "--tasks", "8", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo OK" in proc.stdout


def test_a_reader_that_stops_early_gets_no_error(queue):
    # `fs-task-queue jobs Q | head`: the listing outgrows the pipe, the reader leaves.
    queue.map(operator.pos, range(3000))
    argv = [*ADMIN_SCRIPT, "jobs", str(queue.path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().split()[1] == b"queued"
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(WAIT) == 141 and err == b"", err  # 128 + SIGPIPE, like other tools, and no message
