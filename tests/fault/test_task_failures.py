"""Tasks that fail in every way a task can, on one long-running worker that must survive them all."""

from __future__ import annotations

import os
import threading

import pytest

from fs_task_queue import JobCanceledError, JobError, JobStatus, JobTimeoutError, SerializationError

from .faultlib import all_claimed, ends, executions, mark, registered, wait_for

FAST = ["--recover-interval", "0.5", "--max-poll-interval", "0.2"]


#: How the worker starts its task process: forked (the default for a single-threaded
#: worker) or as ``python -m fs_task_queue._child`` (for workers embedded in threaded programs).
START_METHODS = pytest.mark.parametrize("start", ["fork", "spawn"])


def start_worker(lab, *args: str, start: str = "fork"):  # type: ignore[no-untyped-def]
    proc = lab.worker("w", *FAST, *args, env={"FSQ_TASK_PROCESS": start})
    wait_for(lambda: registered(lab.path, "w") or proc.poll() is not None, what="the worker to register")
    assert proc.poll() is None, lab.procs.log(proc)
    return proc


def task_process_command(worker_pid: int) -> str:
    """The command line of the worker's task process (its only child)."""
    with open(f"/proc/{worker_pid}/task/{worker_pid}/children") as f:
        (child,) = f.read().split()
    with open(f"/proc/{child}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def same_worker_alive(lab, proc) -> None:  # type: ignore[no-untyped-def]
    """The very worker process we started is still serving (same pid, still registered)."""
    assert proc.poll() is None, lab.procs.log(proc)
    assert registered(lab.path, "w")["pid"] == proc.pid


def returns_lock() -> object:
    return threading.Lock()


def returns_generator() -> object:
    return (i for i in range(3))


@pytest.mark.timeout(60)
def test_unpicklable_results_fail_with_serialization_error(lab):
    proc = start_worker(lab)
    lock_job = lab.queue.enqueue(returns_lock)
    gen_job = lab.queue.enqueue(returns_generator)
    nxt = lab.queue.enqueue(mark, str(lab.fx), "next")
    assert nxt.wait(60).startswith("next.")
    for job, type_name in ((lock_job, "lock"), (gen_job, "generator")):
        assert job.get_status() is JobStatus.FAILED
        with pytest.raises(SerializationError, match=type_name) as err:
            job.wait(0)
        assert "cannot pickle the result" in str(err.value)
    same_worker_alive(lab, proc)
    lab.tally("unpicklable result", {"next": nxt}, note="FAILED SerializationError; next ran")


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def exit_3() -> None:
    os._exit(3)


def system_exit() -> None:
    raise SystemExit(7)


def allocate_1g() -> int:
    return len(bytearray(1 << 30))


@pytest.mark.timeout(90)
@START_METHODS
def test_crashing_tasks_fail_and_the_same_worker_goes_on(lab, start):
    proc = start_worker(lab, "--memory-limit", "300M", start=start)
    cases = {
        "segfault": (segfault, "signal SIGSEGV"),
        "os._exit(3)": (exit_3, "exit code 3"),
        "SystemExit": (system_exit, "SystemExit"),
        "memory limit": (allocate_1g, "MemoryError"),
    }
    jobs = {name: lab.queue.enqueue(func) for name, (func, _) in cases.items()}
    nxt = lab.queue.enqueue(mark, str(lab.fx), "next")
    assert nxt.wait(60).startswith("next.")
    for name, (_, cause) in cases.items():
        job = jobs[name]
        assert job.get_status() is JobStatus.FAILED, name
        info = job.info()
        assert cause in (info.error or ""), (name, info.error)
        assert info.worker == "w"
        with pytest.raises(JobError):
            job.wait(0)
        print(f"{name}: {info.error.splitlines()[0][:150]}")
    same_worker_alive(lab, proc)
    assert nxt.info().worker == "w"
    note = f"each FAILED with its cause; same worker ({start}ed task process)"
    lab.tally("segfault/_exit/SystemExit/OOM tasks", {"next": nxt}, note=note)


@pytest.mark.timeout(60)
@START_METHODS
def test_task_timeout_and_cancel_of_a_running_task(lab, start):
    proc = start_worker(lab, start=start)
    slow = lab.queue.enqueue_call(mark, (str(lab.fx), "slow"), {"sleep": 60, "end": True}, timeout=1)
    with pytest.raises(JobTimeoutError):
        slow.wait(60)
    assert slow.get_status() is JobStatus.FAILED

    running = lab.queue.enqueue(mark, str(lab.fx), "cancel-me", sleep=60, end=True)
    wait_for(lambda: executions(lab.fx)["cancel-me"] == 1, what="the task to start")
    assert running.get_status() is JobStatus.STARTED
    # Forked: a copy of the worker's own command line; spawned: the _child module.
    assert ("fs_task_queue._child" in task_process_command(proc.pid)) == (start == "spawn")
    assert running.cancel() is True
    assert running.get_status() is JobStatus.CANCELED
    with pytest.raises(JobCanceledError):
        running.wait(0)
    nxt = lab.queue.enqueue(mark, str(lab.fx), "next")
    assert nxt.wait(60).startswith("next.")  # the worker killed the canceled task and moved on
    wait_for(lambda: not all_claimed(lab.path), what="the canceled claim to be released")
    assert ends(lab.fx)["cancel-me"] == 0 and ends(lab.fx)["slow"] == 0
    same_worker_alive(lab, proc)
    assert "killed this run" in lab.procs.log(proc)
    note = f"timeout FAILED, cancel CANCELED, killed ({start}ed task process)"
    lab.tally("timeout=1 and cancel() of running", {"next": nxt}, note=note)


def flaky(fx: str) -> str:
    """Fails on its first two runs (counted by files), then succeeds."""
    runs = sum(1 for n in os.listdir(fx) if n.startswith("flaky."))
    token = mark(fx, "flaky")
    if runs < 2:
        raise ValueError(f"run {runs + 1} fails")
    return token


@pytest.mark.timeout(60)
def test_retries_then_success(lab):
    start_worker(lab)
    job = lab.queue.enqueue_call(flaky, (str(lab.fx),), retries=2, retry_delay=0.2)
    token = job.wait(60)
    assert token.startswith("flaky.") and job.get_status() is JobStatus.FINISHED
    info = job.info()
    assert info.attempt == 3
    assert len(info.history) == 2
    for n, record in enumerate(info.history, start=1):
        assert record["attempt"] == n and record["worker"] == "w" and record["host"] and record["outcome"] == "failed"
        assert f"ValueError: run {n} fails" in record["error"]
    assert executions(lab.fx)["flaky"] == 3
    t = lab.tally("retries=2, fails twice", {"flaky": job}, note="attempt 3, 2 history records")
    assert t.executed_twice == ["flaky"] and not t.lost and not t.committed_twice
