"""File operations per second made by the notebook poller with 0, 1, 100 and 1,000 live jobs.

Every operation goes through a wrapper around a real LocalStorage that counts
calls (over SSH each would be a round trip: operations, not milliseconds, are
what matter). Each live job has its own JobView and all of them one GroupView,
as in a notebook that displayed each job and the group; the poller's own thread
ticks them (no cells run). Two cases:

- ``queued``: no worker, every job waits: the poller backs off to a tick every 5 s;
- ``running``: two workers run the jobs (each lasts the whole window, reporting
  progress and printing): the two running jobs have their progress and output
  read, so the poller ticks every 0.2 s; the others wait.

Run: ``.venv/bin/python benchmarks/poller_ops.py [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fs_task_queue import Queue, progress
from fs_task_queue.jupyter.poller import Poller
from fs_task_queue.jupyter.views import GroupView, JobView
from fs_task_queue.storage.local import LocalStorage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# The test suite's counter (test_snapshot.py), a batch read counted as one request.
from helpers import CountingStorage  # type: ignore[import-not-found]


def task(seconds: float) -> None:
    for i in range(10):
        time.sleep(seconds / 10)
        progress(i + 1, 10)
        print("step", i)


def measure(n: int, running: bool, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fsq-poller-bench-") as tmp:
        path = os.path.join(tmp, "queue")
        Queue(path)
        storage = CountingStorage(LocalStorage(path), batch_as_one=True)
        queue = Queue(storage=storage)
        poller = Poller.instance()
        group = queue.map(task, [seconds + 2.0] * n) if n else None
        views: list[Any] = []
        if group is not None:
            views = [GroupView(group), *(JobView(job) for job in group)]
        workers = []
        if running:
            workers = [
                subprocess.Popen(
                    [sys.executable, "-m", "fs_task_queue", "worker", "--path", path, "--log-level", "WARNING"],
                    stdin=subprocess.DEVNULL,
                )
                for _ in range(2)
            ]
            while len(queue.workers()) < 2:
                time.sleep(0.05)
        for view in views:
            poller.register(view)
        time.sleep(1.0)  # first looks (new views read their job's summary once) and start-up
        storage.take()
        ticks = poller.ticks
        time.sleep(seconds)
        calls = storage.take()
        ticks = poller.ticks - ticks
        for view in views:
            view.close()
        poller.join(10)
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(30)
        total = sum(calls.values())
        return {
            "jobs": n,
            "case": "running" if running else "queued",
            "ops_per_s": total / seconds,
            "ticks_per_s": ticks / seconds,
            "ops_per_tick": total / ticks if ticks else 0.0,
            "by_op": dict(calls.most_common()),
            "thread_left": poller.running,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per case")
    args = parser.parse_args()
    print(f"{'case':8} {'jobs':>5} {'ops/s':>7} {'ticks/s':>8} {'ops/tick':>8}  thread left  operations")
    for running in (False, True):
        for n in (0, 1, 100, 1000):
            r = measure(n, running, args.seconds)
            print(
                f"{r['case']:8} {r['jobs']:>5} {r['ops_per_s']:>7.1f} {r['ticks_per_s']:>8.2f}"
                f" {r['ops_per_tick']:>8.1f}  {r['thread_left']!s:11}  {r['by_op']}"
            )


if __name__ == "__main__":
    main()
