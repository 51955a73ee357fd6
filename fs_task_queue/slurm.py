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

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fs_task_queue._version import __version__
from fs_task_queue.errors import SlurmError

__all__ = ["SlurmJob", "SubmitOptions", "Walltime", "batch_script", "sbatch_argv", "submit_workers"]

log = logging.getLogger("fs_task_queue.worker")

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
    if options.partition:
        argv.append(f"--partition={options.partition}")
    if options.account:
        argv.append(f"--account={options.account}")
    if options.cpus_per_task:
        argv.append(f"--cpus-per-task={options.cpus_per_task}")
    if options.mem:
        argv.append(f"--mem={options.mem}")
    if options.array:
        argv.append(f"--array={options.array}")
    if options.output:
        argv.append(f"--output={options.output}")
    return argv + list(options.sbatch_args)


def submit_workers(
    queue_path: str | os.PathLike[str],
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
) -> list[str]:
    """Submit ``n`` SLURM jobs, each one worker serving the queue at ``queue_path``; return their job ids.

    ``time`` is the walltime (``HH:MM:SS``); ``partition``, ``account``,
    ``cpus_per_task``, ``mem`` and ``array`` become the sbatch options of those
    names, ``sbatch_args`` go to sbatch as they are, ``worker_args`` to the
    worker (e.g. ``["--max-idle", "300"]``). ``output`` is sbatch's
    ``--output`` (default: ``slurm-%j.out`` in the current directory).
    With ``dry_run`` nothing is submitted: the sbatch command and batch script
    are printed and no id is returned.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a whole number of jobs >= 1, not {n!r}")
    path = os.path.abspath(os.fspath(queue_path))
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
    )
    script, argv = batch_script(path, options), sbatch_argv(options)
    if dry_run:
        print(f"# {n} x: {shlex.join(argv)} < script")
        print(script, end="")
        return []
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch not found: run this on a SLURM login node (or put SLURM's bin directory on PATH)")
    ids: list[str] = []
    for _ in range(n):
        done = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
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
