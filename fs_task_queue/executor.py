"""A :class:`concurrent.futures.Executor` backed by a queue.

Code that accepts an executor (``executor.map``, ``as_completed``, joblib-style
helpers, ``loop.run_in_executor``) can send its work to the queue's workers.
One background thread watches ``results/`` for all of an executor's futures.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

from fs_task_queue import layout
from fs_task_queue.errors import FSQError
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.job import Job
    from fs_task_queue.queue import Queue

__all__ = ["JobFuture", "QueueExecutor"]

# Past this many pending futures a timer wake lists results/ once instead of
# opening every pending result file.
_LIST_THRESHOLD = 64


class JobFuture(Future[Any]):
    """A Future for a queued job; ``.job`` is the :class:`~fs_task_queue.job.Job`."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job = job
        self._cancel_lock = threading.Lock()

    def cancel(self) -> bool:
        """Cancel the job in the queue (queued or running) and this future."""
        if self.done():
            return False
        if not self.job.cancel() and self.job.done():
            return False  # it finished first: the watcher will deliver its result
        return self._cancel_and_notify()

    def _cancel_and_notify(self) -> bool:
        # Future.cancel() alone wakes result() but not concurrent.futures.wait()
        # or as_completed(): their waiters hear of a cancel only through
        # set_running_or_notify_cancel(), which an executor must call.
        with self._cancel_lock:  # the user's thread and the watcher's may both cancel
            if self.cancelled():
                return True
            if not super().cancel():
                return False
            self.set_running_or_notify_cancel()
            return True

    def running(self) -> bool:
        """True while a worker runs the job (asks the queue: the future is never set running)."""
        return not self.done() and self.job.get_status() is JobStatus.STARTED


def run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """Call ``fn(*args)`` for each ``args`` of ``chunk``: one task of ``QueueExecutor.map(chunksize=N)``."""
    return [fn(*args) for args in chunk]


class QueueExecutor(Executor):
    """Submit calls to ``queue``; ``options`` (timeout, retries, metadata...) apply to each."""

    def __init__(self, queue: Queue, **options: Any) -> None:
        if "job_id" in options:
            # One id for every submission: the second would collide with the first.
            raise ValueError(
                "QueueExecutor does not take job_id: every submission needs its own id."
                " Use queue.enqueue_call(fn, args, kwargs, job_id=...) to name a single job"
            )
        self.queue = queue
        self.options = options
        self._pending: dict[str, JobFuture] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._shutdown = False
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> JobFuture:
        if self._shutdown:
            raise RuntimeError("cannot submit to a QueueExecutor after shutdown()")
        return self._track([self.queue.enqueue_call(fn, args, kwargs, **self.options)])[0]

    def _track(self, jobs: list[Job]) -> list[JobFuture]:
        futures = [JobFuture(job) for job in jobs]
        with self._lock:
            self._pending.update((f.job.id, f) for f in futures)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="fsq-executor", daemon=True)
                self._thread.start()
        self._wake.set()
        return futures

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """Like :meth:`concurrent.futures.Executor.map`, submitting every call at once.

        The calls go in with one bulk submission (:meth:`Queue.enqueue_many`),
        much faster than one ``submit`` each. ``chunksize=N`` runs N calls per
        task, as ``ProcessPoolExecutor.map`` does: for many tiny calls it
        divides the per-task cost (files, worker round trips) by N. Results
        come in order; the first failed call raises when its result is reached.
        """
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize!r}")
        if self._shutdown:
            raise RuntimeError("cannot submit to a QueueExecutor after shutdown()")
        end = None if timeout is None else time.monotonic() + timeout
        calls = list(zip(*iterables, strict=False))
        if chunksize == 1:
            jobs = self.queue.enqueue_many(fn, ((args, {}) for args in calls), **self.options)
        else:
            # functools.partial pickles fn once, shared by every chunk's task file.
            chunks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
            runner = functools.partial(run_chunk, fn)
            jobs = self.queue.enqueue_many(runner, (((chunk,), {}) for chunk in chunks), **self.options)
        futures = self._track(jobs)

        def results() -> Iterator[Any]:
            reached = 0
            try:
                while reached < len(futures):
                    value = futures[reached].result(None if end is None else end - time.monotonic())
                    reached += 1
                    yield value
            finally:
                # Left early (an error, a timeout, the caller stopped): like
                # Executor.map, cancel the calls whose results nobody will read.
                for future in futures[reached:]:
                    future.cancel()

        return results() if chunksize == 1 else itertools.chain.from_iterable(results())

    def _settle(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            future = self._pending.get(job_id)
            if future is None:
                continue
            try:
                outcome = future.job._load_outcome()
            except FSQError as exc:  # a corrupt result is this future's error
                self._finish(job_id, future, None, exc)
                continue
            if outcome is not None and outcome.status is JobStatus.CANCELED:
                with self._lock:
                    self._pending.pop(job_id, None)
                future._cancel_and_notify()  # a canceled job is a cancelled future, not an error
                continue
            if outcome is not None:
                try:
                    value, error = None, outcome.error()
                    if error is None:
                        value = outcome.value()
                except FSQError as exc:
                    error = exc
                self._finish(job_id, future, value, error)

    def _finish(self, job_id: str, future: JobFuture, value: Any, error: BaseException | None) -> None:
        with self._lock:
            self._pending.pop(job_id, None)
        with future._cancel_lock:
            if future.cancelled() or not future.set_running_or_notify_cancel():
                return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def _watch(self) -> None:
        with self.queue.storage.watcher(layout.RESULTS) as watcher:
            while True:
                with self._lock:
                    pending = list(self._pending)
                    if not pending and self._shutdown:
                        return
                if not pending:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                if len(pending) > _LIST_THRESHOLD:
                    present = set(self.queue._list(layout.RESULTS))
                    pending = [j for j in pending if j in present]
                self._settle(pending)
                while True:
                    changed = watcher.wait(1.0)
                    if changed is None:
                        break
                    with self._lock:
                        hits = [j for j in changed if j in self._pending]
                    if hits:
                        self._settle(hits)
                    if not self._pending:
                        break

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``wait`` block until every submitted job is done."""
        self._shutdown = True
        if cancel_futures:
            for future in list(self._pending.values()):
                future.cancel()
        self._wake.set()
        if wait and self._thread is not None:
            self._thread.join()
