"""Workers as SLURM batch jobs: submitting them, and their walltime once running.

Submitting (:func:`submit_workers`, ``fs-task-queue slurm submit``): each job's
batch script is generated here and handed to ``sbatch`` on its standard input,
with every sbatch option as a separate argument (no shell string is ever built
from what the user typed). The script's one command ``exec``\\ s the worker, so
the worker *is* the batch script's process: SLURM's signals (``scancel``, the
time limit, ``--signal=B:...``) reach it, and under ``proctrack/linuxproc`` no
worker can outlive its job as an orphan of a batch shell. It runs the
submitter's own Python (``sys.executable``) and says in its log and its
``workers/<id>`` record if its Python or fs-task-queue version differs from the
submitter's.

Walltime (:class:`Walltime`): SLURM 22.05 gives a job no variable with its end
time, so a worker asks ``squeue`` (``SLURM_TIME_FORMAT=%s squeue -h -j
$SLURM_JOB_ID -o %e``) and asks again now and then, since ``scontrol update``
moves it. The worker claims no task whose ``expected_duration`` would not end
``margin`` seconds before the end, stops claiming at all at that point, and puts
its running task back in the queue ``kill_margin`` seconds before the end:
SLURM's kill comes on a 30 s tick at or after the end time, never before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from fs_task_queue._version import __version__
from fs_task_queue.errors import SlurmError

if TYPE_CHECKING:
    from fs_task_queue.progress import WorkerInfo
    from fs_task_queue.queue import Queue

__all__ = [
    "POLICY_PATH",
    "PoolPolicy",
    "ScaleResult",
    "SlurmJob",
    "SlurmJobStatus",
    "SubmitOptions",
    "Walltime",
    "batch_script",
    "cancel_workers",
    "check_jobs",
    "list_jobs",
    "mark_started",
    "record_jobs",
    "reconcile_jobs",
    "read_policy",
    "sbatch_argv",
    "scale",
    "submit_successor",
    "submit_workers",
    "write_policy",
]

log = logging.getLogger("fs_task_queue.worker")

#: Seconds an idle SLURM worker waits for work before it ends (its job ends with it).
DEFAULT_MAX_IDLE = 300.0

#: Environment variables the generated script sets so a worker can compare its Python and version.
SUBMIT_PYTHON_ENV = "FSQ_SUBMIT_PYTHON"
SUBMIT_VERSION_ENV = "FSQ_SUBMIT_VERSION"

# SLURM's time formats: minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
# Memory: a number with an optional K/M/G/T unit.
_MEM = re.compile(r"^\d+[KMGTkmgt]?$")
# Array: 0-3, 1,3,5, 0-15:4, 0-99%10.
_ARRAY = re.compile(r"^[\d,\-:]+(%\d+)?$")
# Partition and account names go to sbatch as arguments; still refuse what no site uses.
_NAME = re.compile(r"^[A-Za-z0-9_.,\-]+$")


@dataclass
class SubmitOptions:
    """What :func:`submit_workers` asks of sbatch and of the workers (see its docstring)."""

    time: str
    partition: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    array: str | None = None
    job_name: str = "fsq-worker"
    output: str | None = None
    sbatch_args: Sequence[str] = ()
    worker_args: Sequence[str] = ()
    python: str = field(default_factory=lambda: sys.executable)
    max_idle: float | None = DEFAULT_MAX_IDLE
    dependency: str | None = None

    def check(self) -> None:
        problems = []
        if not _TIME.match(self.time):
            problems.append(f"time {self.time!r} is not a SLURM time: use HH:MM:SS, MM:SS, D-HH:MM:SS or minutes")
        for what, value in (("partition", self.partition), ("account", self.account)):
            if value is not None and not _NAME.match(value):
                problems.append(f"{what} {value!r}: use letters, digits, '_', '-', '.' or ','")
        if self.cpus_per_task is not None and (not isinstance(self.cpus_per_task, int) or self.cpus_per_task < 1):
            problems.append(f"cpus_per_task must be a whole number >= 1, not {self.cpus_per_task!r}")
        if self.mem is not None and not _MEM.match(self.mem):
            problems.append(f"mem {self.mem!r}: use a number with K, M, G or T, e.g. 4G")
        if self.array is not None and not _ARRAY.match(self.array):
            problems.append(f"array {self.array!r}: use SLURM's syntax, e.g. 0-7 or 0-99%10")
        if not os.path.isabs(self.python):
            problems.append(f"python {self.python!r} must be an absolute path (the job runs in another shell)")
        if problems:
            raise ValueError("; ".join(problems))


def batch_script(queue_path: str | os.PathLike[str], options: SubmitOptions) -> str:
    """The batch script of one worker job: the worker replaces the script's shell (``exec``)."""
    options.check()
    argv = [options.python, "-m", "fs_task_queue", "worker", "--path", os.path.abspath(os.fspath(queue_path))]
    argv += list(options.worker_args)
    if options.max_idle is not None and not any(a.split("=")[0] == "--max-idle" for a in options.worker_args):
        # An idle worker ends, so an empty queue costs no allocation (the pool submits more when work comes).
        argv += ["--max-idle", f"{options.max_idle:g}"]
    python = sys.version.split()[0]
    return (
        "#!/bin/sh\n"
        f"# fs-task-queue {__version__} worker job, submitted with Python {python} ({options.python}).\n"
        "# The worker replaces this shell (exec): SLURM's signals reach it and it cannot outlive the job.\n"
        f"export {SUBMIT_PYTHON_ENV}={shlex.quote(python)} {SUBMIT_VERSION_ENV}={shlex.quote(__version__)}\n"
        f"exec {shlex.join(argv)}\n"
    )


def sbatch_argv(options: SubmitOptions) -> list[str]:
    """The sbatch command (the script goes on its standard input)."""
    options.check()
    argv = ["sbatch", "--parsable", f"--time={options.time}", f"--job-name={options.job_name}"]
    # check() refused empty names and numbers below 1; an empty output or dependency means none.
    argv += _words(partition=options.partition, account=options.account, cpus_per_task=options.cpus_per_task)
    argv += _words(mem=options.mem, array=options.array, output=options.output or None)
    argv += _words(dependency=options.dependency or None)
    return argv + list(options.sbatch_args)


def submit_workers(
    queue_path: str | os.PathLike[str] | Queue,
    n: int = 1,
    *,
    time: str,
    partition: str | None = None,
    account: str | None = None,
    cpus_per_task: int | None = None,
    mem: str | None = None,
    array: str | None = None,
    output: str | None = None,
    sbatch_args: Sequence[str] = (),
    worker_args: Sequence[str] = (),
    dry_run: bool = False,
    max_idle: float | None = DEFAULT_MAX_IDLE,
    max_workers: int | None = None,
    max_pending: int | None = None,
    max_per_minute: int | None = None,
) -> list[str]:
    """Submit ``n`` SLURM jobs, each one worker serving the queue at ``queue_path``; return their job ids.

    ``queue_path`` is a queue directory or a :class:`~fs_task_queue.Queue`. For
    a queue on another machine (an ``SSHQueue``) the jobs are submitted there:
    ``fs-task-queue slurm submit`` runs on the queue's host with these options
    as separate, quoted words (see :meth:`Storage.run_cli
    <fs_task_queue.storage.Storage.run_cli>`), and its workers run the Python
    that fs-task-queue runs with there (``remote_python``).

    ``time`` is the walltime (``HH:MM:SS``); ``partition``, ``account``,
    ``cpus_per_task``, ``mem`` and ``array`` become the sbatch options of those
    names, ``sbatch_args`` go to sbatch as they are, ``worker_args`` to the
    worker (e.g. ``["--log-level", "DEBUG"]``). ``max_idle``: an idle worker
    ends after this many seconds (None or 0: never). ``output`` is sbatch's
    ``--output`` (default: ``slurm-%j.out`` in the current directory).
    With ``dry_run`` nothing is submitted: the sbatch command and batch script
    are printed and no id is returned.

    With ``max_workers`` (the pool size) these options become the queue's pool
    policy (``slurm.json``, see :class:`PoolPolicy`): :func:`scale` and workers
    nearing their limit submit more workers like these, up to that many, with
    at most ``max_pending`` pending and ``max_per_minute`` submissions a minute.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a whole number of jobs >= 1, not {n!r}")
    if _on_another_host(queue_path):
        words = ["-n", str(n), f"--time={time}", f"--max-idle={max_idle or 0:g}"]
        words += _words(partition=partition, account=account, cpus_per_task=cpus_per_task, mem=mem, array=array)
        words += _words(output=output, sbatch_arg=sbatch_args, worker_arg=worker_args)
        words += _words(max=max_workers, max_pending=max_pending, max_per_minute=max_per_minute)
        if dry_run:
            print(_run_on_host(queue_path, ["slurm", "submit", *words, "--dry-run"]), end="")
            return []
        answer = _json_answer(_run_on_host(queue_path, ["slurm", "submit", *words, "--json"]))
        return [str(i) for i in answer["job_ids"]]
    given = None if isinstance(queue_path, (str, os.PathLike)) else queue_path
    path = os.path.abspath(queue_path if isinstance(queue_path, (str, os.PathLike)) else queue_path.path)
    if not dry_run and not os.path.isdir(path):
        raise ValueError(f"{path} is not a directory: create the queue first (fs-task-queue info shows it)")
    options = SubmitOptions(
        time=time,
        partition=partition,
        account=account,
        cpus_per_task=cpus_per_task,
        mem=mem,
        array=array,
        output=output,
        sbatch_args=tuple(sbatch_args),
        worker_args=tuple(worker_args),
        max_idle=max_idle or None,
    )
    policy = None
    if max_workers is not None or max_pending is not None or max_per_minute is not None:
        if max_workers is None:
            raise ValueError("max_pending and max_per_minute belong to a pool: give max_workers (--max N) too")
        options.job_name = pool_job_name(path)
        policy = PoolPolicy(
            max_workers=max_workers,
            max_pending=max_pending if max_pending is not None else max_workers,
            max_per_minute=max_per_minute if max_per_minute is not None else DEFAULT_MAX_PER_MINUTE,
            options=options,
        )
        policy.check()
        if n > max_workers:
            raise ValueError(f"{n} worker jobs is more than the pool size {max_workers}: lower -n or raise --max")
    script, argv = batch_script(path, options), sbatch_argv(options)
    if dry_run:
        print(f"# {n} x: {shlex.join(argv)} < script")
        print(script, end="")
        return []
    from fs_task_queue.queue import Queue

    queue = Queue(path, create=False) if given is None else given  # it must exist: a typo is not served
    if policy is None:
        ids = _sbatch(script, argv, n)
        record_jobs(queue, ids, options)
        return ids
    write_policy(queue, policy)  # first: the pool is set even if this submission fails
    ids = _sbatch(script, argv, n)
    record_jobs(queue, ids, options)
    policy.submitted = [_now()] * len(ids)  # they count against the per-minute cap
    write_policy(queue, policy)
    return ids


def _sbatch(script: str, argv: list[str], n: int) -> list[str]:
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch not found: run this on a SLURM login node (or put SLURM's bin directory on PATH)")
    ids: list[str] = []
    for _ in range(n):
        try:
            done = subprocess.run(argv, input=script, capture_output=True, text=True, check=False, timeout=120)
        except subprocess.TimeoutExpired:
            raise SlurmError("sbatch gave no answer in 120 s: is slurmctld up? (try `squeue` yourself)") from None
        if done.returncode != 0:
            submitted = f" ({len(ids)} submitted before it: {' '.join(ids)})" if ids else ""
            raise SlurmError(f"sbatch failed{submitted}: {done.stderr.strip() or done.stdout.strip()}")
        # --parsable prints "<id>" or "<id>;<cluster>".
        ids.append(done.stdout.strip().split(";")[0])
    return ids


@dataclass(frozen=True)
class SlurmJob:
    """The SLURM job this process runs in, from its environment."""

    job_id: str
    partition: str | None
    array_job_id: str | None = None
    array_task_id: str | None = None

    @classmethod
    def here(cls) -> SlurmJob | None:
        env = os.environ
        job_id = env.get("SLURM_JOB_ID")
        if not job_id:
            return None
        array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        return cls(job_id, env.get("SLURM_JOB_PARTITION"), array_job, array_task)


def query_end_time(job_id: str) -> float | None:
    """The job's end time (epoch seconds) from squeue, or None if squeue cannot say."""
    env = {**os.environ, "SLURM_TIME_FORMAT": "%s"}
    try:
        done = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%e"], env=env, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot ask squeue for the end of SLURM job %s: %s", job_id, exc)
        return None
    text = done.stdout.strip()
    if done.returncode != 0 or not text.isdigit():
        log.warning("squeue gave no end time for SLURM job %s: %s", job_id, (done.stderr or text).strip() or "nothing")
        return None
    return float(text)


class Walltime:
    """When this worker's SLURM job ends, re-read every ``check_interval`` seconds.

    ``margin``: claim no task that would end (by its ``expected_duration``)
    later than this many seconds before the end, and stop claiming then.
    ``kill_margin``: the running task is ended and put back this many seconds
    before the end (SLURM's SIGTERM comes at or after it, SIGKILL KillWait later).
    With ``scale_margin`` both are cut to at most a quarter (an eighth) of the
    time left when the end is first learned, so a short job is not all margin.
    """

    def __init__(
        self,
        job: SlurmJob,
        *,
        check_interval: float = 60.0,
        margin: float = 60.0,
        kill_margin: float = 10.0,
        scale_margin: bool = True,
    ) -> None:
        if not check_interval > 0 or margin < 0 or kill_margin < 0:
            raise ValueError("walltime check interval must be > 0 and the margins >= 0 seconds")
        self.job = job
        self.check_interval = check_interval
        self.margin = margin
        self.kill_margin = kill_margin
        self.scale_margin = scale_margin
        self.end: float | None = None
        self._next_check = 0.0

    def refresh(self) -> float | None:
        """Ask squeue now; keep the last known end if it cannot say."""
        end = query_end_time(self.job.job_id)
        if end is not None:
            if self.end is None and self.scale_margin:
                # A short job keeps most of its allocation: margins at most a quarter of what is left.
                left = max(0.0, end - time.time())
                self.margin = min(self.margin, left / 4)
                self.kill_margin = min(self.kill_margin, self.margin / 2)
            if self.end is not None and end != self.end:
                log.info("SLURM job %s now ends at %s (was %s)", self.job.job_id, _clock(end), _clock(self.end))
            self.end = end
        self._next_check = time.monotonic() + self.check_interval
        return self.end

    def due(self) -> float:
        """Seconds until the next look (monotonic clock)."""
        return max(0.0, self._next_check - time.monotonic())

    def claim_until(self) -> float | None:
        """The wall-clock time by which a task claimed now must end (None: unknown)."""
        return None if self.end is None else self.end - self.margin

    def record(self) -> dict[str, Any]:
        return {
            "job_id": self.job.job_id,
            "partition": self.job.partition,
            "array_job_id": self.job.array_job_id,
            "array_task_id": self.job.array_task_id,
            "end_time": self.end,
        }


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


# ------------------------------------------------------------------ the pool
#: The pool policy's file at the queue's root.
POLICY_PATH = "slurm.json"
#: Submissions a minute when the policy does not say (sites often allow about 10).
DEFAULT_MAX_PER_MINUTE = 10
#: Failed submissions in a row after which nothing submits until the policy is set again.
MAX_FAILED_SUBMISSIONS = 3


def pool_job_name(queue_path: str | os.PathLike[str]) -> str:
    """The SLURM job name of a queue's pool workers: squeue counts them by it."""
    path = os.path.abspath(os.fspath(queue_path))
    return f"fsq-{hashlib.sha1(path.encode()).hexdigest()[:10]}"


@dataclass
class PoolPolicy:
    """How many SLURM workers serve a queue, recorded in it (``slurm.json``) so workers can follow it too.

    ``max_workers``: the pool size (running + pending worker jobs).
    ``max_pending``: at most this many of them pending (a site's limit on queued jobs).
    ``max_per_minute``: at most this many submissions in any minute.
    ``options``: the sbatch options and worker arguments every pool worker gets.
    ``submitted``: when the last submissions were made (for the per-minute cap);
    ``failures``/``last_error``: failed submissions and failed worker starts (a
    job that ended without its worker starting) in a row; after
    :data:`MAX_FAILED_SUBMISSIONS` nothing is submitted until the policy is set again.
    ``last_start``: when the latest worker of a recorded job started; a start later than
    ``last_failure`` (when the latest failure happened) resets ``failures``.
    """

    max_workers: int
    max_pending: int
    max_per_minute: int
    options: SubmitOptions
    submitted: list[float] = field(default_factory=list)
    failures: int = 0
    last_error: str = ""
    last_start: float = 0.0
    last_failure: float = 0.0

    def check(self) -> None:
        for what, value in (
            ("max_workers (--max)", self.max_workers),
            ("max_pending (--max-pending)", self.max_pending),
            ("max_per_minute (--max-per-minute)", self.max_per_minute),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{what} must be a whole number >= 1, not {value!r}")
        self.options.check()

    def to_json(self) -> bytes:
        record = dataclasses.asdict(self)
        record["options"]["sbatch_args"] = list(self.options.sbatch_args)
        record["options"]["worker_args"] = list(self.options.worker_args)
        return json.dumps(record, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PoolPolicy:
        """The policy in ``data``; ValueError, TypeError or KeyError if it is not a whole, valid one."""
        if len(data) > MAX_POLICY_BYTES:
            raise ValueError(f"{len(data)} bytes, more than a policy ever holds")
        try:
            record = json.loads(data)
        except RecursionError:
            raise ValueError("nested too deep to be a policy") from None
        if not isinstance(record, dict) or not isinstance(record.get("options"), dict):
            raise TypeError("not a JSON object with options")
        options = SubmitOptions(**record.pop("options"))
        for name in ("sbatch_args", "worker_args"):
            words = getattr(options, name)
            if not isinstance(words, list | tuple) or not all(isinstance(w, str) for w in words):
                raise TypeError(f"options.{name} is not a list of strings")
        policy = cls(options=options, **record)
        numbers = [*policy.submitted, policy.last_start, policy.last_failure]
        if not isinstance(policy.failures, int) or not all(isinstance(t, int | float) for t in numbers):
            raise TypeError("its counts and times are not numbers")
        policy.check()
        return policy

    def describe(self) -> str:
        text = (
            f"SLURM pool: at most {self.max_workers} worker(s), {self.max_pending} pending,"
            f" {self.max_per_minute} submission(s) a minute; jobs named {self.options.job_name},"
            f" --time {self.options.time}"
        )
        if self.failures >= MAX_FAILED_SUBMISSIONS:
            text += f"; STOPPED after {self.failures} failed submissions or worker starts (last: {self.last_error})"
        elif self.failures:
            text += f"; {self.failures} failed submission(s) or worker start(s) in a row (last: {self.last_error})"
        return text


#: A pool policy is a few hundred bytes: a bigger file is not read as one.
MAX_POLICY_BYTES = 65536


def read_policy(queue: Queue) -> PoolPolicy | None:
    """The queue's pool policy, or None if it has none."""
    try:
        data = queue.storage.read(POLICY_PATH)
    except FileNotFoundError:
        return None
    try:
        return PoolPolicy.from_json(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SlurmError(
            f"{queue.path}/{POLICY_PATH} is not a SLURM pool policy ({exc}): set it again with"
            " `fs-task-queue slurm submit PATH --time ... --max N`"
        ) from exc


def write_policy(queue: Queue, policy: PoolPolicy) -> None:
    """Record ``policy`` in the queue (atomically: a reader sees the old or the new one whole)."""
    # Several workers may update it at about the same time (their submissions):
    # the last write wins, which can only make the per-minute count too low by a few.
    queue.storage.publish(POLICY_PATH, policy.to_json(), replace=True)


def count_jobs(job_name: str, *, exclude: str | None = None) -> tuple[int, int]:
    """(running, pending) SLURM jobs named ``job_name`` (any user's), not counting ``exclude``.

    A running job that a pending one depends on (a worker that submitted its
    successor and is draining) is not counted: its successor stands for it.
    Otherwise, when a whole pool nears its limit together, the first worker's
    pending successor would make the pool look full to the others, and only
    one of them would be replaced.
    """
    # Every user's jobs of that name: the name is the queue's (a hash of its path), and in a shared
    # queue each member's pool jobs serve it (a site that hides others' jobs shows one's own).
    out = _slurm_command(["squeue", "-h", "-o", "%i|%t|%E", "-n", job_name, "-t", "R,CF,PD"])
    running: set[str] = set()
    pending = 0
    replaced: set[str] = set()
    for line in out.splitlines():
        job_id, state, dependency = ([*line.split("|", 2), "", ""])[:3]
        if not job_id or job_id == exclude:
            continue
        if state == "PD":
            pending += 1
            # e.g. "afterany:123(unfulfilled)"; several are joined by "," or "?".
            replaced.update(re.findall(r"afterany:(\d+)", dependency))
        else:
            running.add(job_id)
    return len(running - replaced), pending


@dataclass
class ScaleResult:
    """What :func:`scale` did: the job ids submitted and why not more."""

    submitted: list[str]
    message: str


def scale(
    queue: Queue,
    *,
    max_workers: int | None = None,
    max_pending: int | None = None,
    max_per_minute: int | None = None,
    dependency: str | None = None,
    exclude: str | None = None,
    limit: int | None = None,
) -> ScaleResult:
    """Submit pool workers while tasks wait and fewer than needed are running or pending.

    Needed: one worker per waiting task, at most the pool size. The caps on
    pending jobs and on submissions a minute hold; one failed submission ends
    this call (no retry loop) and is counted, and after
    :data:`MAX_FAILED_SUBMISSIONS` in a row nothing is submitted until the
    policy is set again (``--max``). ``max_*`` given here update the policy.
    ``dependency``/``exclude``/``limit`` are for a worker submitting its
    successor: its own job is not counted, and at most ``limit`` are submitted.

    For a queue on another machine (an ``SSHQueue``) this runs ``fs-task-queue
    slurm scale`` there, as :func:`submit_workers` does.
    """
    if _on_another_host(queue):
        options = _words(max=max_workers, max_pending=max_pending, max_per_minute=max_per_minute)
        answer = _json_answer(_run_on_host(queue, ["slurm", "scale", *options, "--json"]))
        return ScaleResult([str(i) for i in answer["job_ids"]], str(answer["message"]))
    with _pool_lock(queue):
        return _scale(queue, max_workers, max_pending, max_per_minute, dependency, exclude, limit)


def _scale(
    queue: Queue,
    max_workers: int | None,
    max_pending: int | None,
    max_per_minute: int | None,
    dependency: str | None,
    exclude: str | None,
    limit: int | None,
) -> ScaleResult:
    policy = read_policy(queue)
    if policy is None:
        raise SlurmError(
            f"{queue.path} has no SLURM pool policy: set one with"
            " `fs-task-queue slurm submit PATH --time HH:MM:SS --max N` (its sbatch options are reused)"
        )
    if max_workers is not None or max_pending is not None or max_per_minute is not None:
        policy.max_workers = max_workers if max_workers is not None else policy.max_workers
        policy.max_pending = max_pending if max_pending is not None else policy.max_pending
        policy.max_per_minute = max_per_minute if max_per_minute is not None else policy.max_per_minute
        policy.failures, policy.last_error = 0, ""  # the user looked at it: try again
        policy.check()
        write_policy(queue, policy)
    if _count_starts(queue, policy) is not None:
        write_policy(queue, policy)
    if policy.failures >= MAX_FAILED_SUBMISSIONS:
        raise SlurmError(
            f"not submitting: the last {policy.failures} submissions or worker starts failed"
            f" (last: {policy.last_error}); fix the cause, then set the pool again with"
            " `fs-task-queue slurm scale PATH --max N`"
        )
    waiting = queue.stats()["queued"]
    running, pending = count_jobs(policy.options.job_name, exclude=exclude)
    have = running + pending
    want = min(policy.max_workers, waiting) - have
    if want <= 0:
        return ScaleResult([], f"{waiting} task(s) waiting, {running} worker(s) running and {pending} pending:"
                               f" enough (pool size {policy.max_workers})")  # fmt: skip
    now = time.time()
    policy.submitted = [t for t in policy.submitted if t > now - 60]
    n, why = want, ""
    for cap, reason in (
        (policy.max_pending - pending, f"the cap of {policy.max_pending} pending job(s)"),
        (policy.max_per_minute - len(policy.submitted), f"the cap of {policy.max_per_minute} submission(s) a minute"),
        (limit, "one successor per worker"),
    ):
        if cap is not None and cap < n:
            n, why = max(0, cap), reason
    ids: list[str] = []
    error = ""
    if n > 0:
        options = dataclasses.replace(policy.options, dependency=dependency)
        script, argv = batch_script(queue.path, options), sbatch_argv(options)
        for _ in range(n):
            try:
                ids += _sbatch(script, argv, 1)
            except SlurmError as exc:
                error = str(exc)
                break
            record_jobs(queue, ids[-1:], options)
            policy.submitted.append(time.time())
        if error:
            policy.failures, policy.last_error, policy.last_failure = policy.failures + 1, error, time.time()
        # A submission that works resets nothing: its job may still fail to start a worker.
        # What resets the count is a worker that starts (see _count_starts).
        write_policy(queue, policy)
    message = (
        f"{waiting} task(s) waiting, {running} worker(s) running and {pending} pending;"
        f" submitted {len(ids)} of the {want} needed (pool size {policy.max_workers})"
        + (f" as job(s) {' '.join(ids)}" if ids else "")
    )
    if error:
        message += f"; a submission failed ({policy.failures} in a row): {error}"
        if policy.failures >= MAX_FAILED_SUBMISSIONS:
            message += "; no more submissions until the pool is set again (`fs-task-queue slurm scale PATH --max N`)"
    elif why:
        message += f"; held back by {why}"
    return ScaleResult(ids, message)


#: The pool's lock file: one scale at a time counts the pool, submits and records it.
LOCK_PATH = "slurm.lock"
#: How long to wait for the lock; one held longer than STALE_LOCK is taken over (its holder died).
LOCK_WAIT = 60.0
STALE_LOCK = 300.0


@contextlib.contextmanager
def _pool_lock(queue: Queue) -> Iterator[None]:
    # Without it, two workers nearing their limit together both see room for one more and
    # the pool overfills, and their updates of the per-minute count overwrite each other.
    storage = queue.storage
    deadline = time.monotonic() + LOCK_WAIT
    owner = f"{socket.gethostname()} {os.getpid()}".encode()
    while True:
        try:
            storage.publish(LOCK_PATH, owner, replace=False)
            break
        except FileExistsError:
            pass
        with contextlib.suppress(FileNotFoundError):
            if storage.now() - storage.stat(LOCK_PATH).mtime > STALE_LOCK:
                held = f"{queue.path}/{LOCK_PATH}"
                log.warning("taking over the SLURM pool lock %s (held over %.0f s)", held, STALE_LOCK)
                storage.remove(LOCK_PATH)
                continue
        if time.monotonic() > deadline:
            raise SlurmError(
                f"the SLURM pool of {queue.path} is busy ({LOCK_PATH} held for over {LOCK_WAIT:.0f} s): if no"
                f" `slurm scale` or worker is submitting, remove {queue.path}/{LOCK_PATH}"
            )
        time.sleep(0.1)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            storage.remove(LOCK_PATH)


def submit_successor(queue: Queue, job_id: str) -> ScaleResult | None:
    """From a worker nearing its limit: submit one worker to start when its job ends, if the pool wants one.

    None when the queue has no pool policy; only the pool's own jobs (named
    :func:`pool_job_name`) replace themselves. The successor waits for this job
    (``--dependency=afterany:<job_id>``), so the pool never holds more than its
    size of allocations and the queue is not left without a worker.
    """
    policy = read_policy(queue)
    if policy is None:
        return None
    if os.environ.get("SLURM_JOB_NAME") != policy.options.job_name:
        # Not one of the pool's jobs (submitted by hand or before the pool was set): it is not
        # counted in the pool, so it must not replace itself in it.
        return ScaleResult([], f"job {job_id} is not one of the pool's jobs ({policy.options.job_name})")
    return scale(queue, dependency=f"afterany:{job_id}", exclude=job_id, limit=1)


def _now() -> float:
    # For submit_workers, whose ``time`` argument (sbatch's --time) hides the module.
    return time.time()


def _on_another_host(queue: object) -> TypeGuard[Queue]:
    """Whether ``queue`` is a Queue whose directory is not on this machine (an SSHQueue)."""
    from fs_task_queue.queue import Queue

    return isinstance(queue, Queue) and queue.storage.local_path("") is None


def _words(**options: object) -> list[str]:
    """Command-line options of ``fs-task-queue slurm``, one word each (``--name=value``: a value may start with -)."""
    words = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        for one in value if isinstance(value, (list, tuple)) else [value]:
            if one is not None:
                words.append(f"{flag}={one}")
    return words


def _json_answer(stdout: str) -> dict[str, Any]:
    """The JSON line that ends a ``--json`` command's output (a login script may print before it)."""
    lines = stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("job_ids"), list):
        raise SlurmError(f"fs-task-queue on the queue's host gave no job ids: {stdout.strip()[-500:]!r}")
    return answer


def _run_on_host(queue: Queue, args: list[str]) -> str:
    """Run ``fs-task-queue ARGS`` where the queue is; its standard output, or SlurmError with its own words."""
    try:
        done = queue.storage.run_cli(args)
    except OSError as exc:
        raise SlurmError(f"cannot run fs-task-queue on the host of {queue.path}: {exc}") from None
    if done.returncode != 0:
        said = done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}"
        hint = ""
        if "No module named fs_task_queue" in said or done.returncode == 127:
            hint = (
                ". Fix: install fs-task-queue there (the workers' environment), or point remote_python= (or"
                " FSQ_SSH_REMOTE_PYTHON) at the Python that has it"
            )
        elif "unrecognized arguments: --json" in said:
            hint = ". Fix: the fs-task-queue there is older than this one: upgrade it"
        elif "not found: run this on a SLURM login node" in said:
            hint = (
                ". Over SSH the host's non-interactive shell runs this: put SLURM on its PATH (in ~/.bashrc,"
                " above any line that returns early for non-interactive shells), or use a login node's URL"
            )
        raise SlurmError(f"`{done.command}` failed on the host of {queue.path}: {said}{hint}")
    return done.stdout


# ------------------------------------------------------------ submitted jobs
#: One record per submitted worker job: ``slurm/jobs/<job id>.json``.
JOBS_DIR = "slurm/jobs"
#: A record larger than this is not read (it is nobody's).
_MAX_RECORD = 8192
_JOB_ID = re.compile(r"^\d{1,20}$")


def _job_record_path(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ValueError(f"{job_id!r} is not a SLURM job id")
    return f"{JOBS_DIR}/{job_id}.json"


def _output_path(options: SubmitOptions, job_id: str, cwd: str) -> str:
    """Where SLURM writes the job's log (sbatch's --output, or slurm-<id>.out in the submit directory)."""
    pattern = options.output or ("slurm-%A_%a.out" if options.array else "slurm-%j.out")
    text = pattern.replace("%j", job_id).replace("%A", job_id).replace("%x", options.job_name)
    return os.path.join(cwd, text)


def record_jobs(queue: Queue, ids: Sequence[str], options: SubmitOptions) -> None:
    """Record submitted worker jobs in the queue, so they are visible while pending (see :func:`list_jobs`)."""
    import getpass

    now, cwd, user = time.time(), os.getcwd(), getpass.getuser()
    for job_id in ids:
        record = {
            "job_id": job_id,
            "user": user,  # whose squeue lists it (a site may hide other users' jobs)
            "submitted": now,
            "time_limit": options.time,
            "partition": options.partition,
            "job_name": options.job_name,
            "array": options.array,
            "output": _output_path(options, job_id, cwd),
        }
        try:
            queue.storage.publish(_job_record_path(job_id), json.dumps(record).encode(), replace=True, make_parent=True)
        except (OSError, ValueError) as exc:  # the job is submitted all the same
            log.warning("cannot record SLURM job %s in the queue: %s", job_id, exc)


def _read_job_records(queue: Queue, names: list[str]) -> list[dict[str, Any]]:
    """The valid records among ``names`` (one batch: a single round trip over SSH), in that order."""
    found = queue.storage.read_many([f"{JOBS_DIR}/{name}" for name in names])
    out = []
    for name in names:
        data = found.get(f"{JOBS_DIR}/{name}")
        record = _job_record(name, data) if isinstance(data, bytes) else None
        if record is not None:
            out.append(record)
    return out


def _read_job_record(queue: Queue, name: str) -> dict[str, Any] | None:
    try:
        data = queue.storage.read(f"{JOBS_DIR}/{name}")
    except OSError:
        return None
    return _job_record(name, data)


def _job_record(name: str, data: bytes) -> dict[str, Any] | None:
    """The record in ``data`` if it is one, for a file named ``name`` (another's file is not trusted)."""
    if len(data) > _MAX_RECORD:
        return None
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("job_id"), str):
        return None
    if f"{record['job_id']}.json" != name or not isinstance(record.get("submitted"), (int, float)):
        return None
    return record


def mark_started(queue: Queue, job: SlurmJob, worker_id: str) -> None:
    """From a worker starting in SLURM job ``job``: mark its record started (a job not recorded is left alone)."""
    job_id = job.array_job_id or job.job_id
    if not _JOB_ID.match(job_id):
        return
    record = _read_job_record(queue, f"{job_id}.json")
    if record is None:
        return  # submitted by hand (plain sbatch): nothing to mark
    record.update(started=time.time(), worker_id=worker_id)
    queue.storage.publish(_job_record_path(job_id), json.dumps(record).encode(), replace=True)


@dataclass(frozen=True)
class SlurmJobStatus:
    """A SLURM worker job as the queue knows it (see :func:`list_jobs`).

    ``state``: "pending" (submitted, no worker started yet), "running" (its
    worker is registered) or "ended" (its worker started and is gone).
    ``end_time``: a running worker's known end (epoch seconds).
    """

    job_id: str
    state: str
    partition: str | None
    submitted: float
    end_time: float | None = None
    worker_id: str | None = None
    output: str | None = None


def list_jobs(queue: Queue, *, limit: int = 200, workers: list[WorkerInfo] | None = None) -> list[SlurmJobStatus]:
    """The SLURM worker jobs serving ``queue``, pending and running, from the queue's storage alone.

    Pending jobs come from the records :func:`submit_workers` and :func:`scale`
    leave in ``slurm/jobs/``; running ones from the workers' own records (so a
    worker submitted by hand shows too). No SLURM command runs: this works on a
    laptop reaching the queue over SFTP. A job whose batch script failed before
    its worker started stays "pending" here until :func:`reconcile_jobs` (run by
    ``slurm scale`` and by ``info`` where ``squeue`` exists) prunes it. At most
    the ``limit`` newest records are read (records of ended jobs pile up where
    nothing prunes them). ``workers``: ``queue.workers()`` if the caller has it already.
    """
    in_jobs = {str(w.slurm_job_id): w for w in (queue.workers() if workers is None else workers) if w.slurm_job_id}
    found: dict[str, SlurmJobStatus] = {}
    try:
        names = [n for n in queue.storage.listdir(JOBS_DIR) if _JOB_ID.match(n.removesuffix(".json"))]
    except (FileNotFoundError, NotADirectoryError):
        names = []
    names = sorted(names, key=lambda n: int(n.removesuffix(".json")))[-limit:]
    for record in _read_job_records(queue, names):
        job_id = record["job_id"]
        worker = in_jobs.pop(job_id, None)
        partition = record.get("partition") if isinstance(record.get("partition"), str) else None
        if worker is not None:
            status = SlurmJobStatus(
                job_id, "running", worker.partition or partition, float(record["submitted"]),
                worker.slurm_end_time, worker.id, record.get("output"),
            )  # fmt: skip
        else:
            state = "ended" if record.get("started") else "pending"
            worker_id = record.get("worker_id") if isinstance(record.get("worker_id"), str) else None
            status = SlurmJobStatus(
                job_id, state, partition, float(record["submitted"]), None, worker_id, record.get("output")
            )
        found[job_id] = status
    for job_id, worker in in_jobs.items():  # submitted by hand: no record
        found[job_id] = SlurmJobStatus(
            job_id, "running", worker.partition, worker.started_at or 0.0, worker.slurm_end_time, worker.id
        )
    return sorted(found.values(), key=lambda j: (j.submitted, j.job_id))


def _squeue_ids() -> set[str]:
    """Ids of this user's jobs that SLURM still lists (pending, running, completing)."""
    import getpass

    # Every state of a job that may still start or run its worker (finished ones stay listed for MinJobAge).
    states = "PD,CF,R,CG,S,ST,RQ,RH,RF,RS,SI,SO"
    out = _slurm_command(["squeue", "-h", "-o", "%i", "-u", getpass.getuser(), "-t", states])
    # Array tasks show as <array id>_<task>: the record is the array's.
    return {line.split("_")[0].strip() for line in out.splitlines() if line.strip()}


def _slurm_command(argv: list[str]) -> str:
    """Run a SLURM client command (``squeue``, ``scancel``); its output, or SlurmError in SLURM's words."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise SlurmError(f"{argv[0]} not found: run this on a SLURM login node (or put SLURM's bin on PATH)") from exc
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"{argv[0]} gave no answer in 60 s: is slurmctld up? (try `squeue` yourself)") from exc
    if done.returncode != 0:
        raise SlurmError(f"{argv[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def cancel_workers(queue: Queue, *, pending_only: bool = False) -> list[str]:
    """``scancel`` the SLURM worker jobs of ``queue`` (those :func:`list_jobs` knows); their ids.

    Pending jobs go at once; a running worker gets SLURM's SIGTERM and puts its
    running task back in the queue (not counted as an attempt) before it exits.
    ``pending_only``: leave the running ones. For a queue on another machine
    (an ``SSHQueue``) this runs ``fs-task-queue slurm cancel`` there. A pool
    (``--max``) is not removed: ``slurm scale`` would submit again while tasks wait.
    """
    if _on_another_host(queue):
        words = ["slurm", "cancel", "--json"] + (["--pending"] if pending_only else [])
        return [str(i) for i in _json_answer(_run_on_host(queue, words))["job_ids"]]
    wanted = ("pending",) if pending_only else ("pending", "running")
    jobs = [j for j in list_jobs(queue) if j.state in wanted]
    if not jobs:
        return []
    # Only what SLURM still lists as this user's (scancel fails on an ended job's id), and only ids:
    # list_jobs gives digits (and _N of an array task), never an option.
    listed = _squeue_ids()
    ids = [j.job_id for j in jobs if j.job_id.split("_")[0] in listed and _JOB_ID.match(j.job_id.split("_")[0])]
    try:
        if ids:
            _slurm_command(["scancel", *ids])
    finally:
        # A canceled pending job never starts: its record goes (not a failed start). Others' records stay.
        canceled = set(ids)
        queue.storage.remove_many(
            [f"{JOBS_DIR}/{j.job_id}.json" for j in jobs if j.state == "pending" and j.job_id in canceled]
        )
    return ids


@dataclass
class Reconciled:
    """What :func:`reconcile_jobs` found: jobs that ended without starting a worker, and pruned records."""

    failed_starts: list[dict[str, Any]]
    pruned: list[str]
    last_start: float


def reconcile_jobs(queue: Queue) -> Reconciled:
    """Compare the recorded jobs with squeue: prune those SLURM no longer lists; name those that never started.

    A recorded job that SLURM no longer lists and whose worker never marked
    its record started failed to start a worker (its batch script failed: a
    broken Python, environment or worker option); its log is its ``output``.

    Only this user's records are judged (another user's jobs may be hidden
    from this user's squeue), and only for a queue on this machine (another
    machine's squeue knows nothing of its jobs). The records are read before
    squeue is asked: a job is recorded after sbatch accepted it, so a record
    read first names a job that squeue lists unless it ended.
    """
    import getpass

    if queue.storage.local_path("") is None:
        return Reconciled([], [], 0.0)
    try:
        names = sorted(n for n in queue.storage.listdir(JOBS_DIR) if n.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return Reconciled([], [], 0.0)
    me = getpass.getuser()
    records = _read_job_records(queue, names)
    listed = _squeue_ids()
    failed: list[dict[str, Any]] = []
    pruned: list[str] = []
    last_start = 0.0
    for record in records:
        started = record.get("started")
        if isinstance(started, (int, float)):
            last_start = max(last_start, float(started))
        if record["job_id"] in listed or record.get("user") != me:
            continue
        if not started:
            failed.append(record)
        with contextlib.suppress(FileNotFoundError):
            queue.storage.remove(f"{JOBS_DIR}/{record['job_id']}.json")
        pruned.append(record["job_id"])
    return Reconciled(failed, pruned, last_start)


def check_jobs(queue: Queue) -> list[str]:
    """On a login node (squeue): prune the records of ended jobs and count failed worker starts.

    With a pool policy the failed starts count in it (under the pool's lock),
    as :func:`scale` counts them. Returns a line per job that ended without
    starting its worker, naming its output file.
    """
    if read_policy(queue) is None:
        return [_failed_start(r) for r in reconcile_jobs(queue).failed_starts]
    with _pool_lock(queue):
        policy = read_policy(queue)
        if policy is None:  # removed meanwhile
            return [_failed_start(r) for r in reconcile_jobs(queue).failed_starts]
        found = _count_starts(queue, policy)
        if found is not None:
            write_policy(queue, policy)
            return [_failed_start(r) for r in found.failed_starts]
    return []


def _failed_start(record: dict[str, Any]) -> str:
    output = record.get("output")
    return f"SLURM job {record['job_id']} ended without starting its worker" + (
        f"; its output is in {output}" if isinstance(output, str) and output else ""
    )


def _count_starts(queue: Queue, policy: PoolPolicy) -> Reconciled | None:
    """Count the recorded jobs that ended without starting a worker; a started worker resets the count.

    Returns what was found if the policy changed (None if not). Needs squeue (a login node).
    """
    found = reconcile_jobs(queue)
    events: list[tuple[float, dict[str, Any] | None]] = [(float(r["submitted"]), r) for r in found.failed_starts]
    if found.last_start > policy.last_start:
        events.append((found.last_start, None))
    for when, record in sorted(events, key=lambda e: e[0]):
        if record is None:
            # A start seen late (this is the first look since) resets only failures before it.
            if when > policy.last_failure:
                policy.failures, policy.last_error = 0, ""
            policy.last_start = when
            continue
        policy.failures += 1
        policy.last_failure = max(policy.last_failure, when)  # when submitted: when it failed is unknown
        policy.last_error = _failed_start(record)
        log.warning("%s", policy.last_error)
    return found if events else None
