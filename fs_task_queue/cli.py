"""The command line: ``fs-task-queue`` (admin) and ``fs-task-queue-worker``.

``main(argv)`` returns an exit code; only the console-script wrappers exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import datetime

from fs_task_queue._version import __version__
from fs_task_queue.errors import FSQError
from fs_task_queue.queue import Queue
from fs_task_queue.status import JobStatus

__all__ = ["main", "worker_main"]


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _add_worker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", required=True, help="queue directory (created if missing)")
    parser.add_argument("--name", help="worker id (default: <host>-<pid>-<random>)")
    parser.add_argument("--burst", action="store_true", help="exit when no task is left")
    parser.add_argument("--max-jobs", type=int, metavar="N", help="exit after N jobs")
    parser.add_argument("--max-idle", type=float, metavar="SECONDS", help="exit after this long without a task")
    parser.add_argument(
        "--heartbeat-interval", type=float, default=30.0, metavar="SECONDS",
        help="how often to touch workers/<id> (default: 30)",
    )  # fmt: skip
    parser.add_argument(
        "--poll-interval", type=float, default=0.05, metavar="SECONDS",
        help="first polling delay where change notifications miss other hosts (default: 0.05)",
    )  # fmt: skip
    parser.add_argument(
        "--max-poll-interval", type=float, default=1.0, metavar="SECONDS",
        help="longest polling delay when idle (default: 1.0)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: INFO)"
    )


def _run_worker(args: argparse.Namespace) -> int:
    from fs_task_queue.worker import Worker

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    worker = Worker(
        Queue(args.path),
        name=args.name,
        burst=args.burst,
        max_jobs=args.max_jobs,
        max_idle=args.max_idle,
        heartbeat_interval=args.heartbeat_interval,
        poll_interval=args.poll_interval,
        max_poll_interval=args.max_poll_interval,
    )
    worker.run()
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    queue = Queue(args.path, create=False)
    stats = queue.stats()
    print(f"queue {queue.path}")
    print("  " + "  ".join(f"{s.value}: {stats[s.value]}" for s in JobStatus))
    workers = queue.workers()
    print(f"workers: {len(workers)}")
    for w in workers:
        running = ", ".join(w.running) or "idle"
        print(f"  {w.id}  host={w.host} pid={w.pid} heartbeat {_duration(w.heartbeat_age)} ago  {running}")
    failed = queue.jobs(JobStatus.FAILED)[-args.failures :] if args.failures else []
    if failed:
        print(f"recent failures (last {len(failed)}):")
        for job in failed:
            info = job.info()
            print(f"  {job.id}  {info.function}  {info.error}")
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    queue = Queue(args.path, create=False)
    jobs = queue.jobs(args.status)
    if args.limit:
        jobs = jobs[-args.limit :]
    for job in jobs:
        info = job.info()
        took = info.ended_at - info.started_at if info.ended_at and info.started_at else None
        print(f"{job.id}  {info.status:<8}  {_duration(took):>8}  {info.function or '-'}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    queue = Queue(args.path, create=False)
    job = queue.job(args.job_id)
    info = job.info()
    print(f"job       {job.id}")
    print(f"status    {info.status}")
    print(f"function  {info.function}")
    print(f"enqueued  {_when(info.enqueued_at)}")
    print(f"started   {_when(info.started_at)}")
    print(f"ended     {_when(info.ended_at)}")
    print(f"worker    {info.worker or '-'}  host {info.host or '-'}")
    if info.metadata:
        print(f"metadata  {info.metadata}")
    prog = job.progress
    if prog is not None:
        total = f"/{prog.total:g}" if prog.total else ""
        print(f"progress  {prog.done:g}{total}  {prog.message or ''}")
    outcome = job._load_outcome()
    if outcome is not None:
        error = outcome.error()
        if error is None:
            print(f"result    {outcome.value()!r}"[:2000])
        else:
            tb = (outcome.header.get("error") or {}).get("traceback")
            print(f"error     {type(error).__name__}: {getattr(error, 'message', error)}")
            if tb:
                print(tb.rstrip())
    for name, text in (("stdout", job.stdout), ("stderr", job.stderr)):
        if text:
            lines = text.splitlines()[-args.tail :]
            print(f"--- {name} (last {len(lines)} lines) ---")
            print("\n".join(lines))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fs_task_queue.demo import run_demo

    return run_demo(tasks=args.tasks, workers=args.workers)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fs-task-queue",
        description="Inspect and run fs-task-queue queues: a task queue kept in a directory.",
        epilog="Run 'fs-task-queue COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"fs-task-queue {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="counts per state, workers, recent failures", description=(
        "Show how many jobs are queued, started, finished, failed and canceled, the workers"
        " with the age of their heartbeat and what they run, and the most recent failures."))  # fmt: skip
    p.add_argument("path", help="queue directory")
    p.add_argument("--failures", type=int, default=5, metavar="N", help="recent failures to list (default: 5)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("jobs", help="list jobs", description="List jobs oldest first: id, status, run time, function.")
    p.add_argument("path", help="queue directory")
    p.add_argument("--status", choices=[s.value for s in JobStatus], help="only jobs in this state")
    p.add_argument("--limit", type=int, metavar="N", help="only the last N")
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("show", help="one job in detail", description=(
        "Show one job: status, times, worker, progress, its result or remote traceback,"
        " and the end of its stdout and stderr."))  # fmt: skip
    p.add_argument("path", help="queue directory")
    p.add_argument("job_id", help="the job's id (see 'fs-task-queue jobs')")
    p.add_argument("--tail", type=int, default=20, metavar="N", help="log lines to show (default: 20)")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("worker", help="run a worker (same as fs-task-queue-worker)", description=(
        "Claim and run tasks from the queue until stopped (Ctrl-C, SIGTERM, or deleting"
        " workers/<id>). The running task always finishes first."))  # fmt: skip
    _add_worker_args(p)
    p.set_defaults(func=_run_worker)

    p = sub.add_parser("demo", help="run a small end-to-end demo", description=(
        "Create a temporary queue, start real worker processes, submit tasks (a lambda, a"
        " failure, one with progress), print results and timings, stop the workers."))  # fmt: skip
    p.add_argument("--tasks", type=int, default=20, help="number of tasks (default: 20)")
    p.add_argument("--workers", type=int, default=2, help="number of worker processes (default: 2)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the admin CLI; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (FSQError, ValueError, OSError) as exc:
        print(f"fs-task-queue: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Run ``fs-task-queue-worker``; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="fs-task-queue-worker",
        description="Claim and run tasks from an fs-task-queue queue until stopped.",
    )
    _add_worker_args(parser)
    args = parser.parse_args(argv)
    try:
        return _run_worker(args)
    except (FSQError, ValueError, OSError) as exc:
        print(f"fs-task-queue-worker: error: {exc}", file=sys.stderr)
        return 1


def _exit_main() -> None:
    sys.exit(main())


def _exit_worker_main() -> None:
    sys.exit(worker_main())
