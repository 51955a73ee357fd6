"""The end-to-end demo behind ``make demo`` / ``fs-task-queue demo``.

A temporary queue, real worker processes, real tasks (a lambda, one that fails,
one that reports progress), a printed summary, and a clean stop.
"""

from __future__ import annotations

import math
import operator
import os
import signal
import subprocess
import sys
import tempfile
import time

from fs_task_queue.errors import FSQError
from fs_task_queue.queue import Queue
from fs_task_queue.runtime import progress

__all__ = ["run_demo"]


def _slow_sum(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
        progress(i + 1, n, f"summing {i + 1}/{n}")
        time.sleep(0.01)
    print(f"summed {n} numbers")
    return total


def _fails(x: int) -> float:
    return x / 0


def run_demo(tasks: int = 20, workers: int = 2) -> int:
    """Run the demo and print what happened; return 0 if every job behaved as expected."""
    with tempfile.TemporaryDirectory(prefix="fsq-demo-") as tmp:
        path = os.path.join(tmp, "queue")
        queue = Queue(path)
        print(f"queue: {path}")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "fs_task_queue", "worker", "--path", path, "--name", f"demo-{i}"],
                stderr=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        print(f"started {workers} worker processes: pids {[p.pid for p in procs]}")
        t0 = time.perf_counter()
        jobs = [
            ("operator.add(1, 2)", queue.enqueue(operator.add, 1, 2), 3),
            ("lambda x: x ** 2 (7)", queue.enqueue(lambda x: x**2, 7), 49),
            ("math.factorial(20)", queue.enqueue(math.factorial, 20), math.factorial(20)),
            ("_slow_sum(50) with progress", queue.enqueue(_slow_sum, 50), sum(range(50))),
            ("1 / 0 (fails)", queue.enqueue(_fails, 1), ZeroDivisionError),
        ]
        squares = queue.map(lambda i: i * i, range(max(0, tasks - len(jobs))))
        submitted = time.perf_counter() - t0
        print(f"submitted {len(jobs) + len(squares)} tasks in {submitted * 1000:.1f} ms")
        ok = True
        for label, job, expected in jobs:
            try:
                value = job.wait(timeout=60)
                good = value == expected
                shown = repr(value)
            except FSQError as exc:
                good = isinstance(expected, type) and isinstance(exc, expected)
                kind = getattr(exc, "remote_type", None) or type(exc).__name__
                shown = f"raised {kind}: {getattr(exc, 'remote_message', exc)}"
            ok &= good
            info = job.info()
            took = (info.ended_at or 0) - (info.started_at or 0)
            print(f"  {label:<30} {shown[:40]:<42} on {info.worker} in {took * 1000:.1f} ms")
            if job.stdout:
                print(f"  {'':<30} stdout: {job.stdout.strip()}")
            if job.progress:
                print(f"  {'':<30} progress: {job.progress.done:g}/{job.progress.total:g}")
        values = [job.wait(timeout=60) for job in squares]
        ok &= values == [i * i for i in range(len(squares))]
        print(f"  map(lambda i: i * i, range({len(squares)})) -> {values}")
        print(f"all {len(jobs) + len(squares)} results in {time.perf_counter() - t0:.2f} s; stats: {queue.stats()}")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc in procs]
        print(f"workers stopped with exit codes {codes}")
        ok &= codes == [0] * len(procs)
        print("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1
