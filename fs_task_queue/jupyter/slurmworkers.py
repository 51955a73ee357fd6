"""``%fsq workers --slurm N --time T``: SLURM worker jobs from a notebook, and a pool that follows its cells.

``%fsq workers --slurm 0`` cancels the queue's SLURM worker jobs.

Both go through :mod:`fs_task_queue.slurm`, which submits on this machine for
a local queue and on the queue's host for an ``ssh://`` one. After each
``%%fsq`` submission to a queue that has a pool (``--max``), :func:`follow_backlog`
asks the pool to scale to the new backlog, as ``fs-task-queue slurm scale`` does.
"""

from __future__ import annotations

from typing import Any

from fs_task_queue.queue import Queue
from fs_task_queue.slurm import POLICY_PATH, cancel_workers, scale, submit_workers

__all__ = ["SLURM_OPTIONS", "cancel", "follow_backlog", "submit"]

#: The ``%fsq workers`` options that belong to ``--slurm`` (their argparse ``dest`` names).
SLURM_OPTIONS = ("time", "partition", "account", "cpus_per_task", "mem", "max", "max_idle", "sbatch_arg", "dry_run")


def submit(queue: Queue, n: int, args: Any) -> str:
    """Submit ``n`` worker jobs with the options of ``%fsq workers --slurm``; what to print."""
    if args.time is None:
        raise ValueError("--slurm needs --time HH:MM:SS, each job's time limit (sbatch --time)")
    options: dict[str, Any] = {}
    if args.max_idle is not None:
        options["max_idle"] = args.max_idle
    ids = submit_workers(
        queue,
        n,
        time=args.time,
        partition=args.partition,
        account=args.account,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        sbatch_args=args.sbatch_arg or (),
        dry_run=args.dry_run,
        max_workers=args.max,
        **options,
    )
    if args.dry_run:
        return "fsq: nothing submitted (--dry-run)"
    pool = f"; the queue's pool is at most {args.max} worker jobs" if args.max else ""
    return f"fsq: submitted {len(ids)} SLURM worker job(s) for {queue.path}: {' '.join(ids)}{pool}"


def cancel(queue: Queue) -> str:
    """``%fsq workers --slurm 0``: cancel the queue's SLURM worker jobs; what to print."""
    ids = cancel_workers(queue)
    if not ids:
        return f"fsq: no SLURM worker jobs of {queue.path} to cancel"
    return f"fsq: canceled {len(ids)} SLURM worker job(s): {' '.join(ids)} (running tasks go back to the queue)"


def follow_backlog(queue: Queue) -> str | None:
    """If ``queue`` has a SLURM pool, submit workers for what waits now; a line to print when it did.

    Never raises: a submission that fails is said (the pool counts it and
    stops after a few), the task that was just submitted stays queued.
    """
    try:
        if not queue.storage.exists(POLICY_PATH):
            return None
        result = scale(queue)
    except Exception as exc:  # the cell's task is submitted: nothing here may fail it
        said = f"fsq: the SLURM pool submitted no worker: {exc}"
        # A stopped pool says so once, not after every cell.
        if _last_error.get(queue.path) == said:
            return None
        _last_error[queue.path] = said
        return said
    _last_error.pop(queue.path, None)
    if not result.submitted:
        return None
    return f"fsq: the SLURM pool submitted {len(result.submitted)} worker job(s): {' '.join(result.submitted)}"


#: The last failure said per queue path (see follow_backlog).
_last_error: dict[str, str] = {}
