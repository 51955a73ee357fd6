"""The client process whose filesystem calls the benchmark counts with strace.

``python client.py QUEUE N`` opens the queue, submits N no-op tasks with
``queue.enqueue`` and waits for every result in submission order, like a user
script would. With N = 0 it only imports and opens the queue: that run is the
baseline subtracted from the N-task run, so start-up costs are not charged to
the tasks. A worker must be serving the queue (outside strace).
"""

from __future__ import annotations

import operator
import sys

from fs_task_queue import Queue


def main(path: str, n: int) -> None:
    queue = Queue(path)
    # operator.pos is importable everywhere, so the worker unpickles it by
    # reference: the task costs what the queue costs and nothing else.
    jobs = [queue.enqueue(operator.pos, i) for i in range(n)]
    for i, job in enumerate(jobs):
        if job.wait(timeout=120) != i:
            raise SystemExit(f"job {job.id} returned a wrong result")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
