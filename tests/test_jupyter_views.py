"""Live views and their poller, with real workers, real ipywidgets and a real IPython shell.

Outside a kernel ipywidgets talks to no front end (its comms are dummies), which
is all these tests need: they read the widgets' traits. What a front end
records is checked by tests/test_notebooks.py (nbclient) and
tests/test_browser.py (JupyterLab in Chromium).
"""

from __future__ import annotations

import gc
import operator
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator

import pytest
from helpers import WAIT, divide, wait_for, wait_for_file
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from test_snapshot import counted_queue
from traitlets.config import Config

from fs_task_queue import JobStatus, WaitTimeoutError, progress
from fs_task_queue.jupyter import views
from fs_task_queue.jupyter.poller import Poller
from fs_task_queue.jupyter.views import GroupView, JobView, QueueView


def report_and_wait(gate: str) -> str:
    progress(3, 4, "three of four")
    print("line one")
    wait_for_file(gate)
    print("line two")
    return "done"


@pytest.fixture
def poller() -> Iterator[Poller]:
    """The process's poller, left with no view and no thread after the test."""
    p = Poller.instance()
    yield p
    for view in p.views():
        if hasattr(view, "close"):
            view.close()
        else:
            p.unregister(view)
    assert p.join(WAIT), "the poller thread outlived every view"


@pytest.fixture
def shell(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path) + "/ipython")
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    try:
        yield ip
    finally:
        InteractiveShell.clear_instance()


def test_a_job_view_follows_its_job_and_the_thread_ends_with_it(queue, worker, poller, tmp_path):
    client, storage = counted_queue(queue)
    gate = tmp_path / "gate"
    job = client.enqueue(report_and_wait, str(gate))
    view = JobView(job)
    poller.register(view)
    wait_for(lambda: view.bar.value == 3, what="the progress report on the bar")
    assert view.bar.max == 4 and "three of four" in view.bar_label.value
    assert 'data-status="started"' in view.header.value and worker in view.header.value
    wait_for(lambda: "line one" in view.output.value, what="the output tail")
    assert poller.running
    gate.touch()
    wait_for(lambda: view.state is not None and view.state.status is JobStatus.FINISHED, what="the end")
    assert poller.join(WAIT), "the thread ends once nothing is pending"
    assert view.bar.value == view.bar.max and view.bar.bar_style == "success"
    assert 'data-status="finished"' in view.header.value and "&#x27;done&#x27;" in view.outcome.value
    assert view.cancel_button.layout.display == "none" and "line two" in view.output.value
    # Idle: cells keep running (post_run_cell ticks) and time passes, and no file is touched.
    storage.ops()
    for _ in range(20):
        assert not poller.tick(force=True)
    time.sleep(Poller.MIN_INTERVAL * 3)
    assert storage.ops() == 0 and not poller.running


def test_a_failed_job_shows_its_traceback_and_a_group_its_failures(queue, worker, poller):
    group = queue.map(divide, [1, 2, 3], [1, 0, 1])
    job_view, group_view = JobView(group[1]), GroupView(group)
    poller.register(job_view)
    poller.register(group_view)
    views.wait(group, timeout=WAIT)
    assert 'data-status="failed"' in job_view.header.value and job_view.bar.bar_style == "danger"
    assert "ZeroDivisionError" in job_view.outcome.value and "Traceback" in job_view.outcome.value
    assert group_view.bar.value == 3 and group_view.bar.bar_style == "danger"
    assert f"{group[1].id}: ZeroDivisionError: division by zero" in group_view.failures.value
    assert "2 / 3" not in group_view.bar_label.value and "3 / 3 done" in group_view.bar_label.value


def test_tick_cost_does_not_grow_with_queued_jobs_or_views(queue, poller):
    client, storage = counted_queue(queue)
    small = GroupView(client.map(operator.neg, range(10)))
    poller.register(small, start=False)
    storage.ops()
    poller.tick(force=True)
    cost = storage.ops()
    assert 0 < cost <= 3  # claimed/ listed, then results/ listed (or a look at each of a few)
    big = client.map(operator.neg, range(1000))
    poller.register(GroupView(big), start=False)
    job_views = [JobView(job) for job in big[:50]]
    for view in job_views:
        poller.register(view, start=False)
    storage.ops()
    poller.tick(force=True)
    assert storage.ops() == cost, "one snapshot per queue per tick, whatever the number of jobs and views"


def test_no_thread_is_left_when_a_view_is_dropped(queue, poller):
    job = queue.enqueue(operator.neg, 1)  # no worker: pending for ever
    view = JobView(job)
    poller.register(view)
    assert poller.running
    ref = weakref.ref(view)
    view.root.close()  # the front end closed it: nothing holds the view any more
    del view
    gc.collect()
    assert ref() is None, "a closed widget must not keep its view (and the poller) alive"
    assert poller.join(WAIT)
    other = JobView(job)
    poller.register(other)
    assert poller.running
    other.close()
    assert poller.join(WAIT) and not poller.views()


def test_wait_times_out_lets_interrupts_through_and_leaves_the_job(queue, poller):
    job = queue.enqueue(operator.neg, 1)  # no worker
    with pytest.raises(WaitTimeoutError, match=r"No worker is registered on .*fs-task-queue-worker --path"):
        views.wait(job, timeout=0.2)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            views.wait(job)
    finally:
        timer.cancel()
    assert job.get_status() is JobStatus.QUEUED, "interrupting the wait does not touch the job"
    assert not poller.views() and poller._driving == 0
    with pytest.raises(TypeError, match="pass a Job or a JobGroup"):
        views.wait(queue)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        views.wait(job, timeout=-1)


def test_wait_drives_the_views_from_the_calling_thread(queue, worker, poller):
    group = queue.map(operator.neg, range(5))
    view = GroupView(group)
    dashboard = QueueView(queue)
    poller.register(view, start=False)  # no thread: only the waiting thread ticks
    poller.register(dashboard, start=False)
    views.wait(group, timeout=WAIT)
    assert view.bar.value == 5 and "5 / 5 done" in view.bar_label.value and not poller.running
    assert not view.pending and view.cancel_button.layout.display == "none"
    assert "finished</span> 5" in dashboard.board.value, "the dashboard shows the end the wait saw"


def test_the_extension_shows_jobs_through_the_views_and_unloads(queue, shell, poller):
    job = queue.enqueue(operator.neg, 1)
    formatter = shell.display_formatter
    assert "text/html" in formatter.format(job)[0], "without the extension: the static HTML"
    shell.run_line_magic("load_ext", "fs_task_queue.jupyter")
    shell.user_ns["job"] = job
    with capture_output() as captured:
        result = shell.run_cell("job")
    assert result.success
    # No kernel here: the static bundle, shown with a display id (so it can be updated), and no thread.
    (output,) = captured.outputs
    assert set(output.data) == {"text/html", "text/plain"} and output.data["text/plain"].endswith("queued>")
    assert formatter.format(job) == ({}, {}) and not poller.running and not views.live_possible()
    callbacks = shell.events.callbacks["post_run_cell"]
    assert any(getattr(c, "__module__", "") == "fs_task_queue.jupyter" for c in callbacks)
    shell.run_line_magic("unload_ext", "fs_task_queue.jupyter")
    assert "text/html" in formatter.format(job)[0]
    assert not any(getattr(c, "__module__", "") == "fs_task_queue.jupyter" for c in callbacks)


def test_show_and_finish_outside_a_kernel(queue, shell, poller):
    job = queue.enqueue(operator.neg, 1)
    with capture_output() as captured:
        handle = views.show(job)
    assert handle is not None and "queued" in captured.outputs[0].data["text/plain"]
    job.cancel()
    with capture_output() as captured:
        views.finish(handle, job)
    assert "canceled" in captured.outputs[0].data["text/plain"]
    with pytest.raises(TypeError, match="pass a Job, a JobGroup or a Queue"):
        views.show(42)  # type: ignore[arg-type]
