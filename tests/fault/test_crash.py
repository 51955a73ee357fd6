"""Workers that die: kill -9 mid-task, a crash at every step of claim -> run -> commit,
a worker frozen past the dead threshold that wakes up, and a task that kills every worker.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from fs_task_queue import JobStatus, WorkerLostError
from fs_task_queue.supervise import RUN_AHEAD_BUDGET, RUN_AHEAD_MAX

from .faultlib import (
    NOTES,
    all_claimed,
    claimed,
    ends,
    executions,
    group_members,
    mark,
    queued_names,
    registered,
    run_cli,
    wait_for,
)

FAST = ["--recover-interval", "0.5", "--heartbeat-interval", "0.5", "--max-poll-interval", "0.2"]


@pytest.mark.timeout(120)
def test_kill9_mid_task_finishes_on_another_worker(lab):
    victim = lab.registered_worker("victim", *FAST)
    job = lab.running("k", first_sleep=120)
    assert job.get_status() is JobStatus.STARTED and job.info().worker == "victim"

    lab.registered_worker("rescuer", *FAST)
    t0 = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    wait_for(lambda: "victim" not in claimed(lab.path), what="the rescuer to recover the task")
    detect = time.monotonic() - t0
    token = job.wait(60)
    done = time.monotonic() - t0
    # The task's child process died with its worker (PR_SET_PDEATHSIG): nothing keeps running it.
    wait_for(lambda: not group_members(victim.pid), what="the victim's task process to die")

    info = job.info()
    assert token.startswith("k.") and info.worker == "rescuer"
    assert info.attempt == 2
    assert [h["outcome"] for h in info.history] == ["worker lost"] and info.history[0]["worker"] == "victim"
    assert ends(lab.fx)["k"] == 1, "exactly one execution ran to the end (the killed one never did)"
    assert executions(lab.fx)["k"] == 2  # at least once: the killed run had started
    assert lab.commits.snapshot()[job.id] == 1
    msg = f"same host, kill -9: dead worker detected after {detect:.2f} s, task done after {done:.2f} s"
    print(msg)
    NOTES.append(msg + " (--recover-interval 0.5, flock probe)")
    t = lab.tally("kill -9 mid-task (same host)", {"k": job}, note=f"detect {detect:.2f} s; killed run re-executed")
    assert not t.lost and not t.committed_twice and not t.not_finished and not t.foreign_results


CRASH_POINTS = ["after-claim", "after-read", "before-commit", "after-commit", "after-release"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_at_each_step_loses_nothing(lab, point):
    # Each task runs longer than the run-ahead budget, so at most one outcome is ever in flight.
    jobs = {f"c{i}": lab.queue.enqueue(mark, str(lab.fx), f"c{i}", sleep=1.5 * RUN_AHEAD_BUDGET) for i in range(4)}
    first = jobs["c0"]
    crasher = lab.worker("crasher", *FAST, env={"FSQ_CRASH_AT": point})
    assert lab.procs.wait(crasher) == -signal.SIGKILL, lab.procs.log(crasher)
    # The crashed worker left its registration (and maybe a claim) behind.
    assert registered(lab.path, "crasher") is not None
    ran_before = executions(lab.fx)["c0"]
    assert ran_before == (1 if point in ("before-commit", "after-commit", "after-release") else 0)

    drainer = lab.worker("drainer", "--burst", *FAST)
    assert lab.procs.wait(drainer) == 0, lab.procs.log(drainer)

    # A worker death re-runs what it held without an outcome (at least once after a
    # death: counted, allowed): c0 if it died before publishing c0's, and the task
    # its task process ran meanwhile; these tasks are too long for more to be in flight.
    t = lab.tally(f"crash {point}", jobs, note="c0 re-run expected" if point == "before-commit" else "")
    assert not t.lost and not t.committed_twice and not t.not_finished and not t.foreign_results
    assert len(t.executed_twice) <= 2
    assert ("c0" in t.executed_twice) == (point == "before-commit")
    info = first.info()
    assert info.attempt == (2 if point in ("after-claim", "after-read", "before-commit") else 1)
    assert not queued_names(lab.path) and not all_claimed(lab.path)
    assert registered(lab.path, "crasher") is None and "crasher" not in claimed(lab.path)


@pytest.mark.timeout(60)
def test_crash_with_short_tasks_re_runs_at_most_the_run_ahead(lab):
    """No-op tasks run ahead of their publication; a death re-runs only the bounded few in flight."""
    keys = [f"s{i}" for i in range(300)]
    jobs = dict(zip(keys, lab.queue.map(mark, [str(lab.fx)] * len(keys), keys), strict=True))
    # The worker process dies at its 100th publication, whatever the task process is doing.
    crasher = lab.worker("crasher", *FAST, env={"FSQ_CRASH_AT": "before-commit", "FSQ_CRASH_AFTER": "100"})
    assert lab.procs.wait(crasher) == -signal.SIGKILL, lab.procs.log(crasher)
    drainer = lab.worker("drainer", "--burst", *FAST)
    assert lab.procs.wait(drainer) == 0, lab.procs.log(drainer)
    t = lab.tally("crash before-commit, 300 no-op tasks", jobs, note="re-runs bounded by the run-ahead")
    assert not t.lost and not t.committed_twice and not t.not_finished and not t.foreign_results
    # In flight: at most RUN_AHEAD_MAX + 1 outcomes, plus the task that was running.
    assert len(t.executed_twice) <= RUN_AHEAD_MAX + 2, sorted(t.executed_twice)
    assert not queued_names(lab.path) and not all_claimed(lab.path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("frozen", ["host", "worker"])
def test_sigstop_past_dead_threshold_then_sigcont_commits_once(lab, frozen):
    """A worker on "host-a" freezes mid-task; the worker on "host-b" presumes it dead and runs the task.

    ``host``: the whole process group (worker and task) is stopped, so after SIGCONT
    the resumed worker finds the job done and kills its task. ``worker``: only the
    worker process is stopped; its task process finishes the first run after the
    task was re-run elsewhere, and that late commit must be dropped.
    """
    beat = [
        "--heartbeat-interval",
        "0.5",
        "--dead-after",
        "3",
        "--recover-interval",
        "0.5",
        "--max-poll-interval",
        "0.2",
    ]
    sleeper = lab.registered_worker("sleeper", *beat, env={"FSQ_HOST_ID": "host-a"})
    job = lab.running("s", first_sleep=60 if frozen == "host" else 10)

    lab.registered_worker("watcher", *beat, env={"FSQ_HOST_ID": "host-b"})
    time.sleep(4)  # longer than --dead-after: a live worker on another host keeps its task
    assert job.info().worker == "sleeper" and executions(lab.fx)["s"] == 1

    stop = os.killpg if frozen == "host" else os.kill
    stop(sleeper.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        wait_for(lambda: "sleeper" not in claimed(lab.path), what="host-b to presume host-a dead")
        detect = time.monotonic() - t0
        token = job.wait(60)
        assert executions(lab.fx)["s"] == 2
        if frozen == "worker":  # the task itself was not frozen: it ran to its end
            wait_for(lambda: ends(lab.fx)["s"] == 2, what="the first run to end while its worker is stopped")
    finally:
        stop(sleeper.pid, signal.SIGCONT)
    # The resumed worker notices its heartbeat file was removed by the recoverer and exits.
    assert lab.procs.wait(sleeper) == 0, lab.procs.log(sleeper)
    log = lab.procs.log(sleeper)
    if frozen == "worker":
        assert "already has an outcome" in log, log  # the late commit was refused
        assert ends(lab.fx)["s"] == 2
    else:
        assert "killed this run" in log, log  # the resumed task was stopped: its job had an outcome
        assert ends(lab.fx)["s"] == 1

    assert job.result == token and job.info().worker == "watcher"
    assert os.listdir(lab.path / "results") == [job.id]
    assert lab.commits.snapshot()[job.id] == 1
    msg = f"SIGSTOP of the {frozen} (other host id, heartbeat path, --dead-after 3): presumed dead after {detect:.2f} s"
    print(msg)
    NOTES.append(msg)
    late = "late commit dropped" if frozen == "worker" else "resumed task killed"
    t = lab.tally(f"SIGSTOP {frozen} past dead-after, SIGCONT", {"s": job}, note=f"detect {detect:.2f} s; {late}")
    assert not t.lost and not t.committed_twice and not t.not_finished and not t.foreign_results
    assert t.executed_twice == ["s"]  # presumed dead, so it ran again: at least once, one commit


def kill_my_worker(fx: str) -> None:
    """A poison task: record the run, then SIGKILL the worker process that runs it."""
    mark(fx, "poison")
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(60)  # the worker's death kills this process too (PR_SET_PDEATHSIG)


@pytest.mark.timeout(120)
def test_poison_task_fails_after_max_lost(lab):
    poison = lab.queue.enqueue(kill_my_worker, str(lab.fx))
    jobs = {"poison": poison, **{f"g{i}": lab.queue.enqueue(mark, str(lab.fx), f"g{i}") for i in range(3)}}
    deaths, codes = 0, []
    for n in range(8):  # a supervisor restarting the worker, like a batch system would
        proc = lab.worker(f"w{n}", "--burst", "--max-lost", "3", *FAST)
        code = lab.procs.wait(proc)
        codes.append(code)
        if code == 0:
            break
        assert code == -signal.SIGKILL, lab.procs.log(proc)
        deaths += 1
    assert codes[-1] == 0 and deaths == 3, codes

    assert poison.get_status() is JobStatus.FAILED
    with pytest.raises(WorkerLostError, match="died 3 times"):
        poison.wait(0)
    info = poison.info()
    assert [h["outcome"] for h in info.history] == ["worker lost"] * 3
    assert [h["worker"] for h in info.history] == ["w0", "w1", "w2"]
    assert executions(lab.fx)["poison"] == 3
    out = run_cli("info", str(lab.path))
    assert out.returncode == 0, out.stderr
    failures = out.stdout.partition("recent failures")[2]
    assert poison.id in failures and "WorkerLostError" in failures, out.stdout
    t = lab.tally("poison task (kills its worker)", jobs, note="3 deaths, then FAILED WorkerLostError")
    assert not t.lost and not t.committed_twice and t.not_finished == ["poison"] and t.executed_twice == ["poison"]


@pytest.mark.timeout(60)
def test_every_death_while_holding_a_task_counts_toward_max_lost(lab):
    # Documented choice (docs/fault-tolerance.md): a death counts whether or not the
    # function had started, so even a task that crashes its worker while being read
    # or handed over cannot loop; the task process is started before claiming, so
    # in practice that window is microseconds.
    job = lab.queue.enqueue(mark, str(lab.fx), "never-started")
    for n in range(3):  # three workers die right after claiming it: it never ran
        crasher = lab.worker(f"c{n}", "--max-lost", "3", *FAST, env={"FSQ_CRASH_AT": "after-claim"})
        assert lab.procs.wait(crasher) == -signal.SIGKILL, lab.procs.log(crasher)
        assert executions(lab.fx)["never-started"] == 0
    drain = lab.worker("drain", "--burst", "--max-lost", "3", *FAST)
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    t = lab.tally("3 deaths right after the claim", {"never-started": job}, note="FAILED WorkerLostError, never ran")
    assert job.get_status() is JobStatus.FAILED
    assert isinstance(job.exception(), WorkerLostError)
    assert [h["outcome"] for h in job.info().history] == ["worker lost"] * 3
    assert executions(lab.fx)["never-started"] == 0
    assert not t.lost and not t.executed_twice and not t.committed_twice


@pytest.mark.timeout(120)
def test_task_process_claims_nothing_while_its_worker_process_is_frozen(lab):
    """Only the worker process is stopped: its heartbeat stops, so its task process must stop claiming."""
    sleeper = lab.registered_worker(
        "frozen", "--heartbeat-interval", "0.5", "--dead-after", "600", "--max-poll-interval", "0.2"
    )
    first = lab.queue.enqueue(mark, str(lab.fx), "before")
    first.wait(30)
    os.kill(sleeper.pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)  # past the task process's limit: max(1 s, --heartbeat-interval / 3)
        later = [lab.queue.enqueue(mark, str(lab.fx), f"after{i}") for i in range(3)]
        time.sleep(2.0)
        assert [job.get_status() for job in later] == [JobStatus.QUEUED] * 3
        assert not any(k.startswith("after") for k in executions(lab.fx))
    finally:
        os.kill(sleeper.pid, signal.SIGCONT)
    for job in later:
        job.wait(30)
    jobs = {"before": first, **{f"after{i}": job for i, job in enumerate(later)}}
    t = lab.tally("worker process frozen (SIGSTOP)", jobs, "task process claimed nothing; all done after SIGCONT")
    assert not t.lost and not t.executed_twice and not t.committed_twice
    assert "has not responded" in lab.procs.log(sleeper)
