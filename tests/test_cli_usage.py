"""Found trying the CLI as a new user would: failures in the worker's log, numbers, usage, paths, 0.1.9 queues."""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import ADMIN_SCRIPT, WAIT, WORKER_SCRIPT, divide, run_burst

from fs_task_queue import JobStatus, Queue
from fs_task_queue.errors import InsecureQueueError, QueueError


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


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ADMIN_SCRIPT, *args], capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL, env=env
    )


# -------------------------------------------------------------- worker PATH
@pytest.mark.parametrize("script", [[*ADMIN_SCRIPT, "worker"], WORKER_SCRIPT], ids=["worker", "fs-task-queue-worker"])
def test_the_worker_takes_the_path_as_an_argument(queue: Queue, script: list[str]) -> None:
    job = queue.enqueue(divide, 6, 3)
    proc = run(*script, str(queue.path), "--burst")
    assert proc.returncode == 0, proc.stderr
    assert job.result == 2
    proc = run(*script, "--path", str(queue.path), str(queue.path), "--burst")  # the same twice: no harm
    assert proc.returncode == 0, proc.stderr
    proc = run(*script, "--path", str(queue.path), str(queue.path) + "-other", "--burst")
    assert proc.returncode == 2 and "given twice, differently" in proc.stderr, proc.stderr
    assert not os.path.exists(str(queue.path) + "-other")
    proc = run(*script, "--burst")
    assert proc.returncode == 2 and "give the queue directory: PATH or --path PATH" in proc.stderr, proc.stderr


# ------------------------------------------------ command-line fixes, not Python calls
def test_errors_give_the_command_line_fix(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    proc = cli("info", str(missing))
    assert proc.returncode == 1 and f"create it with `fs-task-queue create {missing}`" in proc.stderr, proc.stderr
    assert "Queue(" not in proc.stderr
    with pytest.raises(QueueError, match=re.escape(f"create it with Queue({str(missing)!r})")):
        Queue(missing, create=False)  # the Python API keeps its own wording
    # Where a queue could not be made, that is said instead of "create it".
    for path, words in (("/", "/ is not a queue and is not empty"), (__file__, "is a file, not a directory")):
        proc = cli("info", path)
        assert proc.returncode == 1 and words in proc.stderr, proc.stderr
        assert "create" not in proc.stderr and "Queue(" not in proc.stderr, proc.stderr
    # A private queue whose root became group-writable: the shared queue to make instead, as a command.
    private = tmp_path / "private"
    proc = cli("create", str(private))
    assert proc.returncode == 0 and "private" in proc.stdout, proc.stderr
    proc = cli("show", str(private), "no-such-job")
    assert proc.returncode == 1 and f"(`fs-task-queue jobs {private}` lists the jobs" in proc.stderr, proc.stderr
    assert "queue.jobs()" not in proc.stderr
    os.chmod(private, 0o770)
    proc = cli("info", str(private))
    assert proc.returncode == 1 and "`fs-task-queue create --shared PATH`" in proc.stderr, proc.stderr
    assert "Queue(" not in proc.stderr


def test_create_makes_a_private_or_shared_queue(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    proc = cli("create", str(shared), "--shared")
    assert proc.returncode == 0 and "shared with its group" in proc.stdout, proc.stderr
    assert Queue(shared, create=False).shared and stat.S_IMODE(os.stat(shared).st_mode) == 0o2770
    proc = cli("create", str(shared), "--shared")  # already there, as asked: fine
    assert proc.returncode == 0, proc.stderr
    proc = cli("create", str(shared))
    assert proc.returncode == 1 and "already a shared queue" in proc.stderr, proc.stderr


def test_for_cli_survives_pickling() -> None:
    from fs_task_queue.errors import cli_fix  # here: the other tests also run (and fail) on code without it

    exc = cli_fix(QueueError("no queue: create it with Queue('/q')"), "Queue('/q')", "`fs-task-queue create /q`")
    back = pickle.loads(pickle.dumps(exc))
    assert str(back) == str(exc) and back.for_cli() == "no queue: create it with `fs-task-queue create /q`"


# ------------------------------------------------------- world-writable directories
@pytest.mark.parametrize("mode", [0o777, 0o1777], ids=["0777", "1777"])
def test_no_queue_is_made_in_a_world_writable_directory(tmp_path: Path, mode: int) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    os.chmod(scratch, mode)  # as `mkdir -m 777` or /tmp itself
    for script in ([*ADMIN_SCRIPT, "worker"], WORKER_SCRIPT, [*ADMIN_SCRIPT, "create"]):
        proc = run(*script, str(scratch), *(["--burst"] if script[-1] != "create" else []))
        assert proc.returncode == 1, proc.stderr
        assert f"{scratch} is world-writable (mode {mode:04o})" in proc.stderr, proc.stderr
        assert f"`mkdir -m 700 {scratch}/$USER-q`" in proc.stderr and "nothing was written" in proc.stderr
        assert os.listdir(scratch) == [], script  # refused before anything was made
    with pytest.raises(InsecureQueueError, match="mkdir -m 700"):
        Queue(scratch)
    assert os.listdir(scratch) == []
    (scratch / "someone-elses-file").touch()  # /tmp is seldom empty: the same error, not "not empty"
    proc = run(*ADMIN_SCRIPT, "worker", str(scratch), "--burst")
    assert proc.returncode == 1 and f"`mkdir -m 700 {scratch}/$USER-q`" in proc.stderr, proc.stderr
    assert os.listdir(scratch) == ["someone-elses-file"]


def test_a_queue_made_world_writable_later_is_refused_by_everyone(queue: Queue) -> None:
    job = queue.enqueue(divide, 1, 1)
    os.chmod(queue.path, 0o1777)
    words = f"{queue.path} is world-writable (mode 1777)"
    with pytest.raises(InsecureQueueError, match=re.escape(words)):
        Queue(queue.path)  # a client: no submitting to it
    for args in (["info", str(queue.path)], ["worker", str(queue.path), "--burst"], ["jobs", str(queue.path)]):
        proc = cli(*args)
        assert proc.returncode == 1 and words in proc.stderr and f"chmod o-w {queue.path}" in proc.stderr, args
    os.chmod(queue.path, 0o700)
    assert job.get_status() is JobStatus.QUEUED  # the worker ran nothing


# ------------------------------------------------------------- fs-task-queue 0.1.9
def make_019_queue(root: Path, tasks: list[tuple[str, str, list[Any], dict[str, Any]]]) -> list[str]:
    """A queue directory as fs-task-queue 0.1.9 leaves it after ``Queue(root).enqueue(...)`` calls.

    Written from 0.1.9's fs_task_queue/core.py (not installable in CI without
    PyPI): Queue.ensure_directories() makes seven folders (mkdir, default mode);
    enqueue() writes tasks/<uuid4> as json.dumps({"module", "name", "args",
    "kwargs"}).encode("utf-8") and set_status(QUEUED) adds the symlink
    queued/<uuid4> -> <root>/tasks/<uuid4>. Checked once against the real
    0.1.9 package in a venv (byte-identical task files, same links).
    """
    root.mkdir()
    for name in ("tasks", "results", "workers", "queued", "finished", "failed", "started"):
        (root / name).mkdir(exist_ok=True)
    ids = []
    for module, name, args, kwargs in tasks:
        job_id = str(uuid.uuid4())
        message = {"module": module, "name": name, "args": args, "kwargs": kwargs}
        (root / "tasks" / job_id).write_bytes(json.dumps(message).encode("utf-8"))
        (root / "queued" / job_id).symlink_to(root / "tasks" / job_id)
        ids.append(job_id)
    return ids


def test_a_019_queue_is_named_as_such(tmp_path: Path) -> None:
    old = tmp_path / "old"
    make_019_queue(old, [("_operator", "add", [1, 2], {}), ("_operator", "add", [3, 4], {})])
    for args in (["info", str(old)], ["worker", str(old), "--burst"], ["create", str(old)]):
        proc = cli(*args)
        assert proc.returncode == 1, proc.stderr
        assert f"{old} is a fs-task-queue 0.1.9 queue (2 task(s) waiting)" in proc.stderr, proc.stderr
        assert "pip install fs-task-queue==0.1.9" in proc.stderr
        assert f"fs-task-queue import-0.1.9 {old} NEWPATH" in proc.stderr
    with pytest.raises(QueueError, match=r"0\.1\.9 queue"):
        Queue(old)
    assert sorted(os.listdir(old)) == sorted(["tasks", "results", "workers", "queued", "finished", "failed", "started"])


def test_import_019_moves_waiting_tasks_without_running_them(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    marker = tmp_path / "imported-marker"
    # Writes a file when imported: the import command must never import it.
    (code / "legacy_tasks.py").write_text(
        f"open({str(marker)!r}, 'a').write('imported\\n')\n\ndef double(x, plus=0):\n    return 2 * x + plus\n"
    )
    env = {**os.environ, "PYTHONPATH": str(code)}
    old, new = tmp_path / "old", tmp_path / "new"
    ids = make_019_queue(
        old,
        [
            ("legacy_tasks", "double", [20], {"plus": 2}),
            ("json", "dumps", [[1, 2]], {"separators": [",", ":"]}),
            ("__main__", "work", [], {}),  # a script's function: no worker can import it
        ],
    )
    (old / "workers" / "w1").touch()  # a registered 0.1.9 worker
    proc = cli("import-0.1.9", str(old), str(new), env=env)
    assert proc.returncode == 1 and "0.1.9 workers registered (w1)" in proc.stderr, proc.stderr
    assert not new.exists() and len(os.listdir(old / "queued")) == 3
    (old / "workers" / "w1").unlink()

    proc = cli("import-0.1.9", str(old), str(new), env=env)
    assert proc.returncode == 1, proc.stderr  # one task could not be imported, and is named
    assert f"not imported: {ids[2]}: its function work was defined in a script" in proc.stderr, proc.stderr
    assert f"imported 2 task(s) into {new}" in proc.stdout, proc.stdout
    assert not marker.exists()  # nothing of the tasks was imported or run
    assert os.listdir(old / "queued") == [ids[2]]  # the rest left the 0.1.9 queue once written
    assert sorted(os.listdir(old / "tasks")) == sorted(ids)  # their files stay
    again = cli("import-0.1.9", str(old), str(new), env=env)
    assert "imported 0 task(s)" in again.stdout, again.stdout  # nothing twice

    queue = Queue(new, create=False)
    assert [job.info().function for job in queue.jobs()] == ["legacy_tasks.double", "json.dumps"]
    proc = subprocess.run([*WORKER_SCRIPT, str(new), "--burst"], capture_output=True, text=True, timeout=WAIT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert queue.job(ids[0]).result == 42 and queue.job(ids[1]).result == "[1,2]"
    assert marker.read_text() == "imported\n"  # by the worker, when the task ran
