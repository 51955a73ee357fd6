"""DaskWorker: a worker that runs the tasks it claims on a dask.distributed cluster.

It is a normal worker shell (:class:`~fs_task_queue.worker.Worker`: heartbeat,
stop when ``workers/<id>`` is deleted, SIGTERM drain with a grace period,
recovery of dead workers, sweeps) whose executor, :class:`DaskExecutor`, sends
each claimed task to the cluster with ``client.submit`` instead of running it.
Everything else stays as with any worker: the task file is claimed into
``claimed/<id>/``, its output and progress go to ``jobs/<id>/`` (the dask
workers need the queue's filesystem), its outcome is committed by this process.

* **Futures are kept** until the outcome they bring is committed.
* **Backpressure**: it holds at most ``in_flight_per_thread`` x the cluster's
  threads claimed-but-unfinished tasks (re-read every second, so it follows dask
  workers joining and leaving; nothing is claimed while the cluster has none),
  leaving the rest of the queue to other workers.
* **Timeouts and cancellation** are enforced inside the dask worker process by a
  watchdog thread that raises in the task's thread (a task blocked in native
  code, e.g. a long ``time.sleep``, is interrupted when it returns to Python).
* **A dask worker that dies** with a task (``KilledWorker``, a killed process)
  loses that run: the task is re-queued or failed under the same capped policy
  as a dead fs-task-queue worker (:func:`~fs_task_queue.recovery.lose_task`,
  ``max_lost``). Dask's own ``distributed.scheduler.allowed-failures`` retries
  come first.
* **Drain**: after SIGTERM (or the heartbeat's deletion) it claims nothing more,
  gives running tasks ``grace`` seconds, then interrupts the rest and puts them
  back in the queue without counting an attempt. Killed outright, its claims
  are recovered like any dead worker's.

This is the only module that imports ``distributed``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import os
import queue as queue_module
import select
import threading
import time
from typing import Any

from fs_task_queue import layout
from fs_task_queue.errors import JobCanceledError, JobTimeoutError
from fs_task_queue.execute import CallResult, Task, call_task, failed, read_claimed, release, requeue
from fs_task_queue.execution import Shell
from fs_task_queue.job import Job
from fs_task_queue.queue import Queue
from fs_task_queue.recovery import lose_task
from fs_task_queue.runtime import TaskContext
from fs_task_queue.serve import settle_outcome
from fs_task_queue.status import JobStatus
from fs_task_queue.watch import DirWatcher
from fs_task_queue.worker import Worker

# The client API is used through Any: distributed's own hints are partial.
try:
    import distributed as _distributed
except ImportError as exc:  # pragma: no cover - the test extra installs it
    raise ImportError(
        f"DaskWorker needs dask.distributed, which cannot be imported ({exc}): pip install 'fs-task-queue[dask]'"
    ) from exc

distributed: Any = _distributed

__all__ = ["DEFAULT_IN_FLIGHT_PER_THREAD", "DaskExecutor", "DaskWorker"]

log = logging.getLogger("fs_task_queue.worker")

#: Claimed-but-unfinished tasks per dask thread: one running, one ready to start.
DEFAULT_IN_FLIGHT_PER_THREAD = 2.0
#: How often the cluster's thread count is read again, seconds.
CAPACITY_INTERVAL = 1.0
#: How often the watchdog in a dask worker process looks at its running tasks, seconds.
WATCHDOG_INTERVAL = 0.2


# ---------------------------------------------------------------- dask side
class _Interrupt(BaseException):
    """Raised in a task's thread by the watchdog (BaseException: a task's ``except Exception`` lets it pass)."""


@dataclasses.dataclass(eq=False)
class _Running:
    job_id: str
    queue: Queue
    thread: int
    deadline: float | None
    why: str = ""  # set when the watchdog interrupted it: "timeout", "canceled" or "shutdown"


class _Watchdog:
    """One per dask worker process: ends tasks that time out, are canceled, or are drained."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._shutdown: set[str] = set()
        self._thread: threading.Thread | None = None

    def add(self, entry: _Running) -> None:
        with self._lock:
            self._running[entry.thread] = entry
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="fsq-watchdog", daemon=True)
                self._thread.start()

    def remove(self, entry: _Running) -> None:
        with self._lock:
            self._running.pop(entry.thread, None)
            self._shutdown.discard(entry.job_id)
            if entry.why:
                # An interruption sent just before the task ended must not hit
                # whatever this thread runs next: withdraw it if still pending.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(entry.thread), None)

    def shut_down(self, job_ids: list[str]) -> None:
        with self._lock:
            self._shutdown.update(job_ids)
            for entry in self._running.values():
                if entry.job_id in self._shutdown:
                    self._interrupt(entry, "shutdown")

    def _interrupt(self, entry: _Running, why: str) -> None:
        # Called with the lock held and the entry registered: its thread is
        # still inside the task's call (remove() takes the same lock).
        if not entry.why:
            entry.why = why
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(entry.thread), ctypes.py_object(_Interrupt))

    def _loop(self) -> None:
        while True:
            time.sleep(WATCHDOG_INTERVAL)
            with self._lock:
                entries = list(self._running.values())
            now = time.monotonic()
            for entry in entries:
                if entry.why:
                    continue
                why = ""
                if entry.deadline is not None and now >= entry.deadline:
                    why = "timeout"
                else:
                    try:
                        if entry.queue.storage.exists(layout.result_path(entry.job_id)):
                            why = "canceled"  # an outcome while it runs: canceled (or run elsewhere)
                    except OSError:
                        pass  # cannot tell now: look again next round
                if why:
                    with self._lock:
                        if self._running.get(entry.thread) is entry:
                            self._interrupt(entry, why)


_watchdog = _Watchdog()
_queues: dict[tuple[Any, ...], Queue] = {}


def _queue(queue_args: dict[str, Any]) -> Queue:
    key = tuple(sorted(queue_args.items()))
    queue = _queues.get(key)
    if queue is None:
        args = dict(queue_args)
        queue = _queues[key] = Queue(args.pop("path"), create=False, **args)
    return queue


def run_on_dask(queue_args: dict[str, Any], task: Task, timeout: float | None) -> CallResult:
    """What a dask worker runs for one task: call it with its context, within its timeout; never raises."""
    queue = _queue(queue_args)
    entry = _Running(task.job_id, queue, threading.get_ident(), None if timeout is None else time.monotonic() + timeout)
    started = time.time()
    result: CallResult | None = None
    try:
        try:
            _watchdog.add(entry)
            result = call_task(task, TaskContext(queue, task.job_id, name=task.name))
        finally:
            _watchdog.remove(entry)
    except _Interrupt:
        pass  # delivered after the call returned: entry.why says what it was
    if entry.why == "timeout":
        error = JobTimeoutError(
            f"job {task.job_id} ran longer than its timeout of {timeout:g} s and was stopped", task.job_id
        )
        result = failed(error, kind="timeout")
    elif entry.why:
        result = failed(JobCanceledError(f"job {task.job_id} was stopped ({entry.why})", task.job_id), kind=entry.why)
    assert result is not None
    if entry.why:
        result.started, result.ended = started, time.time()
    return result


def _shut_down(job_ids: list[str]) -> None:
    _watchdog.shut_down(job_ids)


# --------------------------------------------------------- DaskWorker side
def _release_settled(queue: Queue, job: Job) -> bool:
    """If ``job`` has an outcome already (canceled), file its claimed task where a worker would; True if so."""
    if not (queue.storage.exists(layout.result_path(job.id)) and queue._has_outcome(job.id)):
        return False
    failed_job = queue._result_status(job.id) is JobStatus.FAILED
    release(job, keep_as=(layout.failed_task_path if failed_job else layout.done_task_path)(job._name or job.id))
    return True


@dataclasses.dataclass(eq=False)
class _InFlight:
    job: Job
    task: Task
    future: Any  # distributed.Future


class DaskExecutor:
    """Sends a worker's claimed tasks to a dask cluster (see the module docstring).

    ``client``: a connected :class:`distributed.Client`; else ``address`` (a
    scheduler address), else dask's ``scheduler-address`` config, else a
    :class:`distributed.LocalCluster` started with ``cluster_options`` and
    closed at the end. ``in_flight_per_thread``: the backpressure multiple.
    """

    description = "dask"

    def __init__(
        self,
        client: Any = None,
        *,
        address: str | None = None,
        in_flight_per_thread: float = DEFAULT_IN_FLIGHT_PER_THREAD,
        cluster_options: dict[str, Any] | None = None,
    ) -> None:
        if client is not None and address is not None:
            raise ValueError("pass a dask client or a scheduler address, not both")
        if not in_flight_per_thread > 0:
            raise ValueError(f"in_flight_per_thread must be > 0, got {in_flight_per_thread!r}")
        self.client = client
        self.address = address
        self.in_flight_per_thread = in_flight_per_thread
        self.cluster_options = cluster_options or {}
        #: The in-flight limit now (in_flight_per_thread x the cluster's threads).
        self.limit = 0
        #: The most tasks ever claimed and not yet settled at once.
        self.max_in_flight = 0
        #: (monotonic time, tasks in flight) at every change, for measurements.
        self.history: list[tuple[float, int]] = []
        self._inflight: dict[str, _InFlight] = {}
        self._done: queue_module.SimpleQueue[str] = queue_module.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._queued: DirWatcher | None = None
        self._stop_reason: str | None = None

    # -------------------------------------------------------------- control
    def stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass  # already pending, or closed

    def _connect(self) -> tuple[Any, Any]:
        """The client to use, and what to close at the end (None: it is the caller's)."""
        if self.client is not None:
            return self.client, None
        import dask

        address = self.address or dask.config.get("scheduler-address", None)
        if address:
            client: Any = distributed.Client(address, set_as_default=False)
            return client, client
        cluster = distributed.LocalCluster(**{"processes": True, **self.cluster_options})
        client = distributed.Client(cluster, set_as_default=False)
        log.info("started a dask LocalCluster at %s (%s)", cluster.scheduler_address, cluster.dashboard_link)
        return client, (client, cluster)

    # ---------------------------------------------------------------- serve
    def serve(self, shell: Shell) -> None:
        client, owned = self._connect()
        queue = shell.queue
        storage: Any = queue.storage
        queue_args: dict[str, Any] = {"path": queue.path, "durable": getattr(storage, "durable", False)}
        if queue._format.get("shared"):
            queue_args["shared"] = True
        self._queued = DirWatcher(
            [storage.local_path(layout.QUEUED)],
            nested=True,
            min_interval=shell.settings().poll_interval,
            max_interval=shell.settings().max_poll_interval,
        )
        log.info("sending tasks to the dask scheduler at %s", client.scheduler.address)
        try:
            with shell.chores_in_background():
                self._serve(shell, client, queue_args)
        finally:
            self._drop_all(shell, client)
            self._queued.close()
            self._queued = None
            if isinstance(owned, tuple):
                for thing in owned:
                    thing.close()
            elif owned is not None:
                owned.close()

    def _capacity(self, client: Any) -> int:
        try:
            threads = sum(client.nthreads().values())
        except OSError as exc:  # the scheduler is unreachable: claim nothing until it is back
            log.warning("cannot ask the dask scheduler for its workers (%s); claiming nothing", exc)
            return 0
        return math.ceil(self.in_flight_per_thread * threads) if threads else 0

    def _serve(self, shell: Shell, client: Any, queue_args: dict[str, Any]) -> None:
        settings = shell.settings()
        claimer = shell.claimer
        assert self._queued is not None
        next_capacity = 0.0
        idle_since = time.monotonic()
        while True:
            now = time.monotonic()
            self._settle_done(shell, client)
            if self._stop_reason is not None and not shell.stopping:
                shell.stop(self._stop_reason)  # burst, max jobs, idle: the shell stops with the loop
            if shell.stopping:
                if not self._inflight:
                    return
                deadline = shell.hard_deadline
                if deadline is not None and now >= deadline:
                    return  # the rest is put back by _drop_all
            if now >= next_capacity:
                limit = self._capacity(client)
                if limit != self.limit:
                    log.info("dask cluster capacity: at most %d tasks in flight", limit)
                self.limit, next_capacity = limit, now + CAPACITY_INTERVAL
            next_due = claimer.promote_delayed()
            claimed_any = False
            while not shell.stopping and self._stop_reason is None and len(self._inflight) < self.limit:
                job = claimer.claim()
                if job is None:
                    break
                claimed_any = True
                self._submit(client, job, queue_args, settings.timeout)
                if settings.max_jobs is not None and shell.jobs_done + len(self._inflight) >= settings.max_jobs:
                    self.stop(f"reached --max-jobs {settings.max_jobs}")
            if claimed_any or self._inflight:
                idle_since = now
                self._queued.reset()
            elif self._stop_reason is None and not shell.stopping and self.limit > 0:
                if settings.burst and next_due is None:
                    self.stop("no task left (burst mode)")
                    continue
                if settings.max_idle is not None and now - idle_since >= settings.max_idle:
                    self.stop(f"idle for {settings.max_idle} s")
                    continue
            # Sleep until a future is done, a task arrives (when there is room), or a deadline.
            timeouts = [CAPACITY_INTERVAL, max(0.0, next_capacity - now)]
            if next_due is not None:
                timeouts.append(max(0.0, next_due - time.time()))
            if settings.max_idle is not None and not self._inflight:
                timeouts.append(max(0.0, settings.max_idle - (now - idle_since)))
            if shell.stopping and shell.hard_deadline is not None:
                timeouts.append(max(0.0, shell.hard_deadline - now))
            wait = min(timeouts)
            if len(self._inflight) < self.limit and not shell.stopping:
                self._queued.wait(wait, also=(self._wake_r,))
            else:
                select.select([self._wake_r], [], [], wait)
            self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _submit(self, client: Any, job: Job, queue_args: dict[str, Any], timeout: float | None) -> None:
        task = read_claimed(job)  # quarantines an unreadable task file
        if task is None:
            return
        future = client.submit(
            run_on_dask,
            queue_args,
            task,
            task.options.get("timeout", timeout),
            key=f"fsq-{job.id}-{os.urandom(4).hex()}",
            pure=False,
        )
        self._inflight[job.id] = _InFlight(job, task, future)
        self._record()
        job_id = job.id

        def done(_: Any) -> None:  # in the client's event loop thread
            self._done.put(job_id)
            self._wake()

        future.add_done_callback(done)

    def _record(self) -> None:
        n = len(self._inflight)
        self.max_in_flight = max(self.max_in_flight, n)
        self.history.append((time.monotonic(), n))

    def _settle_done(self, shell: Shell, client: Any) -> None:
        done: list[_InFlight] = []
        while True:
            try:
                job_id = self._done.get_nowait()
            except queue_module.Empty:
                break
            item = self._inflight.get(job_id)
            if item is not None and item.future.done():
                done.append(item)
        if not done:
            return
        finished = [item for item in done if item.future.status == "finished"]
        by_key: dict[str, Any] = {}
        try:  # one round trip for the lot
            by_key = dict(
                zip([i.future.key for i in finished], client.gather([i.future for i in finished]), strict=True)
            )
        except Exception:
            for i in finished:  # one of them is gone (its dask worker died since): the others one by one
                try:
                    by_key[i.future.key] = client.gather(i.future)
                except Exception:
                    pass  # settled as lost below
        for item in done:
            result = by_key.get(item.future.key)
            if isinstance(result, CallResult):
                self._commit(shell, item, result)
            else:
                self._lost(shell, item)
            del self._inflight[item.job.id]
        self._record()

    def _commit(self, shell: Shell, item: _InFlight, result: CallResult) -> None:
        job, task = item.job, item.task
        kind = (result.error or {}).get("kind")
        if kind == "shutdown":
            requeue(job)  # interrupted by a drain that then saw it end: not an attempt
            return
        if kind == "canceled" and _release_settled(shell.queue, job):
            shell.jobs_done += 1
            return
        stop = settle_outcome(job, task, result, shell.id)
        shell.jobs_done += 1
        if stop:
            shell.stop(stop)

    def _lost(self, shell: Shell, item: _InFlight) -> None:
        try:
            exc: BaseException | None = item.future.exception(timeout=10)
        except Exception as err:  # the scheduler is gone, or it was canceled
            exc = err
        where = f"a dask worker ({type(exc).__name__}: {exc})" if exc is not None else "a dask worker"
        log.warning("job %s: its run on dask was lost (%s)", item.job.id, where)
        job = item.job
        if _release_settled(shell.queue, job):
            return  # canceled meanwhile: nothing to re-run
        lose_task(job, item.task, worker=shell.id, host=None, max_lost=shell.max_lost, what="dask workers that died")
        shell.jobs_done += 1

    def _drop_all(self, shell: Shell, client: Any) -> None:
        """Put back every task still in flight (the drain's grace is over, or the loop failed)."""
        if not self._inflight:
            return
        ids = list(self._inflight)
        log.warning("putting %d unfinished task(s) back in the queue: %s", len(ids), ", ".join(ids))
        try:
            client.cancel([item.future for item in self._inflight.values()])
            client.run(_shut_down, ids)
        except Exception as exc:  # the cluster may be what failed
            log.warning("could not interrupt the tasks on dask: %s", exc)
        for item in self._inflight.values():
            requeue(item.job)  # not counted as an attempt
        self._inflight.clear()
        self._record()


class DaskWorker(Worker):
    """A worker whose claimed tasks run on a dask cluster.

    ``queue``: a :class:`~fs_task_queue.Queue` or its path. ``client``: a
    :class:`distributed.Client`; or ``address``: a scheduler address; with
    neither, dask's ``scheduler-address`` config, else a LocalCluster
    (``cluster_options`` are passed to it). ``in_flight_per_thread``: how many
    claimed-but-unfinished tasks per dask thread (backpressure). The other
    options are :class:`~fs_task_queue.worker.Worker`'s (``isolation``,
    ``max_tasks_per_child`` and ``memory_limit`` do not apply: dask runs the
    tasks).

    >>> DaskWorker("path/to/queue", address="tcp://scheduler:8786").run()  # doctest: +SKIP
    """

    def __init__(
        self,
        queue: Queue | str | os.PathLike[str],
        client: Any = None,
        *,
        address: str | None = None,
        in_flight_per_thread: float = DEFAULT_IN_FLIGHT_PER_THREAD,
        cluster_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        for ignored in ("isolation", "max_tasks_per_child", "memory_limit", "executor"):
            if options.get(ignored) not in (None, "process"):
                raise ValueError(f"DaskWorker does not take {ignored}={options[ignored]!r}: dask runs the tasks")
            options.pop(ignored, None)
        self.dask = DaskExecutor(
            client, address=address, in_flight_per_thread=in_flight_per_thread, cluster_options=cluster_options
        )
        super().__init__(queue, executor=self.dask, **options)
