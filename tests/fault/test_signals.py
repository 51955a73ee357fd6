"""Stopping a worker with signals: the grace period, a second signal, SIGUSR1."""

from __future__ import annotations

import signal

import pytest

from fs_task_queue import JobStatus

from .faultlib import all_claimed, ends, executions, mark, queued_names, wait_for

FAST = ["--recover-interval", "0.5", "--max-poll-interval", "0.2"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_task_shorter_than_grace_finishes_then_worker_exits(lab, sig):
    worker = lab.registered_worker("w", "--grace", "30", *FAST)
    job = lab.running("short", sleep=2)
    later = lab.queue.enqueue(mark, str(lab.fx), "later")
    worker.send_signal(sig)
    assert lab.procs.wait(worker) == 0, lab.procs.log(worker)
    assert f"received {sig.name}" in lab.procs.log(worker)

    assert job.get_status() is JobStatus.FINISHED and ends(lab.fx)["short"] == 1
    # A stopping worker claims nothing new.
    assert later.get_status() is JobStatus.QUEUED and executions(lab.fx)["later"] == 0
    assert not all_claimed(lab.path)
    t = lab.tally(f"{sig.name} with task < --grace", {"short": job}, note="finished, worker exit 0")
    assert not t.lost and not t.executed_twice and not t.committed_twice


@pytest.mark.timeout(90)
def test_task_longer_than_grace_is_requeued_without_counting_an_attempt(lab):
    worker = lab.registered_worker("w", "--grace", "1", *FAST)
    job = lab.running("long", first_sleep=300)
    worker.send_signal(signal.SIGTERM)
    assert lab.procs.wait(worker) == 0, lab.procs.log(worker)
    assert "interrupted by shutdown" in lab.procs.log(worker)
    assert job.get_status() is JobStatus.QUEUED and queued_names(lab.path) == [job.id]
    assert ends(lab.fx)["long"] == 0 and not all_claimed(lab.path)

    again = lab.worker("w2", "--burst", *FAST)
    assert lab.procs.wait(again) == 0, lab.procs.log(again)
    assert job.get_status() is JobStatus.FINISHED
    info = job.info()
    assert info.attempt == 1 and info.history == () and info.worker == "w2"
    t = lab.tally("SIGTERM with task > --grace", {"long": job}, note="killed, requeued, attempt stays 1")
    assert not t.lost and not t.committed_twice and t.executed_twice == ["long"]


@pytest.mark.timeout(90)
def test_second_sigterm_ends_the_grace_at_once(lab):
    worker = lab.registered_worker("w", "--grace", "600", *FAST)
    job = lab.running("long", first_sleep=300)
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping: received SIGTERM" in lab.procs.log(worker), what="the first SIGTERM to register")
    assert worker.poll() is None and job.get_status() is JobStatus.STARTED  # in its 600 s grace
    worker.send_signal(signal.SIGTERM)
    # Far less than the 600 s grace: only the second signal can end it this soon.
    assert lab.procs.wait(worker, timeout=60) == 0, lab.procs.log(worker)
    assert "interrupted by shutdown" in lab.procs.log(worker)
    assert job.get_status() is JobStatus.QUEUED and ends(lab.fx)["long"] == 0

    again = lab.worker("w2", "--burst", *FAST)
    assert lab.procs.wait(again) == 0, lab.procs.log(again)
    info = job.info()
    assert info.status == "finished" and info.attempt == 1 and info.history == ()
    t = lab.tally("second SIGTERM ends grace", {"long": job}, note="killed at once, requeued")
    assert not t.lost and not t.committed_twice and t.executed_twice == ["long"]
