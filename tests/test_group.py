"""JobGroup (what map/enqueue_many return) and the static HTML views of jobs, groups and queues."""

from __future__ import annotations

import operator
import time

import pytest
from helpers import WAIT, divide, run_burst, wait_for, wait_for_file

from fs_task_queue import JobGroup, JobStatus, RemoteError, WaitTimeoutError, progress


def slow_square(x: int) -> int:
    time.sleep(0.05 * (5 - x))  # later items end first
    return x * x


def step_and_wait(gate: str) -> None:
    progress(1, 2, "half <way>")
    print("printed <b>not bold</b>")
    wait_for_file(gate)


def test_map_returns_a_group_that_is_still_a_list(queue):
    group = queue.map(operator.neg, range(5))
    assert isinstance(group, JobGroup) and isinstance(group, list) and len(group) == 5
    assert group.counts() == {"queued": 5, "started": 0, "finished": 0, "failed": 0, "canceled": 0}
    assert repr(group) == "<JobGroup of 5 jobs: 5 queued>"
    many = queue.enqueue_many(divide, [((6, 2), {}), ((8,), {"b": 2})])
    assert isinstance(many, JobGroup)
    run_burst(queue.path)
    assert group.results(timeout=WAIT) == [0, -1, -2, -3, -4]
    assert many.results(timeout=WAIT) == [3, 4]
    assert group.done() and group[0].result == 0


def test_as_completed_yields_in_the_order_jobs_end(queue, workers):
    group = queue.map(slow_square, range(5))
    workers.start(queue.path, "--burst")
    workers.start(queue.path, "--burst")
    seen = [job.result for job in group.as_completed(timeout=WAIT)]
    assert sorted(seen) == [0, 1, 4, 9, 16]
    assert group.wait(timeout=WAIT) is group


def test_results_raise_the_first_failure_or_return_it(queue):
    group = queue.map(divide, [4, 1, 2], [2, 0, 0])
    run_burst(queue.path)
    with pytest.raises(ZeroDivisionError):
        group.results(timeout=WAIT)
    values = group.results(timeout=WAIT, return_exceptions=True)
    assert values[0] == 2 and all(isinstance(v, RemoteError) for v in values[1:])
    assert group.counts()["failed"] == 2


def test_wait_timeout_names_what_is_left(queue):
    group = queue.map(operator.neg, range(3))
    with pytest.raises(WaitTimeoutError, match=r"3 of 3 jobs are not done after 0.2 s \(3 queued\)"):
        group.wait(timeout=0.2)
    assert group.cancel() == 3 and group.counts()["canceled"] == 3


def test_static_html_of_job_group_and_queue(queue, worker, tmp_path):
    gate = tmp_path / "gate"
    running = queue.enqueue(step_and_wait, str(gate))
    wait_for(lambda: running.progress is not None and running.stdout, what="progress and output")
    html = running._repr_html_()
    assert ">started<" in html and "half &lt;way&gt;" in html and "50 %" in html
    assert "printed &lt;b&gt;not bold&lt;/b&gt;" in html, "output is escaped"
    assert worker in html and "--jp-brand-color1" in html
    dashboard = queue._repr_html_()
    assert worker in dashboard and ">started<" in dashboard and running.id in dashboard
    gate.touch()
    running.wait(timeout=WAIT)
    failed = queue.enqueue(divide, 1, 0)
    group = queue.map(operator.neg, range(4))
    wait_for(group.done)
    wait_for(failed.done)
    assert "ZeroDivisionError" in failed._repr_html_() and "in divide" in failed._repr_html_()
    assert "<b>result</b>" in group[1]._repr_html_() and "-1" in group[1]._repr_html_()
    summary = group._repr_html_()
    assert "4 / 4 done" in summary and "jobs/s" in summary
    mixed = JobGroup([*group, failed])
    assert "first failures" in mixed._repr_html_() and "ZeroDivisionError" in mixed._repr_html_()
    assert running.get_status() is JobStatus.FINISHED


def test_dashboard_without_workers_says_how_to_start_one(queue):
    assert "fs-task-queue-worker --path" in queue._repr_html_()


def test_a_slice_of_a_group_is_a_group(queue):
    group = queue.map(operator.neg, range(6))
    part = group[1:4]
    assert isinstance(part, JobGroup) and [j.id for j in part] == [j.id for j in group][1:4]
    assert part.created_at == group.created_at  # ETA and throughput from the submission
    assert repr(part) == "<JobGroup of 3 jobs: 3 queued>"
    assert group[-1] is list.__getitem__(group, -1) and isinstance(group[::2], JobGroup)
