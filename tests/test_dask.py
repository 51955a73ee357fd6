"""DaskWorker against a real distributed.LocalCluster with worker processes (one cluster per module)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, create_exclusive, divide, wait_for, wait_for_file

from fs_task_queue import JobStatus, JobTimeoutError, Queue, RemoteError, Worker, progress

distributed = pytest.importorskip("distributed", reason="pip install 'fs-task-queue[dask]'")
dask = pytest.importorskip("dask")

from fs_task_queue.plugins.dask import DaskWorker  # noqa: E402

THREADS_PER_WORKER = 2
N_WORKERS = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    # allowed-failures 0: a dask worker that dies with a task makes it KilledWorker
    # at once, so the DaskWorker's own lost-run policy is what re-runs it.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=N_WORKERS,
            threads_per_worker=THREADS_PER_WORKER,
            processes=True,
            dashboard_address=":0",
            silence_logs=40,
        )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster, set_as_default=False) as client:
        yield client


class Running:
    """A DaskWorker running in a thread of the test (stopped at the end of the test)."""

    def __init__(self, worker: DaskWorker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc
            raise

    def join(self) -> DaskWorker:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the DaskWorker did not stop"
        assert self.error is None, self.error
        return self.worker

    def stop(self) -> None:
        self.worker.stop("test over")
        self.join()


@pytest.fixture
def start(client: Any) -> Iterator[Any]:
    started: list[Running] = []

    def start(queue: Queue, **options: Any) -> Running:
        options.setdefault("recover_interval", 0.5)
        running = Running(DaskWorker(queue, client, **options))
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


# ---------------------------------------------------------------- task functions
def effect(side: str, i: int) -> int:
    create_exclusive(os.path.join(side, str(i)))  # a second run of the same task fails here
    return i * i


def chatty(started: str, tag: int, n: int) -> int:
    Path(started, str(tag)).touch()
    # Run together: every task waits for all to have started, then they print in turns.
    wait_for(lambda: len(os.listdir(started)) >= n, what="the other tasks")
    for i in range(40):
        print(f"task {tag} line {i}")
        print(f"task {tag} err {i}", file=sys.stderr)
        progress(i + 1, 40, f"task {tag}")
        time.sleep(0.002)
    return tag


def dies_first_time(marks: str) -> int:
    if not os.path.exists(os.path.join(marks, "first")):
        Path(marks, "first").write_text(str(os.getpid()))
        while True:  # killed here, with its dask worker process
            time.sleep(0.05)
    create_exclusive(os.path.join(marks, "effect"))
    return 42


def spin(marks: str, seconds: float) -> str:
    Path(marks, "started").touch()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    Path(marks, "finished").touch()
    return "finished"


def nap(side: str, i: int) -> int:
    time.sleep(0.02)
    return effect(side, i)


def blows_up(x: int) -> None:
    raise ValueError(f"bad input {x}")


def claimed_count(queue: Queue, worker_id: str) -> int:
    try:
        return sum(1 for n in os.listdir(Path(queue.path, "claimed", worker_id)) if not n.startswith("."))
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------------------ tests
def test_1000_tasks_drain_each_side_effect_once_within_the_backpressure_limit(queue, start, tmp_path):
    side = tmp_path / "side"
    side.mkdir()
    jobs = queue.map(effect, [str(side)] * 1000, range(1000))
    seen: list[int] = []
    running = start(queue, name="dask-drain", burst=True)
    while running.thread.is_alive():  # sample what is claimed and unfinished
        seen.append(claimed_count(queue, "dask-drain"))
        time.sleep(0.005)
    worker = running.join()
    limit = 2 * N_WORKERS * THREADS_PER_WORKER
    assert worker.dask.limit == limit and worker.jobs_done == 1000
    assert [j.wait(timeout=0) for j in jobs] == [i * i for i in range(1000)]
    assert sorted(int(p.name) for p in side.iterdir()) == list(range(1000))
    assert max(seen) <= limit and worker.dask.max_in_flight == limit, (max(seen), worker.dask.max_in_flight)
    assert queue.stats()["finished"] == 1000


def test_the_in_flight_multiple_is_configurable(queue, start, tmp_path):
    side = tmp_path / "side"
    side.mkdir()
    jobs = queue.map(nap, [str(side)] * 60, range(60))
    worker = start(queue, burst=True, in_flight_per_thread=0.5).join()
    assert worker.dask.limit == N_WORKERS * THREADS_PER_WORKER // 2
    assert worker.dask.max_in_flight == worker.dask.limit
    assert sum(j.wait(timeout=0) for j in jobs) == sum(i * i for i in range(60))


def test_a_failing_task_keeps_the_dask_workers_traceback(queue, start):
    job = queue.enqueue(blows_up, 7)
    ok = queue.enqueue(divide, 1, 4)
    start(queue, burst=True).join()
    error = job.exception()
    assert isinstance(error, RemoteError) and isinstance(error, ValueError)
    assert "bad input 7" in str(error) and "in blows_up" in error.remote_traceback, error.remote_traceback
    assert ok.result == 0.25


def test_concurrent_tasks_keep_their_own_output_and_progress(queue, start, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    n = N_WORKERS * THREADS_PER_WORKER  # all at once: two threads in each dask worker process
    jobs = [queue.enqueue(chatty, str(started), tag, n) for tag in range(n)]
    start(queue, burst=True).join()
    for tag, job in enumerate(jobs):
        assert job.result == tag
        assert job.stdout.splitlines() == [f"task {tag} line {i}" for i in range(40)]
        assert job.stderr.splitlines() == [f"task {tag} err {i}" for i in range(40)]
        assert job.progress is not None and job.progress.done == 40 and job.progress.message == f"task {tag}"


def test_a_dask_worker_process_killed_mid_task_reruns_it_once(queue, start, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = queue.enqueue(dies_first_time, str(marks))
    running = start(queue)
    wait_for(lambda: (marks / "first").exists() and (marks / "first").read_text(), what="the first run")
    os.kill(int((marks / "first").read_text()), signal.SIGKILL)
    assert job.wait(timeout=WAIT) == 42
    assert (marks / "effect").exists()
    info = job.info()
    assert info.attempt == 2 and [h["outcome"] for h in info.history] == ["worker lost"]
    running.stop()


def test_cancel_a_running_task_stops_it(queue, start, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = queue.enqueue(spin, str(marks), 60.0)
    after = queue.enqueue(divide, 1, 1)
    running = start(queue)
    wait_for(lambda: (marks / "started").exists(), what="the task to start")
    assert job.cancel()
    assert after.wait(timeout=WAIT) == 1
    wait_for(lambda: claimed_count(queue, running.worker.id) == 0, what="the canceled claim to be settled")
    assert job.get_status() is JobStatus.CANCELED
    assert running.worker.dask.history[-1][1] == 0  # its future was settled, not left running
    assert not (marks / "finished").exists()
    running.stop()


def test_a_cancel_of_a_queued_task_means_it_never_runs(queue, start, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = queue.enqueue(spin, str(marks), 0.0)
    job.cancel()
    start(queue, burst=True).join()
    assert not (marks / "started").exists() and job.get_status() is JobStatus.CANCELED


def test_timeout_stops_the_task(queue, start, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = queue.enqueue_call(spin, (str(marks), 60.0), timeout=0.5)
    start(queue, burst=True).join()
    with pytest.raises(JobTimeoutError, match=r"timeout of 0\.5 s"):
        job.wait(timeout=0)
    assert (marks / "started").exists() and not (marks / "finished").exists()


def test_retries_apply_on_dask(queue, start, tmp_path):
    job = queue.enqueue_call(blows_up, (1,), retries=2)
    start(queue, burst=True).join()
    assert isinstance(job.exception(), ValueError)
    assert job.info().attempt == 3 and [h["outcome"] for h in job.info().history] == ["failed"] * 2


def test_cli_dask_worker_drains_on_sigterm(queue, cluster, workers, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    quick = [queue.enqueue(divide, i, 1) for i in range(5)]
    go = tmp_path / "go"
    long = queue.enqueue(wait_for_file, str(go))
    proc = workers.start(queue.path, "--dask", cluster.scheduler_address, "--grace", "0.5", "--name", "cli-dask")
    assert [j.wait(timeout=WAIT) for j in quick] == [0, 1, 2, 3, 4]
    wait_for(lambda: long.get_status() is JobStatus.STARTED, what="the long task to start")
    proc.send_signal(signal.SIGTERM)
    assert workers.wait(proc) == 0, workers.log(proc)
    log = workers.log(proc)
    assert "isolation: dask" in log and "putting 1 unfinished task(s) back" in log, log
    assert long.get_status() is JobStatus.QUEUED
    assert long.info().attempt == 1 and not long.info().history  # not counted as an attempt
    assert not [w for w in queue.workers() if w.id == "cli-dask"]


def test_a_killed_dask_worker_leaves_its_claims_to_recovery(queue, cluster, workers, tmp_path):
    go = tmp_path / "go"
    job = queue.enqueue(wait_for_file, str(go))
    proc = workers.start(queue.path, "--dask", cluster.scheduler_address, "--name", "doomed")
    wait_for(lambda: job.get_status() is JobStatus.STARTED, what="the task to start on dask")
    proc.kill()
    workers.wait(proc)
    go.touch()
    normal = workers.start(queue.path, "--burst", "--recover-interval", "0.2", "--name", "rescuer")
    assert workers.wait(normal) == 0
    assert job.wait(timeout=WAIT) is None and job.info().worker == "rescuer"
    assert [h["outcome"] for h in job.info().history] == ["worker lost"]


def test_a_normal_worker_and_a_dask_worker_share_one_queue(queue, start, tmp_path):
    side = tmp_path / "side"
    side.mkdir()
    jobs = queue.map(nap, [str(side)] * 300, range(300))
    normal = Worker(queue, name="normal", burst=True, isolation="none")
    thread = threading.Thread(target=normal.run, daemon=True)
    thread.start()
    start(queue, name="dasky", burst=True).join()
    thread.join(WAIT)
    assert [j.wait(timeout=0) for j in jobs] == [i * i for i in range(300)]
    assert sorted(int(p.name) for p in side.iterdir()) == list(range(300))
    ran_by = {j.info().worker for j in jobs}
    assert ran_by == {"normal", "dasky"}, ran_by


def test_dask_worker_imports_under_both_seed_spellings():
    from fs_task_queue.plugin.dask import DaskWorker as Seed
    from fs_task_queue.plugins import DaskWorker as Lazy

    assert Seed is DaskWorker and Lazy is DaskWorker


def test_bad_dask_options_say_what_to_do(queue, client):
    with pytest.raises(ValueError, match="not both"):
        DaskWorker(queue, client, address="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="in_flight_per_thread must be > 0"):
        DaskWorker(queue, in_flight_per_thread=0)
    with pytest.raises(ValueError, match="dask runs the tasks"):
        DaskWorker(queue, isolation="none")


def test_the_dask_notebook_runs(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    notebook = Path(__file__).parent.parent / "notebooks" / "dask.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells), "commit the notebook without outputs"
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )
    assert "[0, 1, 4, 9, 16" in text and "squaring 3" in text and "this task fails on purpose" in text, text


def test_dask_before_the_path_does_not_take_it_for_an_address(queue, cluster, tmp_path, monkeypatch):
    """`fs-task-queue worker --dask PATH`: --dask's optional address would swallow the path; it is the path."""
    import subprocess

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)  # dask's config: no address given
    jobs = [queue.enqueue(divide, i, 1) for i in range(3)]
    argv = [sys.executable, "-m", "fs_task_queue", "worker", "--dask", queue.path, "--burst", "--name", "dask-first"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [j.wait(timeout=WAIT) for j in jobs] == [0, 1, 2]
    assert "isolation: dask" in done.stderr, done.stderr
