"""Tasks that start processes of their own and leave them running: the worker must never stall on them.

Each task records the pids of the processes it starts in ``pids/``; every test
then checks, by pid, that none is alive after the worker exited, that the
worker said so in its log, and that the tasks after it ran. Without
containment a child holding the task process's pipe kept the worker waiting
for the pipe's end forever, and every such child outlived the worker.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fs_task_queue import JobError, JobStatus, JobTimeoutError

from .faultlib import mark, registered, run_cli, wait_for

FAST = ["--recover-interval", "0.5", "--max-poll-interval", "0.2"]


# ------------------------------------------------------------------ task functions
def _record(piddir: str, pid: int) -> None:
    Path(piddir, str(pid)).touch()


def _inherit_everything() -> None:
    """Make every descriptor of this process (the task process's pipes among them) survive exec."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            os.set_inheritable(int(fd), True)
        except OSError:
            pass


def _daemon(piddir: str) -> int:
    """A double-forked daemon in a session of its own, holding every descriptor it inherited."""
    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                os.write(w, str(os.getpid()).encode())
                time.sleep(600)
        finally:
            os._exit(0)
    os.waitpid(first, 0)
    os.close(w)
    pid = int(os.read(r, 32))
    os.close(r)
    _record(piddir, pid)
    return pid


def _mp_child(piddir: str) -> int:
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,))  # not a daemon
    child.start()
    assert child.pid is not None
    _record(piddir, child.pid)
    return child.pid


def _sleep_child(piddir: str) -> int:
    import subprocess

    _inherit_everything()
    child = subprocess.Popen(["sleep", "600"], close_fds=False)
    _record(piddir, child.pid)
    return child.pid


def returns_leaving_mp_child(piddir: str) -> int:
    return _mp_child(piddir)


def raises_leaving_sleep(piddir: str) -> None:
    pid = _sleep_child(piddir)
    raise RuntimeError(f"failed, leaving sleep {pid}")


def crashes_leaving_daemon(piddir: str, how: str) -> None:
    _daemon(piddir)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    os._exit(3)


def leaves_all_kinds(piddir: str) -> str:
    _mp_child(piddir)
    _sleep_child(piddir)
    _daemon(piddir)
    return "done"


def hangs_with_children(piddir: str) -> None:
    leaves_all_kinds(piddir)
    time.sleep(600)


# ------------------------------------------------------------------- checks
def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return False


@pytest.fixture
def piddir(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "pids"
    path.mkdir()
    yield path
    for name in os.listdir(path):  # a failed test leaves nothing behind either
        try:
            os.kill(int(name), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def started(piddir: Path, at_least: int) -> list[int]:
    return [int(n) for n in wait_for(lambda: len(os.listdir(piddir)) >= at_least and os.listdir(piddir))]


def check_contained(lab, worker, piddir: Path, count: int) -> list[int]:  # type: ignore[no-untyped-def]
    """The worker exited by itself (0), no recorded process lives, and the log names each one it ended."""
    assert lab.procs.wait(worker) == 0, lab.procs.log(worker)
    pids = started(piddir, count)
    assert len(pids) == count
    # Our own orphans went to init when the worker exited: give it its moment to reap them.
    wait_for(lambda: not any(alive(p) for p in pids), timeout=10, what=f"processes {pids} to be gone")
    text = lab.procs.log(worker)
    assert "left running" in text, text
    for pid in pids:
        assert f" {pid} (" in text, (pid, text)
    return pids


def burst_worker(lab, *args: str, start: str = "fork"):  # type: ignore[no-untyped-def]
    return lab.worker("w", "--burst", *FAST, *args, env={"FSQ_TASK_PROCESS": start})


# -------------------------------------------------------------------- tests
@pytest.mark.timeout(120)
def test_task_returns_while_a_multiprocessing_child_sleeps(lab, piddir):
    job = lab.queue.enqueue(returns_leaving_mp_child, str(piddir))
    nxt = lab.queue.enqueue(mark, str(lab.fx), "next")
    worker = burst_worker(lab)
    assert nxt.wait(60).startswith("next.")
    assert job.get_status() is JobStatus.FINISHED
    (pid,) = check_contained(lab, worker, piddir, 1)
    assert job.result == pid
    lab.tally("task returns, multiprocessing child left", {"next": nxt}, note="child killed at task process end")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_task_raises_while_a_sleep_holding_its_pipes_runs(lab, piddir, start):
    job = lab.queue.enqueue(raises_leaving_sleep, str(piddir))
    nxt = lab.queue.enqueue(mark, str(lab.fx), "next")
    worker = burst_worker(lab, start=start)
    assert nxt.wait(60).startswith("next.")
    with pytest.raises(JobError, match="leaving sleep"):
        job.wait(0)
    check_contained(lab, worker, piddir, 1)
    lab.tally(f"task raises, sleep holds its pipes ({start})", {"next": nxt}, note="sleep killed, worker exit 0")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["segfault", "os._exit"])
def test_task_crashes_leaving_a_setsid_daemon(lab, piddir, how):
    job = lab.queue.enqueue(crashes_leaving_daemon, str(piddir), how)
    nxt = lab.queue.enqueue(mark, str(lab.fx), "next")
    worker = burst_worker(lab)
    assert nxt.wait(60).startswith("next.")
    assert job.get_status() is JobStatus.FAILED
    assert "died with" in (job.info().error or "")
    check_contained(lab, worker, piddir, 1)
    lab.tally(f"task {how}, setsid daemon left", {"next": nxt}, note="daemon (an orphan) killed by the worker")


@pytest.mark.timeout(120)
def test_task_times_out_with_children(lab, piddir):
    job = lab.queue.enqueue_call(hangs_with_children, (str(piddir),), timeout=2)
    nxt = lab.queue.enqueue(mark, str(lab.fx), "next")
    worker = burst_worker(lab)
    assert nxt.wait(60).startswith("next.")
    with pytest.raises(JobTimeoutError):
        job.wait(0)
    check_contained(lab, worker, piddir, 3)
    lab.tally("timeout, 3 kinds of children", {"next": nxt}, note="killed with the task process")


@pytest.mark.timeout(120)
def test_recycled_task_processes_end_what_their_tasks_left(lab, piddir):
    jobs = [lab.queue.enqueue(leaves_all_kinds, str(piddir)) for _ in range(2)]
    nxt = lab.queue.enqueue(mark, str(lab.fx), "next")
    worker = burst_worker(lab, "--max-tasks-per-child", "1")
    assert nxt.wait(60).startswith("next.")
    assert [j.wait(0) for j in jobs] == ["done", "done"]
    check_contained(lab, worker, piddir, 6)
    lab.tally("--max-tasks-per-child 1, children left", {"next": nxt}, note="each task process's killed")


@pytest.mark.timeout(120)
def test_shutdown_grace_kills_a_task_and_its_children(lab, piddir):
    job = lab.queue.enqueue(hangs_with_children, str(piddir))
    worker = lab.worker("w", "--grace", "1", *FAST)
    wait_for(lambda: registered(lab.path, "w"), what="the worker to register")
    started(piddir, 3)
    worker.send_signal(signal.SIGTERM)
    check_contained(lab, worker, piddir, 3)
    assert job.get_status() is JobStatus.QUEUED  # interrupted by shutdown: put back
    lab.tally("SIGTERM > grace, children left", {}, note="task and children killed, requeued")


@pytest.mark.timeout(120)
def test_isolation_none_worker_exits_and_ends_what_tasks_left(lab, piddir):
    job = lab.queue.enqueue(leaves_all_kinds, str(piddir))
    nxt = lab.queue.enqueue(mark, str(lab.fx), "next")
    worker = lab.worker("w", "--burst", "--isolation", "none", *FAST)
    assert nxt.wait(60).startswith("next.")
    assert job.wait(0) == "done"
    check_contained(lab, worker, piddir, 3)
    lab.tally("--isolation none, children left", {"next": nxt}, note="killed at worker exit")


def hangs_leaving_daemon(piddir: str) -> None:
    _daemon(piddir)
    time.sleep(600)


@pytest.mark.timeout(120)
def test_a_daemon_left_by_a_task_does_not_keep_a_killed_worker_alive(lab, piddir):
    # The daemon inherits the worker's liveness lock descriptor through the fork
    # of the task process; an flock lives while any copy is open, so same-host
    # recovery took the SIGKILLed worker for alive as long as the daemon ran.
    job = lab.queue.enqueue(hangs_leaving_daemon, str(piddir))
    worker = lab.worker("w", *FAST)
    (daemon,) = started(piddir, 1)
    wait_for(lambda: job.get_status() is JobStatus.STARTED, what="the job to start")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert alive(daemon), "the daemon should outlive a SIGKILLed worker (nothing is left to end it)"
    out = run_cli("recover", str(lab.path), "--dead-after", "1h")  # same host: judged by the lock alone
    assert out.returncode == 0 and job.id in out.stdout, (out.stdout, out.stderr)
    assert job.get_status() is JobStatus.QUEUED
    lab.tally("SIGKILLed worker, its task's daemon lives on", {}, note="lock not inherited: recovered at once")
