"""Worker processes: burst/max-jobs/max-idle, stopping (heartbeat file, signals), many workers, options."""

from __future__ import annotations

import collections
import operator
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    ADMIN_SCRIPT,
    WAIT,
    WORKER_MODULE,
    WORKER_SCRIPT,
    Workers,
    create_exclusive,
    run_burst,
    wait_for,
    wait_for_file,
)

from fs_task_queue import JobCanceledError, JobStatus, JobTimeoutError, Queue, Worker

N_TASKS = 5000


def slow_task(started: str, done: str, seconds: float) -> str:
    Path(started).touch()
    time.sleep(seconds)
    Path(done).touch()
    return "completed"


def go_then_touch(go: str, done: str) -> str:
    wait_for_file(go)
    Path(done).touch()
    return "completed"


def record_run(side_dir: str, i: int) -> int:
    """Count every run of task ``i``: an exclusive file per index plus a line in a shared log."""
    fd = os.open(os.path.join(side_dir, "runs.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    create_exclusive(os.path.join(side_dir, f"task-{i}"))
    return i * i


def fail_until(attempts_dir: str, succeed_on: int) -> int:
    """Fail until this is the ``succeed_on``-th attempt (attempts are counted in a folder)."""
    n = len(os.listdir(attempts_dir)) + 1
    create_exclusive(os.path.join(attempts_dir, str(n)))
    if n < succeed_on:
        raise RuntimeError(f"attempt {n} fails")
    return n


def start_named(workers: Workers, queue: Queue, name: str, *args: str):
    proc = workers.start(queue.path, "--name", name, *args)
    wait_for(
        lambda: proc.poll() is not None or any(w.id == name for w in queue.workers()),
        what=f"worker {name} to register",
    )
    assert proc.poll() is None, workers.log(proc)
    return proc


def assert_unregistered(queue: Queue, name: str) -> None:
    assert name not in [w.id for w in queue.workers()]
    assert not (Path(queue.path) / "workers" / name).exists()
    stats = queue.stats()
    assert stats["started"] == 0, "nothing is left claimed"


# ---------------------------------------------------------------- burst, max-jobs, idle
@pytest.mark.parametrize(
    "command",
    [WORKER_MODULE, WORKER_SCRIPT, [*ADMIN_SCRIPT, "worker"]],
    ids=["python-m", "fs-task-queue-worker", "admin-worker-subcommand"],
)
def test_burst_worker_runs_everything_then_exits(queue, command):
    jobs = [queue.enqueue(operator.mul, i, 3) for i in range(10)]
    run_burst(queue.path, "--name", "burst-1", command=command)
    assert [job.result for job in jobs] == [i * 3 for i in range(10)]
    assert {job.info().worker for job in jobs} == {"burst-1"}
    assert_unregistered(queue, "burst-1")


def test_worker_class_in_process(queue):
    jobs = [queue.enqueue(operator.add, i, i) for i in range(4)]
    bad = queue.enqueue(operator.truediv, 1, 0)
    assert Worker(queue, burst=True, name="in-process").run() == 5
    assert [job.result for job in jobs] == [0, 2, 4, 6]
    assert bad.get_status() is JobStatus.FAILED
    assert {job.info().worker for job in jobs} == {"in-process"}
    assert_unregistered(queue, "in-process")


def test_worker_class_max_jobs(queue):
    jobs = [queue.enqueue(operator.add, i, i) for i in range(4)]
    assert Worker(str(queue.path), max_jobs=3).run() == 3
    assert [job.get_status() for job in jobs] == [JobStatus.FINISHED] * 3 + [JobStatus.QUEUED]
    assert queue.workers() == []


def test_burst_worker_on_an_empty_queue_exits_at_once(queue):
    run_burst(queue.path)
    assert queue.workers() == []


def test_burst_worker_creates_a_missing_queue(qpath):
    run_burst(qpath)
    assert Queue(qpath, create=False).stats()["queued"] == 0


def test_max_jobs(queue, workers):
    jobs = [queue.enqueue(operator.add, i, 1) for i in range(5)]
    proc = workers.start(queue.path, "--max-jobs", "2")
    workers.wait_all([proc])
    assert [job.get_status() for job in jobs] == [JobStatus.FINISHED] * 2 + [JobStatus.QUEUED] * 3
    assert [job.result for job in jobs[:2]] == [1, 2]
    assert queue.workers() == []


def test_max_idle(queue, workers):
    jobs = [queue.enqueue(operator.add, i, 1) for i in range(3)]
    proc = workers.start(queue.path, "--max-idle", "0.3", "--name", "idler")
    workers.wait_all([proc])
    assert [job.result for job in jobs] == [1, 2, 3]
    assert_unregistered(queue, "idler")


# ------------------------------------------------------------------------ stopping
def test_deleting_the_heartbeat_file_stops_an_idle_worker(queue, workers):
    proc = start_named(workers, queue, "hb-worker", "--heartbeat-interval", "0.2")
    assert queue.enqueue(operator.add, 1, 1).wait(timeout=WAIT) == 2, "the worker works"
    (Path(queue.path) / "workers" / "hb-worker").unlink()
    workers.wait_all([proc])
    assert_unregistered(queue, "hb-worker")
    # Nobody runs new tasks any more.
    later = queue.enqueue(operator.add, 2, 2)
    with pytest.raises(TimeoutError):
        later.wait(timeout=0.5)
    assert later.get_status() is JobStatus.QUEUED


def test_deleting_the_heartbeat_file_during_a_task_lets_it_finish(queue, workers, tmp_path):
    proc = start_named(workers, queue, "hb-busy", "--heartbeat-interval", "0.2")
    go, done = tmp_path / "go", tmp_path / "done"
    job = queue.enqueue(go_then_touch, str(go), str(done))
    nxt = queue.enqueue(operator.add, 1, 1)
    wait_for(lambda: job.get_status() is JobStatus.STARTED, what="the task to start")
    (Path(queue.path) / "workers" / "hb-busy").unlink()
    # The worker notices at its next heartbeat (it logs that it is stopping); then the task may end.
    wait_for(lambda: "stopping" in workers.log(proc), what="the worker to notice its heartbeat file is gone")
    go.touch()
    workers.wait_all([proc])
    assert done.exists()
    assert job.result == "completed"
    assert nxt.get_status() is JobStatus.QUEUED, "a stopping worker claims nothing new"
    assert_unregistered(queue, "hb-busy")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_task_lets_it_finish(queue, workers, tmp_path, signum):
    proc = start_named(workers, queue, "sig-worker")
    started, done = tmp_path / "started", tmp_path / "done"
    job = queue.enqueue(slow_task, str(started), str(done), 2.0)
    nxt = queue.enqueue(operator.add, 1, 1)
    wait_for(started.exists, what="the task to start")
    assert not done.exists()
    proc.send_signal(signum)
    workers.wait_all([proc])
    assert done.exists(), "the task ran to its end"
    assert job.get_status() is JobStatus.FINISHED
    assert job.result == "completed"
    assert job.info().worker == "sig-worker"
    assert nxt.get_status() is JobStatus.QUEUED, "a stopping worker claims nothing new"
    assert_unregistered(queue, "sig-worker")


# ------------------------------------------------------------------- many workers
@pytest.mark.timeout(240)
def test_four_workers_drain_5000_tasks_each_exactly_once(queue, workers, tmp_path):
    side = tmp_path / "side-effects"
    side.mkdir()
    jobs = queue.map(record_run, [str(side)] * N_TASKS, range(N_TASKS))
    assert queue.stats()["queued"] == N_TASKS
    names = [f"drain-{i}" for i in range(4)]
    procs = [workers.start(queue.path, "--burst", "--name", name) for name in names]
    workers.wait_all(procs, timeout=180)

    runs = collections.Counter(int(line) for line in (side / "runs.log").read_text().split())
    assert sorted(runs) == list(range(N_TASKS)), "a task was lost"
    twice = [i for i, n in runs.items() if n != 1]
    assert twice == [], f"tasks ran more than once: {twice[:20]}"
    assert len(list(side.glob("task-*"))) == N_TASKS

    assert [job.wait(timeout=WAIT) for job in jobs] == [i * i for i in range(N_TASKS)]
    stats = queue.stats()
    assert {s.value: stats[s.value] for s in JobStatus} == {
        "queued": 0,
        "started": 0,
        "finished": N_TASKS,
        "failed": 0,
        "canceled": 0,
    }
    assert {job.info().worker for job in jobs[::50]} <= set(names)
    assert queue.workers() == []


# --------------------------------------------------------- cancel, timeout, retries
def test_cancel_a_running_job(queue, worker, tmp_path):
    go = tmp_path / "go"
    job = queue.enqueue(wait_for_file, str(go))
    wait_for(lambda: job.get_status() is JobStatus.STARTED, what="the job to start")
    assert job.cancel() is True
    assert job.get_status() is JobStatus.CANCELED
    with pytest.raises(JobCanceledError):
        job.wait(timeout=WAIT)
    go.touch()
    # The worker goes on with the next task; the canceled job stays canceled.
    assert queue.enqueue(operator.add, 40, 2).wait(timeout=WAIT) == 42
    assert job.get_status() is JobStatus.CANCELED
    assert queue.stats()["canceled"] == 1


def test_timeout_option_is_enforced(queue, tmp_path):
    # enqueue_call(timeout=...) is enforced by the worker: the task is stopped and fails with JobTimeoutError.
    go, done = tmp_path / "never-created", tmp_path / "done"
    job = queue.enqueue_call(go_then_touch, (str(go), str(done)), timeout=0.5)
    after = queue.enqueue(operator.add, 1, 2)
    run_burst(queue.path)
    with pytest.raises(JobTimeoutError) as excinfo:
        job.wait(timeout=WAIT)
    assert isinstance(excinfo.value, TimeoutError)
    assert excinfo.value.job_id == job.id
    assert job.get_status() is JobStatus.FAILED
    assert not done.exists()
    assert after.wait(timeout=WAIT) == 3, "the worker goes on"


def test_retries_option_reruns_a_failing_task(queue, tmp_path):
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    job = queue.enqueue_call(fail_until, (str(attempts), 3), retries=2)
    run_burst(queue.path)
    assert job.wait(timeout=WAIT) == 3
    assert sorted(os.listdir(attempts)) == ["1", "2", "3"]
    assert job.info().attempt == 3


def test_retries_give_up_after_the_last_attempt(queue, tmp_path):
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    job = queue.enqueue_call(fail_until, (str(attempts), 10), retries=1)
    run_burst(queue.path)
    with pytest.raises(RuntimeError, match="attempt 2 fails"):
        job.wait(timeout=WAIT)
    assert sorted(os.listdir(attempts)) == ["1", "2"]
    assert job.get_status() is JobStatus.FAILED


def test_worker_in_a_thread_of_a_threaded_program(queue):
    """A threaded program cannot fork safely: its worker spawns the task process and still isolates crashes."""
    jobs = [queue.enqueue(operator.mul, i, 10) for i in range(3)]
    crash = queue.enqueue(os._exit, 3)
    after = queue.enqueue(operator.neg, 5)
    worker = Worker(queue, name="threaded", max_poll_interval=0.2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert after.wait(60) == -5
        assert [job.result for job in jobs] == [0, 10, 20]
        assert crash.get_status() is JobStatus.FAILED
        assert "exit code 3" in (crash.info().error or "")
    finally:
        worker.stop("test over")
        thread.join(30)
    assert not thread.is_alive()
    assert worker.jobs_done == 5
    assert_unregistered(queue, "threaded")


def test_an_outcome_dropped_for_a_cancel_counts_as_published(queue):
    # A running job canceled meanwhile: its outcome is dropped, and the job is
    # settled. The worker process acknowledges outcomes through on_published;
    # without it the task process took the drop for a refused write and the
    # worker stopped ("the worker process cannot write outcomes").
    from fs_task_queue.execute import CallResult, outcome_record, read_claimed
    from fs_task_queue.serialize import dumps
    from fs_task_queue.serve import commit_outcome

    queue.enqueue(operator.add, 1, 2)
    job = queue.dequeue(timeout=5)
    task = read_claimed(job)
    assert task is not None and job.cancel()
    record = outcome_record(job, task, CallResult(JobStatus.FINISHED, dumps(3, "the result")))
    published = []
    assert commit_outcome(job, record, dumps(3, "the result"), on_published=lambda: published.append(1)) is None
    assert published == [1]
    assert job.get_status() is JobStatus.CANCELED
