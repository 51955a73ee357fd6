"""The command line: ``fs-task-queue`` (admin) and ``fs-task-queue-worker``.

``main(argv)`` returns an exit code; only the console-script wrappers exit.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import select
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from fs_task_queue._version import __version__
from fs_task_queue.errors import FSQError, QueueError
from fs_task_queue.queue import Queue
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.worker import Worker

__all__ = ["main", "worker_main"]


_Commands = argparse._SubParsersAction  # the type of add_subparsers()'s result


def _when(ts: float | None) -> str:
    from datetime import datetime  # 2 ms of import that a worker never needs

    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _size(text: str) -> int:
    """Parse 512M, 4G, 1000000 into bytes."""
    value = text.strip().upper().removesuffix("B")
    unit = value[-1] if value and value[-1] in _UNITS else ""
    try:
        return int(float(value[: len(value) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use a number with K, M, G or T, e.g. 4G") from None


def _age(text: str) -> float:
    """Parse 90s, 30m, 12h, 7d, 2w (or plain seconds) into seconds."""
    value = text.strip().lower()
    unit = value[-1] if value and value[-1] in _SECONDS else "s"
    try:
        return float(value.rstrip("smhdw") or "x") * _SECONDS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid age {text!r}: use a number with s, m, h, d or w, e.g. 7d") from None


def _add_worker_args(parser: argparse.ArgumentParser) -> None:
    _add_path(parser, "queue directory (a queue is created there if it is missing or empty)")
    parser.add_argument("--name", help="worker id (default: <host>-<pid>-<random>)")
    parser.add_argument("--burst", action="store_true", help="exit when no task is left")
    parser.add_argument("--max-jobs", type=_positive(int), metavar="N", help="exit after N jobs")
    parser.add_argument(
        "--max-idle", type=_positive(float), metavar="SECONDS", help="exit after this long without a task"
    )
    parser.add_argument(
        "--heartbeat-interval", type=_positive(float), default=30.0, metavar="SECONDS",
        help="how often to touch workers/<id> (default: 30)",
    )  # fmt: skip
    parser.add_argument(
        "--poll-interval", type=_positive(float), default=0.05, metavar="SECONDS",
        help="first polling delay where change notifications miss other hosts (default: 0.05)",
    )  # fmt: skip
    parser.add_argument(
        "--max-poll-interval", type=_positive(float), default=1.0, metavar="SECONDS",
        help="longest polling delay when idle (default: 1.0)",
    )  # fmt: skip
    parser.add_argument(
        "--isolation", choices=["process", "none"], default="process",
        help="run tasks in a task process that the worker watches and restarts if a task kills it"
        " (default), or in the worker itself",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=_positive(float), metavar="SECONDS", help="default per-task timeout (default: none)"
    )
    parser.add_argument(
        "--grace", type=_positive(float, zero=True), default=30.0, metavar="SECONDS",
        help="after SIGTERM/SIGINT/SIGUSR1, how long the running task may go on before it is killed"
        " and put back in the queue; a second signal ends it at once (default: 30)",
    )  # fmt: skip
    parser.add_argument(
        "--max-tasks-per-child", type=_positive(int), metavar="N", help="start a fresh task process every N tasks"
    )
    parser.add_argument("--memory-limit", type=_size, metavar="SIZE", help="cap a task's memory, e.g. 4G (RLIMIT_AS)")
    parser.add_argument(
        "--dead-after", type=_positive(float), default=120.0, metavar="SECONDS",
        help="a worker on another host whose heartbeat does not change for this long is presumed dead"
        " and its tasks re-queued (default: 120; keep it above heartbeat interval + cache + clock skew)",
    )  # fmt: skip
    parser.add_argument(
        "--max-lost", type=_positive(int), default=3, metavar="N",
        help="fail a task instead of re-queueing it once N workers died running it (default: 3)",
    )  # fmt: skip
    parser.add_argument(
        "--recover-interval", type=_positive(float), default=15.0, metavar="SECONDS",
        help="how often to look for dead workers (default: 15)",
    )  # fmt: skip
    parser.add_argument(
        "--parent-pid", type=int, metavar="PID",
        help="stop (as on SIGTERM) when process PID exits, however it ends: workers started by a notebook"
        " kernel go with it, even when it is killed",
    )  # fmt: skip
    parser.add_argument(
        "--dask", nargs="?", const="", metavar="SCHEDULER_ADDRESS",
        help="send the tasks to a dask cluster (DaskWorker) at this scheduler address; without one, dask's"
        " scheduler-address config, else a LocalCluster started here (needs pip install 'fs-task-queue[dask]')",
    )  # fmt: skip
    parser.add_argument(
        "--worker-class", metavar="MODULE.CLASS",
        help="the worker class to run, e.g. fs_task_queue.plugins.dask.DaskWorker (default: fs_task_queue.Worker)",
    )  # fmt: skip
    parser.add_argument(
        "--in-flight-per-thread", type=float, metavar="N",
        help="with --dask: claimed-but-unfinished tasks per dask thread (default: 2)",
    )  # fmt: skip
    parser.add_argument(
        "--walltime-check", type=_positive(float), metavar="SECONDS",
        help="in a SLURM job: how often to ask squeue when the job ends (default: 60)",
    )  # fmt: skip
    parser.add_argument(
        "--walltime-margin", type=_positive(float, zero=True), metavar="SECONDS",
        help="in a SLURM job: stop claiming this long before the job's end, and claim no task whose"
        " expected_duration ends later (default: 60, at most a quarter of the job's time)",
    )  # fmt: skip
    parser.add_argument(
        "--walltime-kill-margin", type=_positive(float, zero=True), metavar="SECONDS",
        help="in a SLURM job: put the running task back in the queue this long before the job's end (default: 10)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: INFO)"
    )


def _run_worker(args: argparse.Namespace) -> int:
    from fs_task_queue.worker import Worker

    if str(args.path).startswith("ssh://"):
        raise FSQError(
            f"workers do not run over SSH ({args.path}): they need the queue's filesystem for locks and"
            " task output. Start the worker on the machine that has the queue, with --path /the/directory"
        )
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    worker_class: type[Worker] = _worker_class(args)
    options: dict[str, Any] = dict(
        name=args.name,
        burst=args.burst,
        max_jobs=args.max_jobs,
        max_idle=args.max_idle,
        heartbeat_interval=args.heartbeat_interval,
        poll_interval=args.poll_interval,
        max_poll_interval=args.max_poll_interval,
        timeout=args.timeout,
        grace=args.grace,
        dead_after=args.dead_after,
        max_lost=args.max_lost,
        recover_interval=args.recover_interval,
    )
    if worker_class is Worker or args.isolation != "process":
        options.update(isolation=args.isolation)
    if args.max_tasks_per_child is not None or args.memory_limit is not None:
        options.update(max_tasks_per_child=args.max_tasks_per_child, memory_limit=args.memory_limit)
    if args.dask:
        options["address"] = args.dask
    if args.in_flight_per_thread is not None:
        options["in_flight_per_thread"] = args.in_flight_per_thread
    walltime_args = {
        k: v
        for k, v in (
            ("check_interval", args.walltime_check),
            ("margin", args.walltime_margin),
            ("kill_margin", args.walltime_kill_margin),
        )
        if v is not None
    }
    if walltime_args:
        from fs_task_queue.slurm import SlurmJob, Walltime

        job = SlurmJob.here()
        if job is None:
            raise ValueError("--walltime-* options apply to workers in a SLURM job (SLURM_JOB_ID is not set)")
        options["walltime"] = Walltime(job, **walltime_args)
    worker = worker_class(Queue(args.path), **options)
    if args.parent_pid is not None:
        _stop_with_parent(worker, args.parent_pid)
    worker.run()
    return 0


def _worker_class(args: argparse.Namespace) -> type[Worker]:
    """The class --worker-class or --dask names (default: Worker)."""
    import importlib

    from fs_task_queue.worker import Worker

    spec = args.worker_class
    if spec is None and args.dask is not None:
        spec = "fs_task_queue.plugins.dask.DaskWorker"
    if spec is None:
        if args.in_flight_per_thread is not None:
            raise ValueError("--in-flight-per-thread applies to dask workers: add --dask [SCHEDULER_ADDRESS]")
        return Worker
    module_name, _, class_name = spec.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name) if module_name else None
    except ImportError as exc:
        raise ValueError(f"--worker-class {spec}: cannot import {module_name} ({exc})") from None
    except AttributeError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Worker)):
        raise ValueError(
            f"--worker-class {spec}: not a worker class; give MODULE.CLASS of a subclass of fs_task_queue.Worker,"
            " e.g. fs_task_queue.plugins.dask.DaskWorker"
        )
    return cls


def _stop_with_parent(worker: Worker, pid: int) -> None:
    """Stop ``worker`` when process ``pid`` ends (a kernel SIGKILLed runs no exit handler of its own)."""
    try:
        # A pidfd names this very process, never a later one that reuses its pid.
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ValueError(f"--parent-pid {pid}: no such process (it has ended already)") from None
    except (AttributeError, OSError):  # no pidfd (old kernel): poll the pid
        fd = -1

    def watch() -> None:
        if fd >= 0:
            select.select([fd], [], [])  # readable when the process ends
            os.close(fd)
        else:
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass  # alive, someone else's
                time.sleep(0.5)
        worker.stop(f"parent process {pid} exited")

    threading.Thread(target=watch, name="fsq-parent-watch", daemon=True).start()


def _cmd_info(args: argparse.Namespace) -> int:
    from fs_task_queue.fsinfo import guarantee

    queue = Queue(args.path, create=False)
    stats = queue.stats()
    print(f"queue {queue.path}")
    if queue.storage.local_path("") is not None:
        print(f"guarantee: {guarantee(queue.path)}")
    else:  # the filesystem is the remote host's: only a look from there can tell
        print("guarantee: set by the remote host's filesystem; run `fs-task-queue info` there to see it")
    print("  " + "  ".join(f"{s.value}: {stats[s.value]}" for s in JobStatus))
    if stats.get("unreadable"):
        print(
            f"  unreadable results: {stats['unreadable']} (they fail verification: see 'fs-task-queue jobs';"
            " 'fs-task-queue purge' removes them)"
        )
    workers = queue.workers()
    print(f"workers: {len(workers)}")
    for w in workers:
        running = ", ".join(w.running) or "idle"
        slurm = ""
        if w.slurm_job_id:
            left = "-" if w.slurm_end_time is None else _duration(max(0.0, w.slurm_end_time - time.time()))
            slurm = f"  slurm job {w.slurm_job_id} ({w.partition or '-'}), {left} left"
        print(f"  {w.id}  host={w.host} pid={w.pid} heartbeat {_duration(w.heartbeat_age)} ago  {running}{slurm}")
        if w.mismatch:
            print(f"    environment differs from its submitter's: {w.mismatch}")
    _print_slurm_jobs(queue)
    if queue.storage.exists("slurm.json"):
        from fs_task_queue.slurm import read_policy

        policy = read_policy(queue)
        if policy is not None:
            print(policy.describe())
    _print_learned_durations(queue)
    failed = queue.jobs(JobStatus.FAILED)[-args.failures :] if args.failures else []
    if failed:
        print(f"recent failures (last {len(failed)}):")
        for job in failed:
            try:
                info = job.info()
            except (FSQError, OSError) as exc:  # one bad entry does not hide the others
                print(f"  {job.id}  error: {_message(exc)}")
                continue
            print(f"  {job.id}  {info.function}  {info.error}")
    return 0


def _print_slurm_jobs(queue: Queue) -> None:
    """Pending and running SLURM worker jobs (from the queue's records; pruned first where squeue runs)."""
    if not queue.storage.exists("slurm/jobs"):
        return
    from fs_task_queue.slurm import check_jobs, list_jobs

    if shutil.which("squeue"):  # a login node: records of ended jobs go, failed starts are named
        try:
            for line in check_jobs(queue):
                print(line)
        except (FSQError, OSError) as exc:
            print(f"  cannot compare the SLURM jobs with squeue: {exc}")
    jobs = [j for j in list_jobs(queue) if j.state != "ended"]
    if jobs:
        running = sum(j.state == "running" for j in jobs)
        print(f"SLURM jobs: {running} running, {len(jobs) - running} pending")
    for j in jobs:
        if j.state == "running":
            left = "-" if j.end_time is None else _duration(max(0.0, j.end_time - time.time()))
            print(f"  job {j.job_id} ({j.partition or '-'}) running: worker {j.worker_id}, {left} left")
        else:
            print(f"  job {j.job_id} ({j.partition or '-'}) pending for {_duration(time.time() - j.submitted)}")


def _print_learned_durations(queue: Queue) -> None:
    from fs_task_queue.durations import DURATIONS, learned_durations

    if not queue.storage.exists(DURATIONS):
        return
    estimates = learned_durations(queue)
    if estimates:
        print("learned run times (the longest of the recent runs, for SLURM workers' claims):")
    for e in estimates[:10]:
        print(f"  {e.key}: up to {_duration(e.high)} ({e.runs} run(s))")


def _cmd_jobs(args: argparse.Namespace) -> int:
    queue = Queue(args.path, create=False)
    jobs = queue.jobs(args.status)
    if args.limit:
        jobs = jobs[-args.limit :]
    bad = 0
    for job in jobs:
        try:
            info = job.info()
        except (FSQError, OSError) as exc:  # a job whose files vanished meanwhile, say: report it, go on
            bad += 1
            print(f"{job.id}  {'error':<8}  {'-':>8}  {_message(exc)}")
            continue
        if info.status == "unreadable":
            bad += 1
            print(f"{job.id}  {info.status:<8}  {'-':>8}  {info.error}")
            continue
        took = info.ended_at - info.started_at if info.ended_at and info.started_at else None
        print(f"{job.id}  {info.status:<8}  {_duration(took):>8}  {info.function or '-'}")
    if bad:
        print(f"fs-task-queue: {bad} job(s) above could not be read (see their lines)", file=sys.stderr)
        return 1
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
    if info.status == "unreadable":
        print(f"problem   {info.error}")
    outcome = job._load_outcome() if info.status != "unreadable" else None
    if outcome is not None:
        error = outcome.error()
        if error is None:
            print(f"result    {outcome.value()!r}"[:2000])
        else:
            tb = (outcome.header.get("error") or {}).get("traceback")
            kind = getattr(error, "remote_type", None) or type(error).__name__
            print(f"error     {kind}: {getattr(error, 'remote_message', None) or getattr(error, 'message', error)}")
            if tb:
                print(tb.rstrip())
    for name, text in (("stdout", job.stdout), ("stderr", job.stderr)):
        if text:
            lines = text.splitlines()[-args.tail :]
            print(f"--- {name} (last {len(lines)} lines) ---")
            print("\n".join(lines))
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    from fs_task_queue.maintenance import fail_orphans
    from fs_task_queue.queue import Claimer, default_worker_id
    from fs_task_queue.recovery import Recoverer

    queue = Queue(args.path, create=False)
    claimer = Claimer(queue, "recover-" + default_worker_id())
    claimer.register()
    try:
        # One look, so remote heartbeats are judged by their age on this clock.
        recovered = Recoverer(
            queue, claimer.worker_id, dead_after=args.dead_after, max_lost=args.max_lost, wall_clock=True
        ).run_once()
    finally:
        claimer.close()
    print(f"recovered {len(recovered)} job(s) from dead workers" + (": " + " ".join(recovered) if recovered else ""))
    for note in fail_orphans(queue).notes:
        print(note)
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    from fs_task_queue.maintenance import purge

    queue = Queue(args.path, create=False)
    statuses = {JobStatus(s) for s in args.status} if args.status else None
    purged = purge(queue, args.older_than, statuses)
    print(f"purged {len(purged)} job(s)")
    for note in purged.notes:
        print(note)
    return 0


def _cmd_requeue(args: argparse.Namespace) -> int:
    from fs_task_queue.maintenance import requeue_failed

    if not args.all and not args.job_ids:
        print("fs-task-queue: error: name failed job ids to requeue, or pass --all", file=sys.stderr)
        return 2
    queue = Queue(args.path, create=False)
    done = requeue_failed(queue, None if args.all else args.job_ids)
    print(f"requeued {len(done)} job(s)" + (": " + " ".join(done) if done else ""))
    for note in done.notes:
        print(note)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    queue = Queue(args.path, create=False)
    for job_id in args.job_ids:
        job = queue.job(job_id)
        print(f"{job_id}: {'canceled' if job.cancel() else 'already ' + job.get_status().value}")
    return 0


def _cmd_stop_worker(args: argparse.Namespace) -> int:
    from fs_task_queue.maintenance import stop_worker

    queue = Queue(args.path, create=False)
    for worker_id in args.worker_ids:
        if stop_worker(queue, worker_id):
            print(f"{worker_id}: heartbeat file deleted; it stops after its current task")
        else:
            print(f"{worker_id}: already stopping (its heartbeat file is gone)")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from fs_task_queue.maintenance import sweep_tmp

    removed = sweep_tmp(Queue(args.path, create=False), args.older_than)
    print(f"removed {removed} stale temporary file(s)")
    return 0


def _cmd_create(args: argparse.Namespace) -> int:
    queue = Queue(args.path, shared=args.shared)
    shared = queue.shared
    if shared != args.shared:  # it was there already, made the other way
        raise QueueError(
            f"{queue.path} is already a {'shared' if shared else 'private'} queue: whether a queue is shared"
            f" is set when it is made. Fix: use it as it is, or create a new queue{' with --shared' * args.shared}"
            " in another directory"
        )
    print(f"queue {queue.path} ({'shared with its group' if shared else 'private'})")
    return 0


def _cmd_import_019(args: argparse.Namespace) -> int:
    from fs_task_queue.legacy import import_019

    report = import_019(args.old, args.new)
    print(f"imported {len(report.imported)} task(s) into {args.new}" + "".join(f"\n  {i}" for i in report.imported))
    if report.started:
        print(f"left {report.started} started task(s) alone: a 0.1.9 worker took them (see {args.old}/started)")
    for job_id, why in report.skipped:
        print(f"fs-task-queue: not imported: {job_id}: {why} (left in {args.old}/queued)", file=sys.stderr)
    return 1 if report.skipped else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fs_task_queue.demo import run_demo

    return run_demo(tasks=args.tasks, workers=args.workers)


def _cmd_slurm_submit(args: argparse.Namespace) -> int:
    # A queue that exists, so a typo is not served by a fresh one; an ssh:// queue is submitted to there.
    queue = Queue(args.path, create=False) if not args.dry_run or "://" in args.path else None
    with contextlib.closing(queue) if queue is not None else contextlib.nullcontext():
        ids = _submit(args, args.path if queue is None else queue)
    if args.json:
        print(json.dumps({"job_ids": ids}))
    elif ids:
        print(f"submitted {len(ids)} worker job(s): {' '.join(ids)}")
    return 0


def _submit(args: argparse.Namespace, queue: str | Queue) -> list[str]:
    from fs_task_queue.slurm import submit_workers

    return submit_workers(
        queue,
        args.n,
        time=args.time,
        partition=args.partition,
        account=args.account,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        array=args.array,
        output=args.output,
        sbatch_args=args.sbatch_arg or (),
        worker_args=args.worker_arg or (),
        dry_run=args.dry_run,
        max_idle=args.max_idle,
        max_workers=args.max,
        max_pending=args.max_pending,
        max_per_minute=args.max_per_minute,
    )


def _cmd_slurm_scale(args: argparse.Namespace) -> int:
    from fs_task_queue.slurm import scale

    with Queue(args.path, create=False) as queue:  # closed: an ssh:// one holds a connection
        result = scale(queue, max_workers=args.max, max_pending=args.max_pending, max_per_minute=args.max_per_minute)
    print(json.dumps({"job_ids": result.submitted, "message": result.message}) if args.json else result.message)
    return 0


def _cmd_slurm_cancel(args: argparse.Namespace) -> int:
    from fs_task_queue.slurm import cancel_workers

    with Queue(args.path, create=False) as queue:
        ids = cancel_workers(queue, pending_only=args.pending)
    if args.json:
        print(json.dumps({"job_ids": ids}))
    else:
        print(f"canceled {len(ids)} worker job(s)" + (f": {' '.join(ids)}" if ids else ""))
    return 0


def _add_pool_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max", type=_positive(int), metavar="N",
        help="pool size: at most N worker jobs running or pending (recorded in the queue; scale and workers"
        " nearing their limit submit more up to it)",
    )  # fmt: skip
    p.add_argument(
        "--max-pending", type=_positive(int), metavar="N", help="at most N pool jobs pending (default: --max)"
    )
    p.add_argument(
        "--max-per-minute", type=_positive(int), metavar="N", help="at most N submissions a minute (default: 10)"
    )


def _add_slurm(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("slurm", help="run workers as SLURM batch jobs", description=(
        "Submit workers as SLURM batch jobs (see docs/slurm.md)."))  # fmt: skip
    actions = p.add_subparsers(dest="slurm_command", required=True, metavar="ACTION")
    s = actions.add_parser("submit", help="submit worker jobs with sbatch", description=(
        "Submit N SLURM jobs, each one worker serving the queue. The worker replaces the batch"
        " script's shell (exec), runs this Python, stops claiming before the job's time limit and"
        " puts its running task back in the queue before SLURM kills it."))  # fmt: skip
    _add_path(s, "queue directory (it must exist)")
    s.add_argument("-n", type=_positive(int), default=1, metavar="N", help="number of worker jobs (default: 1)")
    s.add_argument("--time", required=True, metavar="HH:MM:SS", help="each job's time limit (sbatch --time)")
    s.add_argument("--partition", help="sbatch --partition")
    s.add_argument("--account", help="sbatch --account")
    s.add_argument("--cpus-per-task", type=_positive(int), metavar="N", help="sbatch --cpus-per-task")
    s.add_argument("--mem", metavar="SIZE", help="sbatch --mem, e.g. 4G")
    s.add_argument("--array", metavar="SPEC", help="sbatch --array, e.g. 0-7 (each array task is a worker)")
    s.add_argument("--output", metavar="FILE", help="sbatch --output (default: slurm-%%j.out here)")
    s.add_argument(
        "--sbatch-arg", action="append", metavar="ARG",
        help="one more argument for sbatch, as it is (repeatable), e.g. --sbatch-arg=--qos=short",
    )  # fmt: skip
    s.add_argument(
        "--worker-arg", action="append", metavar="ARG",
        help="one more argument for the worker (repeatable), e.g. --worker-arg=--max-idle=300",
    )  # fmt: skip
    s.add_argument(
        "--max-idle", type=_positive(float, zero=True), default=300.0, metavar="SECONDS",
        help="a worker with nothing to do for this long ends, and its job with it (default: 300; 0: never)",
    )  # fmt: skip
    _add_pool_options(s)
    s.add_argument("--dry-run", action="store_true", help="print the sbatch command and batch script; submit nothing")
    _add_json(s)
    s.set_defaults(func=_cmd_slurm_submit)
    c = actions.add_parser("scale", help="submit workers while tasks wait, up to the pool size", description=(
        "Submit pool workers (the sbatch options recorded by `slurm submit --max N`) while tasks wait and"
        " fewer workers than needed are running or pending, within the caps. Run it now and then (cron,"
        " a notebook); workers nearing their limit submit their successors themselves."))  # fmt: skip
    _add_path(c, "queue directory (it must exist)")
    _add_pool_options(c)
    _add_json(c)
    c.set_defaults(func=_cmd_slurm_scale)
    k = actions.add_parser("cancel", help="scancel the queue's worker jobs", description=(
        "Cancel the SLURM worker jobs of the queue (pending ones, and running ones, which put their"
        " running task back in the queue first). A pool stays set: `slurm scale` submits again while"
        " tasks wait."))  # fmt: skip
    _add_path(k, "queue directory")
    k.add_argument("--pending", action="store_true", help="only the jobs that have not started")
    _add_json(k)
    k.set_defaults(func=_cmd_slurm_cancel)


def _add_json(p: argparse.ArgumentParser) -> None:
    # What SSHQueue reads when it runs this command on the cluster for a laptop.
    p.add_argument("--json", action="store_true", help="print the submitted job ids (and message) as JSON")


def _add_path(p: argparse.ArgumentParser, text: str = "queue directory, or ssh://[user@]host[:port]/path") -> None:
    # Positional, or --path as the worker takes it: both work everywhere.
    p.add_argument("path", nargs="?", help=text)
    p.add_argument("--path", dest="path_option", metavar="PATH", help="the same, as an option")


def _resolve_path(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set ``args.path`` from the positional path or ``--path`` (a command's usage error if neither, or both)."""
    option = getattr(args, "path_option", None)
    dask = getattr(args, "dask", None)
    if option is None and getattr(args, "path", "") is None and dask and ":" not in dask:
        # `worker --dask /scratch/q`: --dask's optional address took the queue's path
        # (scheduler addresses have a port or a scheme: tcp://host:8786, host:8786).
        args.path, args.dask = dask, ""
    if option is None:
        if getattr(args, "path", "") is None:
            parser.error("give the queue directory: PATH or --path PATH")
        return
    if args.path is not None:
        # With --path, what argparse took for the path is the first of the command's other names.
        for many in ("job_ids", "worker_ids"):
            if isinstance(getattr(args, many, None), list):
                getattr(args, many).insert(0, args.path)
                break
        else:
            if args.path != option:
                parser.error(
                    f"the queue directory was given twice, differently ({args.path} and --path {option}): give it once"
                )
    args.path = option


def _positive(kind: type[int] | type[float], *, zero: bool = False) -> Any:
    """An argparse type: a number > 0 (>= 0 with ``zero``), with an error that says so."""
    least = ">= 0" if zero else "> 0"
    noun = "whole number" if kind is int else "number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {noun} {text!r}") from None
        if not (value >= 0 if zero else value > 0) or value != value:
            raise argparse.ArgumentTypeError(f"{text} is not allowed: use a {noun} {least}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _add_info(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("info", help="counts per state, workers, recent failures", description=(
        "Show how many jobs are queued, started, finished, failed and canceled, the workers"
        " with the age of their heartbeat and what they run, and the most recent failures."))  # fmt: skip
    _add_path(p)
    p.add_argument(
        "--failures",
        type=_positive(int, zero=True),
        default=5,
        metavar="N",
        help="recent failures to list (default: 5)",
    )
    p.set_defaults(func=_cmd_info)


def _add_jobs(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("jobs", help="list jobs", description="List jobs oldest first: id, status, run time, function.")
    _add_path(p)
    p.add_argument("--status", choices=[s.value for s in JobStatus], help="only jobs in this state")
    p.add_argument("--limit", type=_positive(int), metavar="N", help="only the last N")
    p.set_defaults(func=_cmd_jobs)


def _add_show(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("show", help="one job in detail", description=(
        "Show one job: status, times, worker, progress, its result or remote traceback,"
        " and the end of its stdout and stderr."))  # fmt: skip
    _add_path(p)
    p.add_argument("job_id", help="the job's id (see 'fs-task-queue jobs')")
    p.add_argument(
        "--tail", type=_positive(int, zero=True), default=20, metavar="N", help="log lines to show (default: 20)"
    )
    p.set_defaults(func=_cmd_show)


def _add_worker(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="run a worker (same as fs-task-queue-worker)", description=(
        "Claim and run tasks from the queue until stopped (Ctrl-C, SIGTERM, SIGUSR1, or"
        " deleting workers/<id>). A running task gets --grace seconds to finish; after that (or"
        " a second signal) it is killed and put back in the queue."))  # fmt: skip
    _add_worker_args(p)
    p.set_defaults(func=_run_worker)


def _add_recover(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("recover", help="re-queue tasks of dead workers now", description=(
        "Look once for workers that died holding tasks and re-queue those tasks (or fail them after"
        " --max-lost deaths). Same-host workers are checked exactly through their lock; workers on"
        " other hosts count as dead when their heartbeat is older than --dead-after. Running"
        " workers do this by themselves every --recover-interval seconds."))  # fmt: skip
    _add_path(p)
    p.add_argument(
        "--dead-after", type=_age, default=120.0, metavar="AGE", help="heartbeat age that means dead (default: 120s)"
    )
    p.add_argument(
        "--max-lost", type=_positive(int), default=3, metavar="N", help="deaths before a task is failed (default: 3)"
    )
    p.set_defaults(func=_cmd_recover)


def _add_purge(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("purge", help="delete old finished/failed/canceled jobs", description=(
        "Delete the results, logs and kept task files of done jobs older than --older-than."))  # fmt: skip
    _add_path(p)
    p.add_argument("--older-than", type=_age, required=True, metavar="AGE", help="e.g. 7d, 12h, 30m")
    p.add_argument(
        "--status", action="append", choices=["finished", "failed", "canceled"], help="only these (repeatable)"
    )
    p.set_defaults(func=_cmd_purge)


def _add_requeue(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("requeue", help="run failed jobs again", description=(
        "Put failed jobs back in the queue with fresh attempt counts (their history is kept)."))  # fmt: skip
    _add_path(p)
    p.add_argument("job_ids", nargs="*", metavar="JOB", help="failed job ids")
    p.add_argument("--all", action="store_true", help="requeue every failed job")
    p.set_defaults(func=_cmd_requeue)


def _add_cancel(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cancel", help="cancel jobs", description=(
        "Cancel queued or running jobs: a queued job never starts; a running one is killed within"
        " about a second by its worker."))  # fmt: skip
    _add_path(p)
    p.add_argument("job_ids", nargs="+", metavar="JOB", help="job ids")
    p.set_defaults(func=_cmd_cancel)


def _add_stop_worker(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stop-worker", help="stop workers after their current task", description=(
        "Delete the heartbeat file workers/<id>; the worker stops claiming, lets its current task"
        " finish (within its --grace) and exits."))  # fmt: skip
    _add_path(p)
    p.add_argument("worker_ids", nargs="+", metavar="WORKER", help="worker ids (see 'fs-task-queue info')")
    p.set_defaults(func=_cmd_stop_worker)


def _add_sweep(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sweep", help="delete temporary files left by killed writers", description=(
        "Delete files in tmp/ older than --older-than: partial submissions of clients killed"
        " mid-write. They were never visible as tasks. Workers also do this every 10 minutes."))  # fmt: skip
    _add_path(p)
    p.add_argument("--older-than", type=_age, default=3600.0, metavar="AGE", help="(default: 1h)")
    p.set_defaults(func=_cmd_sweep)


def _add_serve_stdio(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve-stdio", help="serve a queue to an SSH client on stdin/stdout (started by SSHQueue)",
        description="The remote end of SSHQueue's helper mode: JSON requests on stdin, replies on stdout.")  # fmt: skip
    p.add_argument("path", help="queue directory (on this machine)")
    p.set_defaults(func=lambda args: __import__("fs_task_queue.serve_stdio").serve_stdio.serve(args.path))


def _add_create(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("create", help="create a queue", description=(
        "Create a queue in PATH (a missing or empty directory; private unless --shared). Nothing is made"
        " in a directory others can write to or that holds other files. A queue already there is left as"
        " it is. Workers and Queue(PATH) create a missing queue too."))  # fmt: skip
    _add_path(p)
    p.add_argument(
        "--shared", action="store_true",
        help="usable by the members of the directory's group (files group-writable, folders setgid)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_create)


def _add_import_019(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("import-0.1.9", help="move the waiting tasks of a 0.1.9 queue into a queue", description=(
        "Enqueue each task waiting in OLD, a queue of fs-task-queue 0.1.9 that you own, into NEW (created"
        " if missing), as a call of the same function by name with the same arguments and job id. Nothing"
        " is run or imported while importing. A task leaves OLD's queued/ once it is written into NEW"
        " (its tasks/ file stays); started, finished and failed tasks are left alone. Stop OLD's"
        " workers first."))  # fmt: skip
    p.add_argument("old", metavar="OLD", help="the 0.1.9 queue directory")
    p.add_argument("new", metavar="NEW", help="the queue to import into")
    p.set_defaults(func=_cmd_import_019)


def _add_demo(sub: _Commands[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run a small end-to-end demo", description=(
        "Create a temporary queue, start real worker processes, submit tasks (a lambda, a"
        " failure, one with progress), print results and timings, stop the workers."))  # fmt: skip
    p.add_argument("--tasks", type=_positive(int), default=20, help="number of tasks (default: 20)")
    p.add_argument("--workers", type=_positive(int), default=2, help="number of worker processes (default: 2)")
    p.set_defaults(func=_cmd_demo)


_COMMANDS = {
    "info": _add_info,
    "jobs": _add_jobs,
    "show": _add_show,
    "worker": _add_worker,
    "create": _add_create,
    "import-0.1.9": _add_import_019,
    "recover": _add_recover,
    "purge": _add_purge,
    "requeue": _add_requeue,
    "cancel": _add_cancel,
    "stop-worker": _add_stop_worker,
    "sweep": _add_sweep,
    "demo": _add_demo,
    "serve-stdio": _add_serve_stdio,
    "slurm": _add_slurm,
}


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with ``only``, just that command's (building all costs ~12 ms per worker start)."""
    parser = argparse.ArgumentParser(
        prog="fs-task-queue",
        description="Inspect and run fs-task-queue queues: a task queue kept in a directory.",
        epilog="Run 'fs-task-queue COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"fs-task-queue {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in _COMMANDS.items():
        if only is None or name == only:
            add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the admin CLI; return the exit code."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    # The command is the first argument (the top level takes only --help and --version).
    command = args_list[0] if args_list and args_list[0] in _COMMANDS else None
    parser = _parser(command)
    args, extra = parser.parse_known_args(args_list)
    # A usage error in a command is shown with that command's usage, not the top level's.
    sub = _command_parser(parser, args)
    if extra:
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    _resolve_path(sub, args)
    try:
        return int(args.func(args))
    except BrokenPipeError as exc:
        if not _stdout_closed():
            print(f"fs-task-queue: error: {exc}", file=sys.stderr)
            return 1
        return 128 + 13  # the reader left (`fs-task-queue jobs Q | head`): stop quietly, as on SIGPIPE
    except (FSQError, ValueError, OSError) as exc:
        print(f"fs-task-queue: error: {_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _message(exc: BaseException) -> str:
    """An error as the command line says it: with the command-line fix where the message has a Python one."""
    return exc.for_cli() if isinstance(exc, FSQError) else str(exc)


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that ``args`` runs (``slurm submit``'s own, for instance)."""
    for dest in ("command", "slurm_command"):
        name = getattr(args, dest, None)
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if name is None or not actions:
            break
        parser = actions[0].choices[name]
    return parser


def _stdout_closed() -> bool:
    """Whether standard output's reader went away; if so, later writes to it go nowhere."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        # The write end of a pipe without readers polls as an error.
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        # Point the descriptor at /dev/null so the exit-time flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError):
        return False
    return True


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Run ``fs-task-queue-worker``; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="fs-task-queue-worker",
        description="Claim and run tasks from an fs-task-queue queue until stopped.",
    )
    _add_worker_args(parser)
    args = parser.parse_args(argv)
    _resolve_path(parser, args)
    try:
        return _run_worker(args)
    except (FSQError, ValueError, OSError) as exc:
        print(f"fs-task-queue-worker: error: {_message(exc)}", file=sys.stderr)
        return 1


def _leave(code: int) -> NoReturn:
    """Exit with ``code``, skipping the interpreter's teardown where that is safe.

    Tearing down a worker's interpreter (every module and object) takes about
    30 ms, a sixth of a short-lived worker's whole run. Exit handlers still run
    and output is flushed; with another thread alive (a task may have left one)
    the exit is the normal one, which waits for it.
    """
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()  # logging.shutdown and anything else registered
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe or stream: nothing more can be said on it
    os._exit(code)


def _exit_main() -> None:
    _leave(main())


def _exit_worker_main() -> None:
    _leave(worker_main())
