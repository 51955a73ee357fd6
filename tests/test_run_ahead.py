"""How far a worker's task process runs ahead of the publication of its outcomes."""

from __future__ import annotations

import operator
import subprocess
import sys
from pathlib import Path
from typing import Any

from fs_task_queue import JobStatus, Queue, layout
from fs_task_queue.execute import call_task, read_claimed
from fs_task_queue.job import Job
from fs_task_queue.queue import Claimer
from fs_task_queue.runtime import TaskContext
from fs_task_queue.serve import settle_outcome
from fs_task_queue.supervise import RUN_AHEAD_BUDGET, RUN_AHEAD_MAX, RunAhead


def test_one_long_task_in_flight_at_most():
    flight = RunAhead()
    assert flight.has_room()
    flight.add("a", 2 * RUN_AHEAD_BUDGET)
    assert not flight.has_room(), "a long task's outcome must be published before another joins it"
    flight.published()
    assert not flight and flight.has_room()


def test_short_tasks_fill_the_budget_or_the_count():
    by_count = RunAhead()
    for i in range(RUN_AHEAD_MAX + 1):
        assert by_count.has_room(), i
        by_count.add(f"j{i}", 0.0)
    assert not by_count.has_room() and len(by_count) == RUN_AHEAD_MAX + 1

    by_time = RunAhead()
    step = RUN_AHEAD_BUDGET / 4
    added = 0
    while by_time.has_room():
        by_time.add(f"j{added}", step)
        added += 1
    # Room while the total is within the budget: 4 tasks fill it, a fifth still joins.
    assert added == 5
    by_time.published()
    assert by_time.has_room() and "j0" not in by_time and "j1" in by_time


class FullSink:
    """An outcome sink that never has room: the caller must publish itself (a seam, not a fake queue)."""

    refused = False

    def __init__(self) -> None:
        self.offered = 0

    def hand_over(self, job: Job, record: dict[str, Any], payload: bytes) -> bool:
        self.offered += 1
        return False

    def wait_published(self, *, everything: bool = False) -> None:
        pass

    def in_flight(self, job_id: str) -> bool:
        return False


def test_an_outcome_the_sink_has_no_room_for_is_published_by_the_task_loop(queue: Queue):
    job = queue.enqueue(operator.add, 2, 3)
    claimer = Claimer(queue, "w-full")
    claimed = claimer.claim()
    assert claimed is not None
    task = read_claimed(claimed)
    assert task is not None
    result = call_task(task, TaskContext(queue, task.job_id, name=task.name))
    sink = FullSink()
    assert settle_outcome(claimed, task, result, "w-full", sink) is None
    assert sink.offered == 1
    assert job.get_status() is JobStatus.FINISHED and job.result == 5
    assert not queue.storage.exists(layout.claimed_path("w-full", claimed._name or ""))
    claimer.close()


TINY_RUN_AHEAD = """
import sys
from fs_task_queue import Queue, Worker, supervise

# The task process is forked from this process, so it sees the patched limits.
supervise.RUN_AHEAD_MAX = 0
supervise.RUN_AHEAD_BUDGET = 0.0
Worker(Queue(sys.argv[1]), burst=True, name="tiny-run-ahead").run()
"""


def test_a_worker_whose_run_ahead_is_tiny_still_runs_everything_once(queue: Queue):
    # No outcome may wait beside another: most are published by the task process itself.
    # In a fresh process: the worker forks its task process from it, and the test
    # process may hold other libraries' threads (dask's pools) by now.
    jobs = queue.map(operator.mul, range(300), range(300))
    subprocess.run([sys.executable, "-c", TINY_RUN_AHEAD, queue.path], check=True, timeout=120)
    assert [job.result for job in jobs] == [i * i for i in range(300)]
    assert {job.info().worker for job in jobs} == {"tiny-run-ahead"}
    assert not list((Path(queue.path) / "claimed").glob("*/*-*")), "every claim was released"
