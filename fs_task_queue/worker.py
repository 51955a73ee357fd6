"""The worker: claim tasks, run them isolated, commit outcomes, keep a heartbeat.

A worker registers ``workers/<worker-id>`` (JSON: host, pid, start time,
version), touches it every ``heartbeat_interval`` seconds and stops after its
current task when the file is deleted (or cannot be written). The first
SIGINT/SIGTERM/SIGUSR1 makes it stop claiming and give the running task
``grace`` seconds to finish; then (or at a second signal) the task is killed
and put back in the queue without counting as a failed attempt. Meanwhile it
re-queues the tasks of dead workers and sweeps temporary files left by clients
killed mid-write.

That is the worker's *shell*. How the tasks it claims run is its executor's
business (:mod:`fs_task_queue.execution`): with process isolation they are
claimed, run and committed by a task process that this worker process
supervises (:mod:`fs_task_queue.supervise`); with none, by this process; with
:class:`fs_task_queue.plugins.dask.DaskWorker`, by a dask cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from fs_task_queue import layout
from fs_task_queue._version import __version__
from fs_task_queue.errors import FSQError
from fs_task_queue.execution import Executor, InProcess, TaskProcesses
from fs_task_queue.ids import validate_worker_id
from fs_task_queue.liveness import HostIdentity
from fs_task_queue.maintenance import sweep_tmp
from fs_task_queue.queue import Claimer, Queue, default_worker_id
from fs_task_queue.recovery import DEFAULT_DEAD_AFTER, DEFAULT_MAX_LOST, Recoverer
from fs_task_queue.security import check_queue_permissions
from fs_task_queue.serve import LoopSettings
from fs_task_queue.watch import DirWatcher

if TYPE_CHECKING:
    from fs_task_queue.slurm import Walltime

__all__ = ["Worker"]

log = logging.getLogger("fs_task_queue.worker")


class Worker:
    """Runs tasks from ``queue`` until told to stop.

    ``burst``: return when no task is left. ``max_jobs``: return after that many.
    ``max_idle``: return after that many seconds without a task.
    ``isolation``: "process" (default: tasks run in a supervised task
    process, so crashes, timeouts and cancellation are contained) or "none".
    ``timeout``: default per-task timeout in seconds. ``grace``: seconds a
    running task gets to finish after SIGTERM. ``max_tasks_per_child``,
    ``memory_limit`` (bytes): task process limits. ``dead_after``,
    ``max_lost``, ``recover_interval``: dead-worker recovery (see
    :mod:`fs_task_queue.recovery`). ``heartbeat_interval``: seconds between
    touches of the heartbeat file. ``poll_interval``/``max_poll_interval``: the
    polling backoff used where change notifications cannot see other hosts.
    ``executor``: how claimed tasks run (see :mod:`fs_task_queue.execution`);
    by default the one ``isolation`` names.
    ``walltime``: when the worker's allocation ends (see
    :class:`fs_task_queue.slurm.Walltime`); by default, in a SLURM job
    (``SLURM_JOB_ID`` set), that job's, with the default margins. Then the
    worker claims no task whose ``expected_duration`` does not fit, stops
    claiming ``margin`` seconds before the end, puts its running task back
    ``kill_margin`` seconds before it, and takes SLURM's SIGTERM (the end or
    ``scancel``; SIGKILL follows within KillWait) as "put the task back now".
    """

    def __init__(
        self,
        queue: Queue | str | os.PathLike[str],
        *,
        name: str | None = None,
        burst: bool = False,
        max_jobs: int | None = None,
        max_idle: float | None = None,
        isolation: Literal["process", "none"] = "process",
        timeout: float | None = None,
        grace: float = 30.0,
        max_tasks_per_child: int | None = None,
        memory_limit: int | None = None,
        dead_after: float = DEFAULT_DEAD_AFTER,
        max_lost: int = DEFAULT_MAX_LOST,
        recover_interval: float = 15.0,
        heartbeat_interval: float = 30.0,
        poll_interval: float = 0.05,
        max_poll_interval: float = 1.0,
        executor: Executor | None = None,
        walltime: Walltime | Literal["auto"] | None = "auto",
    ) -> None:
        self.queue = queue if isinstance(queue, Queue) else Queue(queue)
        # The one whole-name check (ids.py): the id names workers/<id> and claimed/<id>.
        self.id = validate_worker_id(name) if name is not None else default_worker_id()
        if isolation not in ("process", "none"):
            raise ValueError(f"isolation must be 'process' or 'none', not {isolation!r}")
        self.burst = burst
        self.max_jobs = max_jobs
        self.max_idle = max_idle
        self.isolation = isolation
        self.timeout = timeout
        self.grace = grace
        self.max_tasks_per_child = max_tasks_per_child
        self.memory_limit = memory_limit
        self.dead_after = dead_after
        self.max_lost = max_lost
        self.recover_interval = recover_interval
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        if executor is None:
            executor = (
                TaskProcesses(memory_limit=memory_limit, max_tasks_per_child=max_tasks_per_child)
                if isolation == "process"
                else InProcess()
            )
        self.executor = executor
        if walltime == "auto":
            walltime = _slurm_walltime()
        self.walltime: Walltime | None = walltime
        self._next_walltime = 0.0
        self.jobs_done = 0
        self._claimer: Claimer | None = None
        self._recoverer: Recoverer | None = None
        self._stop = threading.Event()
        self._stop_reason = ""
        self._hard_deadline: float | None = None
        # Set by SIGUSR1 in a SLURM job: its successor is submitted by the next chore, not in the handler.
        self._successor_for: str | None = None
        self._successor_threads: list[threading.Thread] = []
        self._heartbeat_path = layout.worker_path(self.id)
        self._watcher: DirWatcher | None = None
        self._next_beat = self._next_recover = self._next_sweep = 0.0

    # -------------------------------------------------------------- control
    def stop(self, reason: str = "asked to stop") -> None:
        """Stop claiming; the running task (if any) gets the grace period to finish."""
        if not self._stop.is_set():
            self._stop_reason = reason
            log.info("worker %s stopping: %s", self.id, reason)
            self._hard_deadline = time.monotonic() + self.grace
        self._stop.set()
        self.executor.stop(reason)
        self.wake()

    def kill_task(self, reason: str = "asked to stop now") -> None:
        """Stop at once: the running task is killed and put back in the queue."""
        if self._stop.is_set():
            log.info("worker %s stopping now: %s", self.id, reason)
        self.stop(reason)
        self._hard_deadline = time.monotonic()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM and self.walltime is not None:
            # SLURM's SIGTERM (time limit or scancel) is followed by SIGKILL within
            # KillWait (seconds): no grace, put the running task back now.
            self.kill_task(f"received SIGTERM from SLURM (job {self.walltime.job.job_id} is ending)")
        elif signum == signal.SIGUSR1 and self.walltime is not None:
            # SLURM's warning, not a user's second signal: one that comes while the worker drains
            # already (at its margin) leaves the running task its deadline.
            if not self._stop.is_set():
                self._drain_for_slurm()
        elif self._stop.is_set():
            self.kill_task(f"received a second signal ({name})")
        else:
            self.stop(f"received {name}")

    def _drain_for_slurm(self) -> None:
        """SIGUSR1 in a SLURM job (``--signal=B:USR1@N``): stop claiming; the running task may finish
        until ``kill_margin`` seconds before the job's end (not just ``grace``), then it is put back."""
        walltime = self.walltime
        assert walltime is not None
        end = walltime.end
        if end is None:
            self.stop("received SIGUSR1 (the job's end is not known: the running task gets --grace)")
            return
        self._successor_for = walltime.job.job_id  # a pool worker nearing its end: see _chores
        left = max(0.0, end - walltime.kill_margin - time.time())
        self.stop(
            f"received SIGUSR1 from SLURM (job {walltime.job.job_id} ends in {max(0.0, end - time.time()):.0f} s):"
            f" the running task (if any) may go on for {left:.0f} s, then it is put back in the queue"
        )
        self._hard_deadline = time.monotonic() + left

    # ------------------------------------------------------------ heartbeat
    def _register(self) -> None:
        record = {
            "id": self.id,
            **HostIdentity.here(self.queue.storage).as_record(),
            "pid": os.getpid(),
            "started_at": time.time(),
            "version": __version__,
            "python": sys.version.split()[0],
            "executable": sys.executable,
        }
        if self.walltime is not None:
            record["slurm"] = self.walltime.record()
            mismatch = _environment_mismatch()
            if mismatch:
                record["mismatch"] = mismatch
        try:
            self.queue.storage.publish(self._heartbeat_path, json.dumps(record).encode(), replace=False)
        except FileExistsError:
            raise ValueError(
                f"a worker named {self.id!r} is already registered in {self.queue.path}: pick another"
                f" --name, or run 'fs-task-queue stop-worker {self.queue.path} {self.id}' if it is gone"
            ) from None

    def _rewrite_record(self) -> None:
        """Publish the record again (the SLURM end time moved)."""
        try:
            record = json.loads(self.queue.storage.read(self._heartbeat_path))
            if self.walltime is not None:
                record["slurm"] = self.walltime.record()
            self.queue.storage.publish(self._heartbeat_path, json.dumps(record).encode(), replace=True)
        except (OSError, ValueError) as exc:
            log.warning("cannot update this worker's record: %s", exc)

    def claim_until(self) -> float | None:
        """The wall-clock time by which a task claimed now must end (None: any time)."""
        return None if self.walltime is None else self.walltime.claim_until()

    def _check_walltime(self) -> float:
        """Re-read the SLURM end time when due; drain when it is near. Seconds until the next look."""
        walltime = self.walltime
        assert walltime is not None
        if walltime.due() <= 0:
            before = walltime.end
            end = walltime.refresh()
            if end != before:
                self._rewrite_record()
        end = walltime.end
        if end is None:
            return walltime.due()
        left = end - time.time()
        if left <= walltime.margin:
            kill_in = max(0.0, left - walltime.kill_margin)
            if not self._stop.is_set():
                self._submit_successor(walltime.job.job_id)
                self.stop(
                    f"SLURM job {walltime.job.job_id} ends in {max(0.0, left):.0f} s; the running task (if any)"
                    f" may go on for {kill_in:.0f} s, then it is put back in the queue"
                )
            deadline = time.monotonic() + kill_in
            if self._hard_deadline is None or deadline < self._hard_deadline:
                self._hard_deadline = deadline
                self.wake()
            return walltime.due()
        # Wake when the margin is reached, even between two looks at squeue.
        return min(walltime.due(), left - walltime.margin)

    def _successor_if_due(self) -> None:
        """After SLURM's USR1 (the job nears its end): submit the pool's next worker, once."""
        job_id, self._successor_for = self._successor_for, None
        if job_id is not None:
            self._submit_successor(job_id)

    def _submit_successor(self, job_id: str) -> None:
        """Before draining: if the queue has a SLURM pool policy and work waits, submit the next worker.

        In a thread of its own: squeue, sbatch and the pool's lock can take
        seconds (a whole pool nearing its end together takes turns), and the
        drain's deadline for the running task must not wait for them.
        """
        thread = threading.Thread(target=self._successor, args=(job_id,), name="fsq-slurm-successor", daemon=True)
        self._successor_threads.append(thread)
        thread.start()

    def _successor(self, job_id: str) -> None:
        from fs_task_queue.slurm import submit_successor

        try:
            result = submit_successor(self.queue, job_id)
        except (OSError, subprocess.SubprocessError, FSQError, ValueError, TypeError) as exc:
            log.warning("no successor submitted for SLURM job %s: %s", job_id, exc)
            return
        if result is not None:
            log.info("successor of SLURM job %s: %s", job_id, result.message)

    def _join_successors(self) -> None:
        """Before the worker exits (its job ends with it): let a successor's submission finish."""
        deadline = time.monotonic() + SUCCESSOR_WAIT
        for thread in self._successor_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("the successor's submission is still running after %.0f s: exiting anyway", SUCCESSOR_WAIT)

    def _unregister(self) -> None:
        try:
            self.queue.storage.remove(self._heartbeat_path)
        except FileNotFoundError:
            pass

    def _heartbeat_alive(self) -> bool:
        """Touch the heartbeat file; False (and stop) if it was deleted or cannot be written."""
        try:
            self.queue.storage.touch(self._heartbeat_path)
        except FileNotFoundError:
            self.stop(f"heartbeat file {layout.WORKERS}/{self.id} was deleted")
            return False
        except OSError as exc:
            self.stop(f"heartbeat file cannot be written ({exc.strerror})")
            return False
        return True

    def check_heartbeat(self, changed: set[str] | None) -> None:
        if changed and self.id in changed and not self.queue.storage.exists(self._heartbeat_path):
            self.stop(f"heartbeat file {layout.WORKERS}/{self.id} was deleted")

    # ---------------------------------------------------------------- chores
    def _chores(self, recoverer: Recoverer, *, beat: bool) -> float:
        """Heartbeat, recovery and sweeping when due; seconds until the next one."""
        self._successor_if_due()
        now = time.monotonic()
        if beat and now >= self._next_beat:
            self._heartbeat_alive()
            self._next_beat = now + self.heartbeat_interval
        if now >= self._next_recover:
            try:
                recoverer.run_once()
            except OSError as exc:
                # e.g. a shard that kept vanishing: what was taken over stays in
                # this worker's claimed folder (put back when it closes); try again later.
                log.warning("recovery pass stopped: %s; trying again in %.0f s", exc, self.recover_interval)
            self._next_recover = now + self.recover_interval
        if now >= self._next_sweep:
            sweep_tmp(self.queue)
            self._next_sweep = now + 600.0
        if self.walltime is not None and now >= self._next_walltime:
            self._next_walltime = now + self._check_walltime()
        due = [self._next_recover, self._next_sweep] + ([self._next_beat] if beat else [])
        if self.walltime is not None:
            due.append(self._next_walltime)
        return max(0.0, min(due) - time.monotonic())

    def _chore_loop(self, recoverer: Recoverer, watcher: DirWatcher) -> None:
        # With isolation "none" the tasks run in the main thread; this thread
        # keeps the heartbeat, recovers dead workers' tasks and sweeps.
        while not self._stop.is_set():
            wait = self._chores(recoverer, beat=True)
            self.check_heartbeat(watcher.wait(wait))

    # ------------------------------------------------------------------ run
    def settings(self) -> LoopSettings:
        """When a task loop stops and how it waits (the executor may adjust it)."""
        return LoopSettings(
            burst=self.burst,
            max_jobs=None if self.max_jobs is None else self.max_jobs - self.jobs_done,
            max_idle=self.max_idle,
            timeout=self.timeout,
            supervisor_timeout=max(1.0, min(self.dead_after, self.heartbeat_interval) / 3),
            poll_interval=self.poll_interval,
            max_poll_interval=self.max_poll_interval,
        )

    @property
    def claimer(self) -> Claimer:
        if self._claimer is None:
            raise RuntimeError("the worker is not running")
        return self._claimer

    @property
    def hard_deadline(self) -> float | None:
        return self._hard_deadline

    def chores(self, *, beat: bool = True) -> float:
        assert self._recoverer is not None
        return self._chores(self._recoverer, beat=beat)

    def watch(self, timeout: float, also: tuple[int, ...] = ()) -> set[str] | None:
        assert self._watcher is not None
        return self._watcher.wait(timeout, also=also)

    def wake(self) -> None:
        if self._watcher is not None:
            self._watcher.interrupt()

    @contextlib.contextmanager
    def chores_in_background(self) -> Iterator[None]:
        # While the executor's thread is busy running tasks, this thread
        # keeps the heartbeat, recovers dead workers' tasks and sweeps.
        assert self._recoverer is not None and self._watcher is not None
        chores = threading.Thread(
            target=self._chore_loop, args=(self._recoverer, self._watcher), name=f"fsq-chores-{self.id}"
        )
        chores.daemon = True
        chores.start()
        try:
            yield
        finally:
            self._stop.set()
            self.wake()
            chores.join()

    def run(self) -> int:
        """Work until stopped; return the number of jobs processed."""
        check_queue_permissions(self.queue.storage, bool(self.queue._format.get("shared")))
        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                handlers[sig] = signal.signal(sig, self._on_signal)
        if self.walltime is not None:
            self.walltime.refresh()
            self._next_walltime = time.monotonic()  # the first chores decide at once
            job = self.walltime.job
            end = self.walltime.end
            log.info(
                "worker %s runs in SLURM job %s (partition %s), which ends %s",
                self.id,
                job.job_id,
                job.partition or "-",
                "at an unknown time (squeue cannot say)" if end is None else f"in {end - time.time():.0f} s",
            )
            mismatch = _environment_mismatch()
            if mismatch:
                log.warning("this worker's environment differs from its submitter's: %s", mismatch)
        # The heartbeat file is published without replacing first: it is what
        # makes a second worker with the same name fail fast with a clear error.
        self._register()
        if self.walltime is not None:
            _mark_slurm_job_started(self)
        claimer = Claimer(self.queue, self.id, heartbeat=False)
        try:
            claimer.register()
        except BaseException:
            self._unregister()
            raise
        self._claimer = claimer
        recoverer = self._recoverer = Recoverer(self.queue, self.id, dead_after=self.dead_after, max_lost=self.max_lost)
        watcher = self._watcher = DirWatcher(
            [self.queue.storage.local_path(layout.WORKERS)],
            min_interval=self.poll_interval,
            max_interval=self.max_poll_interval,
        )
        now = time.monotonic()
        self._next_beat, self._next_recover, self._next_sweep = now + self.heartbeat_interval, now, now
        log.info(
            "worker %s serving %s (isolation: %s; Python %s, fs-task-queue %s)",
            self.id,
            self.queue.path,
            self.executor.description,
            sys.version.split()[0],
            __version__,
        )
        try:
            # Recovery first: tasks of dead workers are the oldest work there is.
            self._chores(recoverer, beat=False)
            self.executor.serve(self)
        finally:
            self._stop.set()
            self._successor_if_due()  # USR1 came while idle: no chore ran since
            self._join_successors()
            self._watcher = None
            watcher.close()
            claimer.close()
            self._claimer = None
            self._unregister()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            log.info("worker %s stopped after %d jobs (%s)", self.id, self.jobs_done, self._stop_reason)
        return self.jobs_done


#: How long an exiting worker waits for its successor's submission (sbatch, squeue, the pool's lock).
SUCCESSOR_WAIT = 30.0


def _slurm_walltime() -> Walltime | None:
    """This SLURM job's walltime, or None outside SLURM (nothing imported then)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    from fs_task_queue.slurm import SlurmJob, Walltime

    job = SlurmJob.here()
    return None if job is None else Walltime(job)


def _mark_slurm_job_started(worker: Worker) -> None:
    """Mark this SLURM job's record in the queue started (it no longer counts as pending, nor as a failed start)."""
    from fs_task_queue.slurm import mark_started

    assert worker.walltime is not None
    try:
        mark_started(worker.queue, worker.walltime.job, worker.id)
    except (OSError, ValueError) as exc:
        log.warning("cannot mark SLURM job %s started in the queue: %s", worker.walltime.job.job_id, exc)


def _environment_mismatch() -> str:
    """How this worker's Python and fs-task-queue differ from those of whoever submitted its SLURM job."""
    from fs_task_queue.slurm import SUBMIT_PYTHON_ENV, SUBMIT_VERSION_ENV

    python, version = os.environ.get(SUBMIT_PYTHON_ENV), os.environ.get(SUBMIT_VERSION_ENV)
    here = sys.version.split()[0]
    problems = []
    if python and python != here:
        problems.append(f"Python {here} here, {python} at submission")
    if version and version != __version__:
        problems.append(f"fs-task-queue {__version__} here, {version} at submission")
    return "; ".join(problems)
