"""Admin commands racing live workers and each other: requeue, purge, cancel, recover, sweep, stop-worker."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap

import pytest

from fs_task_queue import JobStatus, NoSuchJobError

from .faultlib import (
    ADMIN,
    PYTHON,
    all_claimed,
    claimed,
    ends,
    executions,
    fails_first_time,
    mark,
    names,
    queued_names,
    registered,
    run_cli,
    wait_for,
)


def _fail_all(lab, count: int) -> dict[str, object]:
    """``count`` jobs that failed once (their task kept in failed/), keyed by side-effect key."""
    jobs = {
        f"j{i}": job
        for i, job in enumerate(lab.queue.map(fails_first_time, [str(lab.fx)] * count, [f"j{i}" for i in range(count)]))
    }
    drain = lab.worker("first", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    assert len(names(lab.path / "failed")) == count
    return jobs


def _has_task_or_result(path, job_id: str) -> bool:
    """The invariant: a job always has its task file somewhere or its result."""
    if os.path.exists(path / "results" / job_id):
        return True
    everywhere = queued_names(path) + names(path / "delayed") + names(path / "failed") + all_claimed(path)
    return any(n == job_id or n.endswith("." + job_id) for n in everywhere)


@pytest.mark.timeout(240)
def test_two_requeue_all_at_once_with_live_workers(lab):
    jobs = _fail_all(lab, 200)
    workers = [lab.worker(f"w{i}", "--recover-interval", "0.5") for i in range(2)]
    for i in range(2):
        wait_for(lambda i=i: registered(lab.path, f"w{i}"), what="the workers to register")
    # Two admins requeue everything at the same moment while the workers take the tasks.
    requeuers = [lab.procs.start([*ADMIN, "requeue", str(lab.path), "--all"], label=f"requeue{i}") for i in range(2)]
    outs = []
    for proc in requeuers:
        assert lab.procs.wait(proc) == 0, lab.procs.log(proc)
        outs.append(lab.procs.log(proc))
    counts = [int(out.split("requeued ")[1].split(" ")[0]) for out in outs]
    assert sum(counts) == 200, outs  # each job requeued by exactly one of them
    fresh = {key: lab.queue.job(job.id) for key, job in jobs.items()}
    wait_for(lambda: all(j.done() for j in fresh.values()), timeout=180, what="every requeued job to finish")
    for w in workers:
        assert w.poll() is None, lab.procs.log(w)
    t = lab.tally(
        "2x `requeue --all` at once, 2 live workers",
        fresh,
        note="each ran once more; 2 commits = the failure + the rerun",
    )
    assert not t.lost and not t.not_finished
    execs = executions(lab.fx)
    assert all(execs[key] == 2 for key in jobs), {k: v for k, v in execs.items() if v != 2}
    commits = lab.commits.snapshot()
    assert all(commits[job.id] == 2 for job in fresh.values())
    assert names(lab.path / "failed") == [] and len(names(lab.path / "done")) == 200


@pytest.mark.timeout(180)
@pytest.mark.parametrize("point", ["requeue-claimed", "requeue-rewritten", "requeue-result-removed"])
def test_requeue_killed_between_its_steps(lab, point):
    jobs = _fail_all(lab, 6)
    out = run_cli("requeue", str(lab.path), "--all", env={"FSQ_CRASH_AT": point, "FSQ_CRASH_AFTER": "3"})
    assert out.returncode == -signal.SIGKILL, (out.returncode, out.stdout, out.stderr)
    # At the moment of the crash every job still has its task file or its result.
    assert all(_has_task_or_result(lab.path, job.id) for job in jobs.values())
    assert len(all_claimed(lab.path)) == 1  # the one it held, in the dead requeuer's folder

    out = run_cli("recover", str(lab.path))
    assert out.returncode == 0 and out.stdout.startswith("recovered"), (out.stdout, out.stderr)
    assert all_claimed(lab.path) == [] and claimed(lab.path) == {}
    out = run_cli("requeue", str(lab.path), "--all")
    assert out.returncode == 0, out.stderr
    drain = lab.worker("again", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    fresh = {key: lab.queue.job(job.id) for key, job in jobs.items()}
    t = lab.tally(f"requeue SIGKILLed at {point}, recover, requeue", fresh, note="no job left without task or result")
    assert not t.lost and not t.not_finished
    assert all(executions(lab.fx)[key] == 2 for key in jobs), executions(lab.fx)


@pytest.mark.timeout(120)
def test_purge_racing_the_cancel_of_a_running_job(lab):
    # --isolation none: the task cannot be killed, so its worker commits when it ends,
    # after the cancel and the purge.
    worker = lab.worker("w", "--isolation", "none")
    job = lab.queue.enqueue(mark, str(lab.fx), "c", first_sleep=3, end=True)
    wait_for(lambda: executions(lab.fx)["c"] == 1, what="the task to start")
    assert run_cli("cancel", str(lab.path), job.id).stdout.strip() == f"{job.id}: canceled"
    out = run_cli("purge", str(lab.path), "--older-than", "0s")
    assert out.returncode == 0 and out.stdout.startswith("purged 0 job(s)"), (out.stdout, out.stderr)
    assert "still queued or running" in out.stdout and job.id in out.stdout, out.stdout
    wait_for(lambda: ends(lab.fx)["c"] == 1 and all_claimed(lab.path) == [], what="the task to end and be dropped")
    assert lab.queue.job(job.id).get_status() is JobStatus.CANCELED  # never came back as finished
    out = run_cli("purge", str(lab.path), "--older-than", "0s")
    assert out.stdout.startswith("purged 1 job(s)"), out.stdout
    assert worker.poll() is None
    t = lab.tally("purge racing cancel of a running job", {}, note="stays canceled; purged once the worker let go")
    assert not t.lost


REGISTERING = textwrap.dedent(
    """
    import sys
    from fs_task_queue import Queue
    from fs_task_queue import layout
    from fs_task_queue.liveness import AliveLock

    # A claimer caught between taking its lock and writing .identity and its heartbeat.
    queue = Queue(sys.argv[1], create=False)
    queue.storage.mkdir(layout.claimed_dir("newcomer"))
    lock = AliveLock(queue.storage, "newcomer")
    lock.acquire()
    print("locked", flush=True)
    sys.stdin.readline()
    """
)


@pytest.mark.timeout(60)
def test_recover_does_not_take_a_registering_claimer_for_dead(lab):
    proc = subprocess.Popen(
        [PYTHON, "-c", REGISTERING, str(lab.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        out = run_cli("recover", str(lab.path), "--dead-after", "0s")
        assert out.returncode == 0, out.stderr
        assert (lab.path / "claimed" / "newcomer" / ".alive").exists(), "recover emptied a live claimer's folder"
    finally:
        proc.communicate("", timeout=30)
    out = run_cli("recover", str(lab.path), "--dead-after", "0s")  # now it is gone: its folder goes
    assert not (lab.path / "claimed" / "newcomer").exists(), out.stdout


LIVE_WRITER = textwrap.dedent(
    """
    import os, sys
    # A writer whose temporary file is written and about to be renamed into place.
    tmp = os.path.join(sys.argv[1], "tmp", f"{os.getpid():x}-0badcafe-1.tmp")
    with open(tmp, "wb") as f:
        f.write(b"x" * 1000)
    print("written", flush=True)
    sys.stdin.readline()
    os.rename(tmp, os.path.join(sys.argv[1], "tmp", "renamed"))
    print("renamed", flush=True)
    """
)


@pytest.mark.timeout(60)
def test_sweep_spares_the_file_of_a_live_writer(lab):
    proc = subprocess.Popen(
        [PYTHON, "-c", LIVE_WRITER, str(lab.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    out = run_cli("sweep", str(lab.path), "--older-than", "0s")
    assert out.returncode == 0 and "removed 0" in out.stdout, out.stdout
    stdout, _ = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0 and "renamed" in stdout  # its rename still found its file


@pytest.mark.timeout(60)
def test_stop_worker_twice_while_it_finishes_its_task(lab):
    worker = lab.worker("w", "--grace", "60")
    lab.queue.enqueue(mark, str(lab.fx), "s", first_sleep=3)
    wait_for(lambda: executions(lab.fx)["s"] == 1, what="the task to start")
    out = run_cli("stop-worker", str(lab.path), "w")
    assert out.returncode == 0 and "heartbeat file deleted" in out.stdout, out.stderr
    out = run_cli("stop-worker", str(lab.path), "w")  # the worker is on its way out: not an error
    assert out.returncode == 0 and "w: already stopping" in out.stdout, (out.stdout, out.stderr)
    assert lab.procs.wait(worker) == 0, lab.procs.log(worker)
    out = run_cli("stop-worker", str(lab.path), "w")
    assert out.returncode == 1 and "no worker 'w'" in out.stderr


# ------------------------------------------------------------- files removed by hand
@pytest.mark.timeout(90)
def test_task_deleted_by_hand_while_queued(lab):
    job = lab.queue.enqueue(mark, str(lab.fx), "gone")
    os.unlink(lab.path / "queued" / job.id[:17] / job.id)
    with pytest.raises(NoSuchJobError, match="deleted by hand"):
        job.get_status()
    out = run_cli("show", str(lab.path), job.id)
    assert out.returncode == 1 and "deleted by hand" in out.stderr, out.stderr
    out = run_cli("requeue", str(lab.path), job.id)
    assert out.returncode == 0 and "nothing left to run, marked failed" in out.stdout, (out.stdout, out.stderr)
    assert job.get_status() is JobStatus.FAILED
    with pytest.raises(NoSuchJobError, match="deleted from the queue by hand"):
        job.wait(0)
    lab.tally("task file deleted by hand while queued", {}, note="status says so; `requeue ID` fails it")


@pytest.mark.timeout(90)
def test_task_deleted_by_hand_from_a_dead_workers_claim(lab):
    victim = lab.worker("victim", "--recover-interval", "3600")
    job = lab.queue.enqueue(mark, str(lab.fx), "v", first_sleep=300)
    wait_for(lambda: executions(lab.fx)["v"] == 1, what="the task to start")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    os.unlink(lab.path / "claimed" / "victim" / job.id)
    with pytest.raises(NoSuchJobError, match=r"no task file .* deleted by hand"):
        job.get_status()
    out = run_cli("recover", str(lab.path))
    assert out.returncode == 0, out.stderr
    out = run_cli("requeue", str(lab.path), job.id)
    assert "marked failed" in out.stdout, out.stdout
    assert job.get_status() is JobStatus.FAILED


@pytest.mark.timeout(90)
def test_result_deleted_by_hand(lab):
    jobs = {k: lab.queue.enqueue(mark, str(lab.fx), k) for k in ("a", "b")}
    drain = lab.worker("w", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    for job in jobs.values():
        os.unlink(lab.path / "results" / job.id)
    with pytest.raises(NoSuchJobError, match="kept in done/"):
        jobs["a"].get_status()
    out = run_cli("show", str(lab.path), jobs["a"].id)
    assert out.returncode == 1 and "results/" in out.stderr and "kept in done/" in out.stderr, out.stderr
    # `requeue ID` brings one back; `recover` fails the other.
    out = run_cli("requeue", str(lab.path), jobs["a"].id)
    assert out.returncode == 0 and out.stdout.startswith("requeued 1 job(s)"), (out.stdout, out.stderr)
    out = run_cli("recover", str(lab.path))
    assert out.returncode == 0 and "failed 1 job(s) whose result file was deleted by hand" in out.stdout, out.stdout
    assert jobs["b"].get_status() is JobStatus.FAILED
    assert names(lab.path / "failed") == [jobs["b"].id]  # so that requeue can run it again
    drain = lab.worker("w2", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    assert lab.queue.job(jobs["a"].id).get_status() is JobStatus.FINISHED
    lab.tally("result file deleted by hand", {"a": lab.queue.job(jobs["a"].id)}, note="requeue reruns, recover fails")
