"""DaskWorker throughput against client.map and the normal worker, and its in-flight count during a drain.

``python benchmarks/dask_worker.py [--noop N] [--sleep N]`` starts a 2-process
LocalCluster (1 thread each), then for no-op tasks and 10 ms tasks measures:

* the same calls sent directly with ``client.map`` (the floor dask itself sets);
* a DaskWorker draining them from a queue (``burst``);
* two normal workers (``fs-task-queue-worker --burst``, task processes) draining them;

and prints tasks/s and the ratios, then the DaskWorker's claimed-but-unfinished
count over the drain of the 10 ms tasks (max per 100 ms bucket).
"""

from __future__ import annotations

import argparse
import logging
import operator
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import distributed

from fs_task_queue import Queue
from fs_task_queue.plugins.dask import DaskWorker


def sleep10(i: int) -> int:
    time.sleep(0.01)
    return i


def direct(client: Any, func: Callable[[int], int], n: int) -> float:
    start = time.perf_counter()
    results = client.gather(client.map(func, range(n), pure=False))
    elapsed = time.perf_counter() - start
    assert results == list(range(n))
    return elapsed


def via_dask_worker(
    client: Any, func: Callable[[int], int], n: int, root: Path, multiple: float
) -> tuple[float, DaskWorker]:
    queue = Queue(root / f"dask-{func.__name__}-{n}")
    jobs = queue.map(func, range(n))
    worker = DaskWorker(queue, client, burst=True, in_flight_per_thread=multiple)
    start = time.perf_counter()
    worker.run()
    elapsed = time.perf_counter() - start
    assert [j.wait(timeout=0) for j in jobs] == list(range(n))
    return elapsed, worker


def via_normal_workers(func: Callable[[int], int], n: int, root: Path, count: int = 2) -> float:
    queue = Queue(root / f"normal-{func.__name__}-{n}")
    jobs = queue.map(func, range(n))
    cmd = [sys.executable, "-m", "fs_task_queue", "worker", "--path", queue.path, "--burst", "--log-level", "WARNING"]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd) for _ in range(count)]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("a normal worker failed")
    elapsed = time.perf_counter() - start
    assert [j.wait(timeout=0) for j in jobs] == list(range(n))
    return elapsed


def in_flight_series(worker: DaskWorker, bucket: float = 0.1) -> list[int]:
    history = worker.dask.history
    if not history:
        return []
    t0 = history[0][0]
    series: dict[int, int] = {}
    for when, count in history:
        key = int((when - t0) / bucket)
        series[key] = max(series.get(key, 0), count)
    last = 0
    out = []
    for key in range(max(series) + 1):
        last = series.get(key, last)
        out.append(last)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--noop", type=int, default=1000, help="no-op tasks (default: 1000)")
    parser.add_argument("--sleep", type=int, default=400, help="10 ms tasks (default: 400)")
    parser.add_argument("--in-flight-per-thread", type=float, default=2.0, help="DaskWorker's multiple (default: 2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dist: Any = distributed  # its hints are partial
    with (
        tempfile.TemporaryDirectory() as tmp,
        dist.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
        ) as cluster,
        dist.Client(cluster) as client,
    ):
        root = Path(tmp)
        print(f"2-process LocalCluster (1 thread each), in_flight_per_thread {args.in_flight_per_thread:g}")
        head = ("workload", "client.map", "DaskWorker", "2 workers", "DW/map", "DW/workers")
        print(f"{head[0]:<16} {head[1]:>12} {head[2]:>12} {head[3]:>12} {head[4]:>8} {head[5]:>11}")
        last: DaskWorker | None = None
        for label, func, n in (("no-op", operator.pos, args.noop), ("10 ms sleep", sleep10, args.sleep)):
            direct(client, func, 20)  # warm the dask workers (imports, function cache)
            t_map = direct(client, func, n)
            t_dw, last = via_dask_worker(client, func, n, root, args.in_flight_per_thread)
            t_nw = via_normal_workers(func, n, root)
            rates = [n / t for t in (t_map, t_dw, t_nw)]
            print(
                f"{label + f' x{n}':<16} {rates[0]:>8.0f} t/s {rates[1]:>8.0f} t/s {rates[2]:>8.0f} t/s"
                f" {rates[1] / rates[0]:>8.2f} {rates[1] / rates[2]:>11.2f}"
            )
        assert last is not None
        series = in_flight_series(last)
        limit, peak = last.dask.limit, last.dask.max_in_flight
        print(f"in flight during the 10 ms drain (max per 100 ms, limit {limit}, peak {peak}):")
        print(" ".join(map(str, series)))


if __name__ == "__main__":
    main()
