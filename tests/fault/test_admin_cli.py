"""The admin commands that repair a queue after faults: stop-worker, recover, requeue, purge."""

from __future__ import annotations

import os
import signal

import pytest

from fs_task_queue import JobStatus, NoSuchJobError

from .faultlib import all_claimed, claimed, fails_first_time, mark, names, registered, run_cli


@pytest.mark.timeout(60)
def test_stop_worker(lab):
    worker = lab.registered_worker("w", "--recover-interval", "0.5")
    out = run_cli("stop-worker", str(lab.path), "w")
    assert out.returncode == 0 and "w: heartbeat file deleted" in out.stdout, (out.stdout, out.stderr)
    assert lab.procs.wait(worker) == 0, lab.procs.log(worker)
    assert "heartbeat file workers/w was deleted" in lab.procs.log(worker)
    assert "w" not in claimed(lab.path)
    out = run_cli("stop-worker", str(lab.path), "nobody")
    assert out.returncode == 1 and "no worker 'nobody'" in out.stderr, out.stderr


@pytest.mark.timeout(90)
def test_recover_requeues_the_task_of_a_killed_worker(lab):
    # This worker never looks for dead workers itself: only the command will.
    victim = lab.registered_worker("victim", "--recover-interval", "3600")
    job = lab.running("r", first_sleep=300)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    assert job.get_status() is JobStatus.STARTED  # held by a dead worker until someone recovers it

    out = run_cli("recover", str(lab.path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("recovered 1 job(s)") and job.id in out.stdout, out.stdout
    assert job.get_status() is JobStatus.QUEUED and all_claimed(lab.path) == []
    assert "victim" not in claimed(lab.path) and registered(lab.path, "victim") is None
    out = run_cli("recover", str(lab.path))
    assert out.stdout.startswith("recovered 0 job(s)"), out.stdout

    drain = lab.worker("drain", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    assert job.info().attempt == 2
    t = lab.tally("kill -9, then `fs-task-queue recover`", {"r": job}, note="requeued by the command")
    assert not t.lost and not t.committed_twice and t.executed_twice == ["r"]


@pytest.mark.timeout(90)
def test_requeue_all_then_purge_failed(lab):
    flaky = {f"f{i}": lab.queue.enqueue(fails_first_time, str(lab.fx), f"f{i}") for i in range(3)}
    fine = {f"ok{i}": lab.queue.enqueue(mark, str(lab.fx), f"ok{i}") for i in range(2)}
    drain = lab.worker("w1", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    assert all(j.get_status() is JobStatus.FAILED for j in flaky.values())
    assert len(names(lab.path / "failed")) == 3

    out = run_cli("requeue", str(lab.path), "--all")
    assert out.returncode == 0 and out.stdout.startswith("requeued 3 job(s)"), (out.stdout, out.stderr)
    # Fresh Job objects: the ones above cached their (then final) failed outcome.
    flaky = {key: lab.queue.job(job.id) for key, job in flaky.items()}
    assert all(j.get_status() is JobStatus.QUEUED for j in flaky.values())
    drain = lab.worker("w2", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    for job in flaky.values():
        assert job.get_status() is JobStatus.FINISHED and job.info().attempt == 1
    t = lab.tally(
        "failed, `requeue --all`, rerun", {**flaky, **fine}, note="requeued jobs ran and committed twice, by request"
    )
    assert not t.lost and not t.not_finished and sorted(t.executed_twice) == sorted(flaky)

    # Purge only failed jobs: make two fail for good first.
    broken = [lab.queue.enqueue(fails_first_time, str(lab.fx), f"b{i}") for i in range(2)]
    drain = lab.worker("w3", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    out = run_cli("purge", str(lab.path), "--older-than", "0s", "--status", "failed")
    assert out.returncode == 0 and out.stdout.startswith("purged 2 job(s)"), (out.stdout, out.stderr)
    for job in broken:
        with pytest.raises(NoSuchJobError):
            lab.queue.job(job.id)
    assert names(lab.path / "failed") == []
    for job in [*flaky.values(), *fine.values()]:
        assert lab.queue.job(job.id).get_status() is JobStatus.FINISHED  # untouched


@pytest.mark.timeout(60)
def test_job_object_sees_its_requeue(lab):
    job = lab.queue.enqueue(fails_first_time, str(lab.fx), "again")
    drain = lab.worker("w1", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    assert job.get_status() is JobStatus.FAILED
    out = run_cli("requeue", str(lab.path), job.id)
    assert out.returncode == 0, out.stderr
    assert lab.queue.job(job.id).get_status() is JobStatus.QUEUED  # a fresh lookup sees it
    drain = lab.worker("w2", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    assert job.wait(10).startswith("again.")  # the Job the client holds still reports the old failure
