"""SLURM workers: submit to first task, over SSH too, and how much of its allocation a worker uses.

Usage::

    python benchmarks/slurm.py                 # all three parts (about 3 minutes)
    python benchmarks/slurm.py --rounds 10 --walltime 0

It starts the test suite's real one-node SLURM (``tests/slurm/conftest.py``:
slurm-wlm, ``AuthType=auth/none``, daemons in the foreground) and measures:

- **submit to first task**: a queued task, then ``submit_workers(queue, 1)``;
  the time from the call to the task running in the job, and the call itself
  (sbatch), median and max of ``--rounds``;
- the same **through SSHQueue**: a real sshd on 127.0.0.1 whose sessions see
  the cluster; ``submit_workers`` runs ``fs-task-queue slurm submit`` there;
- **allocation used** (``--walltime`` minutes, 0 skips): one worker with a job
  of that length serves a stream of 1 s tasks; when it claims its last task,
  how long before the job's end that was, and what share of the allocation it
  spent serving (its first task's start to its last task's end).

It measures, it does not assert.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fs_task_queue import Queue
from fs_task_queue.slurm import query_end_time, submit_workers


def started_at() -> float:
    return time.time()


def one_second(_: int) -> tuple[float, float]:
    start = time.time()
    time.sleep(1.0)
    return start, time.time()


def _submit_to_first_task(
    queue: Queue, submit: Callable[[], list[str]], rounds: int, cluster_jobs: Callable[[], list[str]]
) -> tuple[list[float], list[float]]:
    to_task, calls = [], []
    for _ in range(rounds):
        while cluster_jobs():  # the last round's worker has ended: a new one must start
            time.sleep(0.2)
        job = queue.enqueue(started_at)
        t0 = time.time()
        submit()
        calls.append(time.time() - t0)
        to_task.append(job.wait(timeout=120) - t0)
    return to_task, calls


def _line(what: str, values: list[float]) -> str:
    return f"{what}: median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="submissions per part (default: 5)")
    parser.add_argument("--walltime", type=int, default=2, help="minutes of the allocation part (0: skip)")
    args = parser.parse_args()

    import cloudpickle
    from slurm.conftest import SlurmCluster  # type: ignore[import-not-found]
    from ssh_server import Sshd, ssh_opts  # type: ignore[import-not-found]

    from fs_task_queue.plugins import SSHQueue

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this script
    cluster = SlurmCluster()
    cluster.start()
    os.environ["SLURM_CONF"] = str(cluster.conf)
    tmp = Path(tempfile.mkdtemp(prefix="fsq-bench-slurm-"))
    sshd = None
    try:
        queue = Queue(tmp / "q")
        output = str(tmp / "slurm-%j.out")
        print(f"slurm: {cluster.run('sinfo', '-V').strip()}, one node, {cluster.cpus} CPUs")

        def one_worker(on: Queue) -> Callable[[], list[str]]:
            return lambda: submit_workers(on, 1, time="10:00", max_idle=1, output=output)

        to_task, calls = _submit_to_first_task(queue, one_worker(queue), args.rounds, cluster.jobs)
        print(_line("submit_workers() to the first task running", to_task))
        print(_line("  of which the submit_workers() call (sbatch)", calls))
        cluster.cancel_all()

        sshd = Sshd(tmp / "sshd", extra=(f"SetEnv SLURM_CONF={cluster.conf}",)).start()
        with SSHQueue(sshd.url(tmp / "q"), **ssh_opts(sshd, remote_python=sys.executable)) as remote:
            to_task, calls = _submit_to_first_task(remote, one_worker(remote), args.rounds, cluster.jobs)
        print(_line("through SSHQueue: submit_workers() to the first task running", to_task))
        print(_line("  of which the submit_workers() call (ssh exec of fs-task-queue slurm submit)", calls))
        cluster.cancel_all()

        if args.walltime:
            jobs = queue.map(one_second, range(args.walltime * 60 * 2))
            (job_id,) = submit_workers(queue, 1, time=str(args.walltime), max_idle=0, output=output)
            end = None
            while end is None:
                end = query_end_time(job_id) if cluster.job_state(job_id) == "RUNNING" else None
                time.sleep(0.2)
            while cluster.job_state(job_id) in ("PENDING", "RUNNING", "COMPLETING"):
                time.sleep(1)
            ran = sorted(j.result for j in jobs if j.get_status().value == "finished")
            first, last = ran[0][0], ran[-1]
            allocation = args.walltime * 60
            print(
                f"a {args.walltime} min job: {len(ran)} one-second tasks run; the last started"
                f" {end - last[0]:.1f} s before the job's end and ended {end - last[1]:.1f} s before it;"
                f" serving from the first task's start to the last one's end: {last[1] - first:.1f} s"
                f" = {100 * (last[1] - first) / allocation:.1f} % of the allocation;"
                f" {sum(1 for j in jobs if j.get_status().value == 'queued')} left queued, none lost"
            )
    finally:
        if sshd is not None:
            sshd.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
