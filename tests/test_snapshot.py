"""queue.snapshot(): many jobs' states from a few listings; job.read_output(): output from an offset."""

from __future__ import annotations

import codecs
import operator
import os
import time

import pytest
from helpers import WAIT, CountingStorage, divide, run_burst, wait_for, wait_for_file

from fs_task_queue import JobStatus, Queue, progress
from fs_task_queue.storage.local import LocalStorage


def counted_queue(queue: Queue) -> tuple[Queue, CountingStorage]:
    storage = CountingStorage(LocalStorage(queue.path))
    return Queue(storage=storage), storage


def report_and_wait(gate: str) -> str:
    progress(3, 4, "three of four")
    print("line one")
    wait_for_file(gate)
    print("line two é")
    return "done"


def test_snapshot_classifies_every_state(queue, worker, tmp_path):
    gate = str(tmp_path / "gate")
    finished = queue.enqueue(operator.add, 1, 2)
    failed = queue.enqueue(divide, 1, 0)
    assert finished.wait(timeout=WAIT) == 3
    wait_for(failed.done)
    running = queue.enqueue(report_and_wait, gate)
    wait_for(lambda: running.progress is not None, what="the progress report")
    canceled = queue.enqueue(operator.add, 5, 5)
    queued = [queue.enqueue(operator.add, i, i) for i in range(3)]
    assert canceled.cancel()

    states = queue.snapshot([finished, failed, running, canceled, *queued, running.id])
    assert {j: s.status for j, s in states.items()} == {
        finished.id: JobStatus.FINISHED,
        failed.id: JobStatus.FAILED,
        running.id: JobStatus.STARTED,
        canceled.id: JobStatus.CANCELED,
        **{q.id: JobStatus.QUEUED for q in queued},
    }
    assert states[running.id].worker == worker
    report = states[running.id].progress
    assert report is not None and (report.done, report.total, report.message) == (3, 4, "three of four")
    assert states[finished.id].progress is None and states[finished.id].worker == worker  # who ran it
    assert queue.snapshot([running], progress=False)[running.id].progress is None
    # The same answers as asking each job.
    assert all(queue.job(j).get_status() is s.status for j, s in states.items())
    (tmp_path / "gate").touch()
    assert running.wait(timeout=WAIT) == "done"


def test_snapshot_cost_does_not_grow_with_queued_jobs(queue):
    client, storage = counted_queue(queue)
    few = client.map(operator.neg, range(20))
    storage.ops()
    client.snapshot(few)
    cost_few = storage.ops()
    many = few + client.map(operator.neg, range(1000))
    storage.ops()
    states = client.snapshot(many)
    assert storage.ops() == cost_few <= 3  # claimed/ and results/ listed, nothing read
    assert {s.status for s in states.values()} == {JobStatus.QUEUED}
    # A handful of jobs: one look each instead of listing results/.
    client.snapshot(few[:2])
    assert storage.ops() <= 3


def test_snapshot_reads_a_done_result_once(queue):
    jobs = queue.map(operator.neg, range(30))
    run_burst(queue.path)
    client, storage = counted_queue(queue)
    first = client.snapshot(jobs)
    assert {s.status for s in first.values()} == {JobStatus.FINISHED}
    assert storage.ops() >= 30  # each result read once
    again = client.snapshot(jobs)
    assert again == first
    assert storage.ops() == 0, "finished jobs are known: nothing to look at"


def test_read_output_follows_a_running_task(queue, worker, tmp_path):
    gate = tmp_path / "gate"
    job = queue.enqueue(report_and_wait, str(gate))
    wait_for(lambda: job.read_output("stdout") != b"", what="the first line")
    first = job.read_output("stdout")
    assert first == b"line one\n"
    gate.touch()
    job.wait(timeout=WAIT)
    rest = job.read_output("stdout", len(first))
    assert rest == "line two é\n".encode()
    # A read can end inside a character: an incremental decoder joins the pieces.
    decoder = codecs.getincrementaldecoder("utf-8")()
    whole = job.read_output("stdout")
    text = "".join(decoder.decode(whole[i : i + 1]) for i in range(len(whole)))
    assert text == job.stdout == "line one\nline two é\n"
    assert job.read_output("stderr") == b"" and job.read_output("stdout", len(whole)) == b""


def test_snapshot_says_when_where_and_which_attempt(queue, worker, tmp_path):
    """Live views show start time, host, attempt and a failure's error without asking each job."""
    gate = tmp_path / "gate"
    failed = queue.enqueue(divide, 1, 0)
    wait_for(failed.done)
    running = queue.enqueue(report_and_wait, str(gate))
    wait_for(lambda: running.progress is not None, what="the progress report")
    client, storage = counted_queue(queue)
    storage.ops()  # opening the queue
    before = time.time()
    states = client.snapshot([running, failed])
    first_cost = storage.ops()
    state = states[running.id]
    info = running.info()
    assert state.status is JobStatus.STARTED and state.attempt == 1
    assert state.started_at == pytest.approx(info.started_at) and state.started_at <= before
    assert state.host == os.uname().nodename and state.worker == worker
    assert states[failed.id].error == "ZeroDivisionError: division by zero"
    assert states[failed.id].ended_at == pytest.approx(failed.info().ended_at)
    # Start time, attempt and host are looked up once: later ticks cost what a bare status does.
    again = client.snapshot([running, failed])
    assert again[running.id].started_at == state.started_at and again[running.id].host == state.host
    assert storage.ops() < first_cost
    bare = client.snapshot([running, failed], details=False)
    assert bare[running.id].started_at is None
    assert storage.ops() == first_cost - 3  # the stat, the task header, the worker's identity
    gate.touch()
    assert running.wait(timeout=WAIT) == "done"
    done = client.snapshot([running])[running.id]
    assert done.status is JobStatus.FINISHED and done.ended_at is not None and done.error is None
    assert done.started_at == pytest.approx(running.info().started_at)
