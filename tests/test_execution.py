"""The execution seam: per-task context in threads, one-way imports, a worker shell driving any executor."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from helpers import WAIT, wait_for

from fs_task_queue import Worker, current_job, progress
from fs_task_queue.execution import Shell
from fs_task_queue.runtime import TaskContext


def chatty(tag: str, barrier: threading.Barrier) -> str:
    # Every step waits for the other task's same step, so the two tasks'
    # writes interleave for sure.
    job = current_job()
    assert job is not None
    for i in range(20):
        barrier.wait(timeout=WAIT)
        print(f"{tag} out {i} {job.id}")
        print(f"{tag} err {i}", file=sys.stderr)
        progress(i + 1, 20, f"{tag} step {i + 1}")
    return tag


def test_concurrent_tasks_in_threads_keep_their_own_output_and_progress(queue):
    barrier = threading.Barrier(2)
    results = {}

    def run(tag: str) -> None:
        job_id = f"job-{tag}"
        with TaskContext(queue, job_id, name=job_id).activate():
            results[tag] = chatty(tag, barrier)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert results == {"a": "a", "b": "b"}
    root = Path(queue.path) / "jobs"
    for tag in ("a", "b"):
        out = (root / f"job-{tag}" / "stdout").read_text().splitlines()
        err = (root / f"job-{tag}" / "stderr").read_text().splitlines()
        assert out == [f"{tag} out {i} job-{tag}" for i in range(20)]
        assert err == [f"{tag} err {i}" for i in range(20)]
        record = json.loads((root / f"job-{tag}" / "progress").read_text())
        assert record["done"] == 20 and record["message"] == f"{tag} step 20"
    # Outside any task the installed streams write where they always did.
    print("not a task's")
    assert current_job() is None


def test_a_thread_started_by_the_only_running_task_writes_into_its_output(queue):
    def task() -> None:
        t = threading.Thread(target=lambda: print("from a thread the task started"))
        t.start()
        t.join()

    job = queue.enqueue(task)
    queue.dequeue(timeout=WAIT)()
    assert job.stdout == "from a thread the task started\n"


def test_the_client_never_imports_worker_code():
    code = (
        "import sys, fs_task_queue, fs_task_queue.queue, fs_task_queue.job, fs_task_queue.group,"
        " fs_task_queue.executor, fs_task_queue.snapshot\n"
        "worker = ['execute', 'execution', 'serve', 'supervise', 'worker', 'recovery', 'contain', 'board',"
        " 'maintenance', 'plugins.dask']\n"
        "print([m for m in worker if 'fs_task_queue.' + m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


class CountingExecutor:
    """An executor that runs claimed tasks in this thread, to show the shell drives any executor."""

    description = "counting"

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def stop(self, reason: str) -> None:
        self.stopped.append(reason)

    def serve(self, shell: Shell) -> None:
        from fs_task_queue.execute import run_claimed

        while not shell.stopping:
            job = shell.claimer.claim()
            if job is None:
                shell.check_heartbeat(shell.watch(min(shell.chores(), 0.05)))
                continue
            run_claimed(job)
            shell.jobs_done += 1


def test_the_worker_shell_runs_any_executor_and_stops_it_when_its_heartbeat_goes(queue):
    executor = CountingExecutor()
    worker = Worker(queue, name="seam", executor=executor, heartbeat_interval=0.1)
    jobs = [queue.enqueue(pow, 2, i) for i in range(5)]
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert [j.wait(timeout=WAIT) for j in jobs] == [2**i for i in range(5)]
    assert [w.id for w in queue.workers()] == ["seam"]
    (Path(queue.path) / "workers" / "seam").unlink()
    thread.join(WAIT)
    assert not thread.is_alive() and worker.jobs_done == 5
    assert executor.stopped and "deleted" in executor.stopped[0]
    wait_for(lambda: not queue.workers(), what="the worker to unregister")


def test_a_claimer_dropped_without_close_leaves_no_lock_descriptor_for_forks_to_close(queue):
    import gc

    from fs_task_queue import liveness
    from fs_task_queue.queue import Claimer

    claimer = Claimer(queue, "dropped")
    claimer.register()
    fd = claimer._lock._lock._context.lock_file_fd  # type: ignore[union-attr]
    assert fd in liveness._held_fds
    del claimer
    gc.collect()
    # Its number is free again and goes to the next descriptor opened, which a
    # forked child (a task process) must not close as if it were the lock.
    assert fd not in liveness._held_fds
