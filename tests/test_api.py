"""The public API as the README shows it: submit, wait, reattach, list, cancel, inspect."""

from __future__ import annotations

import functools
import operator
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import WAIT, Workers, divide, run_burst, touch_and_return, wait_for, wait_for_file

import fs_task_queue
from fs_task_queue import (
    FSQError,
    Job,
    JobCanceledError,
    JobInfo,
    JobStatus,
    Progress,
    Queue,
    WaitTimeoutError,
    current_job,
    progress,
)


def echo(*args, **kwargs):
    return args, kwargs


def takes_timeout(x, timeout=None, job_id=None, metadata=None):
    return x, timeout, job_id, metadata


def make_adder(n):
    def add(x):
        return x + n

    return add


def chatty(go: str):
    job = current_job()
    print(f"hello from {job.id}")
    print("to stderr", file=sys.stderr)
    progress(1, 4, "first quarter")
    wait_for_file(go)
    print("bye")
    progress(4, 4, "all done")
    return job.id


# ------------------------------------------------------------------ README basics
def test_queue_path_creates_the_queue(qpath):
    assert not qpath.exists()
    queue = Queue(qpath)
    assert qpath.is_dir()
    assert qpath.stat().st_mode & 0o077 == 0, "a new queue is owner-only"
    job = queue.enqueue(operator.add, 1, 2)
    # Opening the same path again finds the same queue and its jobs.
    again = Queue(qpath, create=False)
    assert again == queue
    assert again.job(job.id).get_status() is JobStatus.QUEUED


def test_readme_example(queue):
    job = queue.enqueue(operator.add, 1, 2)
    assert isinstance(job, Job)
    assert isinstance(job.id, str) and job.id
    status = job.get_status()
    assert isinstance(status, JobStatus)
    assert status is JobStatus.QUEUED
    assert status == "queued"
    assert job.status is JobStatus.QUEUED
    assert job.result is None
    assert not job.done()

    run_burst(queue.path)

    assert job.get_status() is JobStatus.FINISHED
    assert job.is_finished and not job.is_failed
    assert job.done()
    assert job.result == 3
    assert job.wait(timeout=WAIT) == 3


def test_wait_blocks_until_a_worker_finishes(queue, worker):
    job = queue.enqueue(operator.mul, 6, 7)
    assert job.wait(timeout=WAIT) == 42
    assert job.get_status() is JobStatus.FINISHED


def test_wait_timeout_leaves_the_job_queued(queue):
    job = queue.enqueue(operator.add, 2, 2)
    with pytest.raises(WaitTimeoutError) as excinfo:
        job.wait(timeout=0.2)
    assert isinstance(excinfo.value, TimeoutError)
    assert job.id in str(excinfo.value)
    assert "no worker is registered" in str(excinfo.value) and "fs-task-queue-worker --path" in str(excinfo.value)
    assert job.get_status() is JobStatus.QUEUED
    run_burst(queue.path)
    assert job.wait(timeout=WAIT) == 4


def test_wait_timeout_with_a_worker_does_not_blame_workers(queue, worker, tmp_path):
    job = queue.enqueue(wait_for_file, str(tmp_path / "gate"))
    wait_for(lambda: job.get_status() is JobStatus.STARTED, what="the job to start")
    with pytest.raises(WaitTimeoutError) as excinfo:
        job.wait(timeout=0.2)
    assert "still started" in str(excinfo.value) and "no worker" not in str(excinfo.value)
    (tmp_path / "gate").touch()
    assert job.wait(timeout=WAIT) is None


# ------------------------------------------------------------ arguments and options
def test_every_kwarg_goes_to_the_function(queue):
    job = queue.enqueue(
        echo, 1, "two", timeout=5, job_id="fn-arg", metadata={"x": 1}, retries=3, args=(9,), kwargs={"k": 1}
    )
    run_burst(queue.path)
    assert job.wait(timeout=WAIT) == (
        (1, "two"),
        {"timeout": 5, "job_id": "fn-arg", "metadata": {"x": 1}, "retries": 3, "args": (9,), "kwargs": {"k": 1}},
    )
    assert job.id != "fn-arg", "a job_id kwarg of enqueue() is the function's, not the job's"


def test_kwargs_named_like_enqueue_parameters_go_to_the_function(queue):
    # enqueue(func, *args, **kwargs): "every keyword argument goes to func", even one named func or self.
    job = queue.enqueue(echo, func="f", self="s")
    run_burst(queue.path)
    assert job.wait(timeout=WAIT) == ((), {"func": "f", "self": "s"})


def test_enqueue_call_options_never_reach_the_function(queue):
    job = queue.enqueue_call(
        takes_timeout,
        (1,),
        {"timeout": 7, "job_id": "fn-value"},
        job_id="custom-id",
        metadata={"owner": "tests"},
        timeout=30,
    )
    plain = queue.enqueue_call(takes_timeout, args=[2], kwargs={}, job_id="other-id", metadata={"a": [1, 2]})
    assert job.id == "custom-id"
    run_burst(queue.path)
    assert job.wait(timeout=WAIT) == (1, 7, "fn-value", None)
    assert plain.wait(timeout=WAIT) == (2, None, None, None)
    assert job.info().metadata == {"owner": "tests"}
    assert plain.metadata == {"a": [1, 2]}


def test_lambda_closure_and_partial(queue, worker):
    jobs = [
        queue.enqueue(lambda x: x**2, 7),
        queue.enqueue(make_adder(10), 5),
        queue.enqueue(functools.partial(pow, 2), 10),
    ]
    assert [job.wait(timeout=WAIT) for job in jobs] == [49, 15, 1024]


MAIN_SCRIPT = """\
import sys

from fs_task_queue import Queue


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def norm2(p, scale=1):
    return (p.x * p.x + p.y * p.y) * scale


if __name__ == "__main__":
    queue = Queue(sys.argv[1], create=False)
    job = queue.enqueue(norm2, Point(3, 4), scale=2)
    print("result", job.wait(timeout=60))
    print("function", job.info().function)
    back = queue.enqueue(Point, 5, 6).wait(timeout=60)
    print("point", type(back).__name__, back.x, back.y)
"""


def test_function_defined_in_main_script(queue, worker, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(queue.path)], capture_output=True, text=True, timeout=WAIT, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "result 50" in lines
    assert "function __main__.norm2" in lines
    assert "point Point 5 6" in lines


# ----------------------------------------------------------------- ids, reattaching
def test_reattach_by_id_in_process(queue):
    job = queue.enqueue(operator.add, 1, 2)
    custom = queue.enqueue_call(operator.add, (3, 4), job_id="my_job-1")
    handle = queue.job(job.id)
    assert handle == job
    assert handle.get_status() is JobStatus.QUEUED
    assert queue.job("my_job-1").get_status() is JobStatus.QUEUED
    run_burst(queue.path)
    # Fresh handles, through a fresh Queue object, see the results.
    other = Queue(queue.path, create=False)
    assert other.job(job.id).result == 3
    assert other.job("my_job-1").result == 7
    assert custom.wait(timeout=WAIT) == 7


REATTACH_SCRIPT = """\
import sys

from fs_task_queue import Queue

queue = Queue(sys.argv[1], create=False)
for job_id in sys.argv[2:]:
    job = queue.job(job_id)
    try:
        value = repr(job.wait(timeout=60))
    except ZeroDivisionError as exc:
        value = "raised " + exc.remote_type
    print(job_id, job.get_status().value, value, flush=True)
"""


def test_reattach_from_another_process(queue, tmp_path):
    script = tmp_path / "reattach.py"
    script.write_text(REATTACH_SCRIPT)
    jobs = [
        queue.enqueue(operator.add, 1, 2),
        queue.enqueue_call(str.upper, ("abc",), job_id="custom-id"),
        queue.enqueue(divide, 1, 0),
    ]
    # The other process attaches while the jobs are still queued and waits for them.
    with subprocess.Popen(
        [sys.executable, str(script), str(queue.path), *(job.id for job in jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    ) as proc:
        try:
            run_burst(queue.path)
            out, err = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert out.splitlines() == [
        f"{jobs[0].id} finished 3",
        "custom-id finished 'ABC'",
        f"{jobs[2].id} failed raised ZeroDivisionError",
    ]


# -------------------------------------------------------------- listing and stats
def test_jobs_and_stats_by_status(queue):
    done = queue.enqueue(operator.add, 1, 1)
    bad = queue.enqueue(divide, 1, 0)
    run_burst(queue.path)
    queued = queue.enqueue(operator.add, 2, 2)
    canceled = queue.enqueue(operator.add, 3, 3)
    assert canceled.cancel() is True

    stats = queue.stats()
    assert {s.value: stats[s.value] for s in JobStatus} == {
        "queued": 1,
        "started": 0,
        "finished": 1,
        "failed": 1,
        "canceled": 1,
    }
    assert [j.id for j in queue.jobs(JobStatus.FINISHED)] == [done.id]
    assert [j.id for j in queue.jobs(JobStatus.FAILED)] == [bad.id]
    assert [j.id for j in queue.jobs("failed")] == [bad.id]
    assert [j.id for j in queue.jobs(JobStatus.QUEUED)] == [queued.id]
    assert [j.id for j in queue.jobs(JobStatus.CANCELED)] == [canceled.id]
    assert queue.jobs(JobStatus.STARTED) == []
    # Queued jobs oldest first, then running ones, then the done ones in id order.
    assert [j.id for j in queue.jobs()] == [queued.id, *sorted(j.id for j in (done, bad, canceled))]


def test_jobs_lists_queued_jobs_oldest_first(queue):
    jobs = [queue.enqueue(operator.add, i, i) for i in range(20)]
    assert [j.id for j in queue.jobs(JobStatus.QUEUED)] == [j.id for j in jobs]
    assert queue.stats()["queued"] == 20


def test_workers_shows_a_running_worker_and_its_job(queue, worker, workers, tmp_path):
    infos = queue.workers()
    assert [w.id for w in infos] == [worker]
    info = infos[0]
    assert info.host == socket.gethostname()
    assert info.pid == workers.procs[0].pid
    assert info.heartbeat_age is not None and 0 <= info.heartbeat_age < WAIT
    assert info.running == ()
    assert queue.stats()["workers"] == 1

    go = tmp_path / "go"
    job = queue.enqueue(wait_for_file, str(go))
    wait_for(lambda: queue.workers()[0].running == (job.id,), what="the worker to show its running job")
    assert job.get_status() is JobStatus.STARTED
    assert queue.stats()["started"] == 1
    assert [j.id for j in queue.jobs(JobStatus.STARTED)] == [job.id]
    go.touch()
    job.wait(timeout=WAIT)
    # The claim is released right after the result is published.
    wait_for(lambda: queue.workers()[0].running == (), what="the worker to release the job")


# --------------------------------------------------------------- cancel, exception
def test_cancel_a_queued_job_it_never_runs(queue, tmp_path):
    side = tmp_path / "ran"
    job = queue.enqueue(touch_and_return, str(side), 1)
    other = queue.enqueue(operator.add, 1, 2)
    assert job.cancel() is True
    assert job.get_status() is JobStatus.CANCELED
    assert job.done()
    assert job.cancel() is False, "canceling twice"

    run_burst(queue.path)

    assert not side.exists(), "a canceled job ran"
    assert job.get_status() is JobStatus.CANCELED
    assert isinstance(job.exception(), JobCanceledError)
    with pytest.raises(JobCanceledError):
        job.wait(timeout=WAIT)
    with pytest.raises(JobCanceledError):
        _ = job.result
    assert other.wait(timeout=WAIT) == 3
    # A finished job cannot be canceled.
    assert other.cancel() is False
    assert other.get_status() is JobStatus.FINISHED
    assert queue.stats()["canceled"] == 1


def test_cancel_by_id_from_a_fresh_handle(queue, tmp_path):
    side = tmp_path / "ran"
    job = queue.enqueue_call(touch_and_return, (str(side),), job_id="cancel-me")
    assert Queue(queue.path).job("cancel-me").cancel() is True
    run_burst(queue.path)
    assert not side.exists()
    assert job.get_status() is JobStatus.CANCELED


def test_exception(queue):
    ok = queue.enqueue(operator.add, 1, 2)
    bad = queue.enqueue(divide, 1, 0)
    assert ok.exception() is None, "not done yet"
    assert bad.exception() is None, "not done yet"
    run_burst(queue.path)
    assert ok.exception() is None
    exc = bad.exception()
    assert isinstance(exc, ZeroDivisionError)
    assert bad.exception(timeout=WAIT) is not None


# ------------------------------------------------------------------------ info
def test_info_records_when_and_where(queue, worker, tmp_path):
    before = time.time()
    # A queue nobody serves, for the info of a queued job: the running worker may
    # claim a job on `queue` before its first info() is read.
    idle = Queue(tmp_path / "nobody-serves-this")
    waiting = idle.enqueue_call(operator.add, (1, 2), metadata={"owner": "tests"})
    info = waiting.info()
    assert isinstance(info, JobInfo)
    assert info.id == waiting.id
    assert info.status == "queued"
    assert before <= info.enqueued_at <= time.time()
    assert info.started_at is None and info.ended_at is None and info.worker is None
    assert info.metadata == {"owner": "tests"}
    assert "add" in info.function

    job = queue.enqueue_call(operator.add, (1, 2), metadata={"owner": "tests"})
    assert job.wait(timeout=WAIT) == 3
    info = job.info()
    assert info.status == "finished"
    assert before <= info.enqueued_at <= info.started_at <= info.ended_at <= time.time()
    assert info.worker == worker
    assert info.host == socket.gethostname()
    assert info.metadata == {"owner": "tests"}
    assert info.error is None
    assert "add" in info.function
    assert (job.enqueued_at, job.started_at, job.ended_at, job.worker) == (
        info.enqueued_at,
        info.started_at,
        info.ended_at,
        info.worker,
    )


def test_info_of_a_failed_job_names_the_error(queue):
    job = queue.enqueue(divide, 1, 0)
    run_burst(queue.path)
    info = job.info()
    assert info.status == "failed"
    assert "ZeroDivisionError" in info.error
    assert "divide" in info.function


# ----------------------------------------------------- output, progress, current_job
def test_stdout_progress_and_current_job_while_running(queue, worker, tmp_path):
    go = tmp_path / "go"
    job = queue.enqueue(chatty, str(go))
    # The task prints, then reports progress, then waits for `go`.
    prog = wait_for(lambda: job.progress, what="the task's progress")
    assert job.stdout == f"hello from {job.id}\n"
    assert job.stderr == "to stderr\n"
    assert isinstance(prog, Progress)
    assert (prog.done, prog.total, prog.message) == (1, 4, "first quarter")
    assert prog.fraction == 0.25
    assert prog.updated_at > 0
    assert job.get_status() is JobStatus.STARTED
    assert not job.done()
    info = job.info()
    assert info.status == "started"
    assert info.worker == worker
    assert info.started_at is not None

    go.touch()
    assert job.wait(timeout=WAIT) == job.id, "current_job() inside the task is the job itself"
    assert job.stdout == f"hello from {job.id}\nbye\n"
    final = job.progress
    assert (final.done, final.total, final.message) == (4, 4, "all done")


def test_current_job_and_progress_outside_a_task():
    assert current_job() is None
    progress(1, 2, "nothing happens")  # a no-op outside a task
    assert fs_task_queue.current_job() is None


def test_output_of_a_silent_task_is_empty(queue):
    job = queue.enqueue(operator.add, 1, 2)
    run_burst(queue.path)
    assert job.stdout == "" and job.stderr == ""
    assert job.progress is None


# -------------------------------------------------------------- map, enqueue_many
def test_map_and_enqueue_many_return_results_in_order(queue, workers: Workers):
    squares = queue.map(operator.mul, range(40), range(40), metadata={"batch": "sq"})
    calls = queue.enqueue_many(echo, [((i,), {"k": -i}) for i in range(15)])
    assert len({j.id for j in squares + calls}) == 55
    # Two workers race, so completion order differs from submission order.
    procs = [workers.start(queue.path, "--burst") for _ in range(2)]
    assert [job.wait(timeout=WAIT) for job in squares] == [i * i for i in range(40)]
    assert [job.wait(timeout=WAIT) for job in calls] == [((i,), {"k": -i}) for i in range(15)]
    assert squares[5].metadata == {"batch": "sq"}
    workers.wait_all(procs)


def test_map_stops_at_the_shortest_iterable(queue):
    jobs = queue.map(operator.add, [1, 2, 3], [10, 20])
    run_burst(queue.path)
    assert [j.wait(timeout=WAIT) for j in jobs] == [11, 22]


# ------------------------------------------------------------------------ dequeue
def test_dequeue_times_out_when_empty(queue):
    with pytest.raises(TimeoutError):
        queue.dequeue(timeout=0.2)


def test_dequeue_and_run_in_process(queue):
    ok = queue.enqueue(operator.add, 2, 3)
    bad = queue.enqueue(divide, 1, 0)

    first = queue.dequeue(timeout=5, worker_id="in-process")
    assert first.id == ok.id, "oldest first"
    assert ok.get_status() is JobStatus.STARTED
    assert queue.stats()["started"] == 1
    assert first() == 5
    assert ok.get_status() is JobStatus.FINISHED
    assert Queue(queue.path).job(ok.id).result == 5
    assert ok.info().worker == "in-process"

    second = queue.dequeue(timeout=5, worker_id="in-process")
    assert second.id == bad.id
    # As in 0.1.9: the failure is recorded in the job and the call returns, so a loop goes on.
    assert second() is None
    assert bad.get_status() is JobStatus.FAILED
    assert isinstance(bad.exception(), ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        bad.wait(0)
    assert first() == 5 and second() is None  # calling again gives the outcome, never a second run

    with pytest.raises(TimeoutError):
        queue.dequeue(timeout=0.1)
    assert queue.stats()["started"] == 0


def test_a_0_1_9_worker_loop_survives_a_failing_task(queue):
    jobs = [queue.enqueue(divide, 1, d) for d in (1, 0, 2)]
    ran = []
    while True:
        try:
            job = queue.dequeue(timeout=0.2)
        except TimeoutError:
            break
        job()
        ran.append(job.id)
    assert ran == [j.id for j in jobs]
    assert [j.get_status() for j in jobs] == [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.FINISHED]
    assert jobs[0].result == 1 and jobs[2].result == 0.5


def test_calling_an_enqueued_job_claims_and_runs_it_in_place(queue, workers):
    job = queue.enqueue(operator.add, 2, 3)
    assert job() == 5  # no worker: this process claims it and runs it
    assert job.get_status() is JobStatus.FINISHED and job.info().worker is not None
    assert queue.job(job.id)() == 5  # done: the call gives its result, it does not run again
    canceled = queue.enqueue(operator.add, 1, 1)
    canceled.cancel()
    assert canceled() is None and canceled.get_status() is JobStatus.CANCELED
    # One held by a worker cannot run here too.
    go = Path(queue.path).parent / "go"
    held = queue.enqueue(wait_for_file, str(go))
    workers.start(queue.path)
    wait_for(lambda: held.get_status() is JobStatus.STARTED, what="a worker to start the job")
    with pytest.raises(FSQError, match="held by worker"):
        held()
    go.touch()
    assert held.wait(timeout=WAIT) is None


def test_a_process_that_dequeued_and_exited_leaves_no_worker_behind(queue):
    job = queue.enqueue(operator.add, 2, 3)
    left = queue.enqueue(operator.add, 4, 5)
    code = (
        "import sys\nfrom fs_task_queue import Queue\n"
        "q = Queue(sys.argv[1])\n"
        "q.dequeue(timeout=5, worker_id='custom-loop')()\n"
        "q.dequeue(timeout=5)\n"  # claimed, never run: put back at exit
    )
    subprocess.run([sys.executable, "-c", code, str(queue.path)], check=True, timeout=WAIT)
    assert job.result == 5
    assert queue.workers() == [], "a phantom worker was left registered"
    assert list((Path(queue.path) / "claimed").iterdir()) == []
    assert left.get_status() is JobStatus.QUEUED


def test_a_job_whose_result_is_in_is_not_counted_as_started(queue):
    # A worker publishes the result, then moves the task file out of claimed/:
    # in between, stats() and jobs() must not call the finished job started too.
    from fs_task_queue.execute import call_task, outcome_record, publish_outcome, read_claimed, seal_outcome
    from fs_task_queue.runtime import TaskContext

    job = queue.enqueue(operator.add, 2, 3)
    claimed = queue.dequeue(timeout=5, worker_id="in-process")
    task = read_claimed(claimed)
    assert task is not None
    result = call_task(task, TaskContext(queue, task.job_id, name=task.name))
    seen = {}

    def look() -> None:
        assert (Path(queue.path) / "claimed" / "in-process" / task.name).exists(), "the task file is still claimed"
        seen["stats"] = queue.stats()
        seen["started"] = [j.id for j in queue.jobs("started")]
        seen["all"] = [j.id for j in queue.jobs()]

    record = outcome_record(claimed, task, result, worker="in-process")
    publish_outcome(claimed, seal_outcome(claimed, record, result.payload), failed=False, on_published=look)
    assert seen["stats"]["started"] == 0 and seen["stats"]["finished"] == 1
    assert seen["started"] == []
    assert seen["all"] == [job.id], "listed once, as done"
    assert job.result == 5


def test_dequeue_waits_for_a_task(queue, tmp_path):
    # A task submitted from another process while dequeue() waits is picked up.
    code = "import sys, time, operator; from fs_task_queue import Queue; time.sleep(0.3); "
    code += "Queue(sys.argv[1]).enqueue(operator.neg, 5)"
    with subprocess.Popen([sys.executable, "-c", code, str(queue.path)], cwd=tmp_path) as proc:
        try:
            job = queue.dequeue(timeout=WAIT)
        finally:
            proc.wait(WAIT)
    assert job() == -5


def test_queue_equality_and_repr(qpath: Path):
    a, b = Queue(qpath), Queue(str(qpath))
    assert a == b and hash(a) == hash(b)
    assert str(qpath) in repr(a)


def test_import_loads_the_client_only():
    # A notebook that only submits must not pay for the worker's modules.
    code = (
        "import sys, fs_task_queue\n"
        "worker_side = ('worker', 'supervise', 'board', 'spare_cpu', 'serve', 'recovery', 'maintenance')\n"
        "print(sorted(m for m in worker_side if 'fs_task_queue.' + m in sys.modules))\n"
        "fs_task_queue.Worker\n"
        "print('fs_task_queue.worker' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "True"]
