"""Many jobs handled as one: what ``queue.map`` and ``queue.enqueue_many`` return.

A :class:`JobGroup` is a ``list`` of :class:`~fs_task_queue.job.Job`, so code
that indexes or loops over the jobs keeps working, with the calls one wants for
a sweep: counts per state, :meth:`~JobGroup.wait`, :meth:`~JobGroup.results`
in order, :meth:`~JobGroup.as_completed`, and a summary in notebooks. Its
states come from :meth:`Queue.snapshot <fs_task_queue.queue.Queue.snapshot>`,
so watching 1,000 jobs costs a few listings per look, not thousands of reads.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, SupportsIndex, overload

from fs_task_queue import layout
from fs_task_queue.errors import WaitTimeoutError
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.job import Job
    from fs_task_queue.queue import Queue

__all__ = ["JobGroup"]

_ORDER = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED)


class JobGroup(list["Job"]):
    """Jobs of one queue, in submission order (a ``list`` of :class:`~fs_task_queue.job.Job`)."""

    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        super().__init__(jobs)
        #: When the group was made (for throughput and ETA).
        self.created_at = time.time()

    @overload
    def __getitem__(self, index: SupportsIndex) -> Job: ...

    @overload
    def __getitem__(self, index: slice) -> JobGroup: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Job | JobGroup:
        """A job, or for a slice a :class:`JobGroup` of those jobs (its summary and widget, not a bare list)."""
        if isinstance(index, slice):
            part = JobGroup(super().__getitem__(index))
            part.created_at = self.created_at  # throughput and ETA count from the submission
            return part
        return super().__getitem__(index)

    @property
    def queue(self) -> Queue | None:
        """The queue of the jobs (None for an empty group)."""
        return self[0].queue if self else None

    def states(self) -> dict[str, Any]:
        """Each job's :class:`~fs_task_queue.snapshot.JobState`, by job id."""
        queue = self.queue
        return {} if queue is None else queue.snapshot(self)

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state (``{"queued": 3, "started": 1, "finished": 6, ...}``)."""
        found = Counter(state.status for state in self.states().values())
        return {status.value: found[status] for status in _ORDER}

    def done(self) -> bool:
        """True when every job has finished, failed or been canceled."""
        return all(state.status.is_done for state in self.states().values())

    def as_completed(self, timeout: float | None = None) -> Iterator[Job]:
        """Yield the jobs as they end (finished, failed or canceled), first done first.

        Raises :class:`~fs_task_queue.errors.WaitTimeoutError` if ``timeout``
        seconds pass before every job is done; the jobs go on.
        """
        queue = self.queue
        if queue is None:
            return
        by_id = {job.id: job for job in self}
        pending = set(by_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher = queue._watcher(layout.RESULTS)
        while pending:
            ended = [j for j, s in queue.snapshot(pending, progress=False, details=False).items() if s.status.is_done]
            for job_id in sorted(ended):
                pending.discard(job_id)
                yield by_id[job_id]
            if not pending:
                return
            # Sleep until results/ changes (inotify) or the poll interval passes.
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    counts = self.counts()
                    raise WaitTimeoutError(
                        f"{len(pending)} of {len(self)} jobs are not done after {timeout} s"
                        f" ({_format_counts(counts)}); they go on: wait again, or cancel them with group.cancel()"
                    )
                changed = watcher.wait(left)
                if changed is None or not pending.isdisjoint(changed):
                    break
                watcher.reset()

    def wait(self, timeout: float | None = None) -> JobGroup:
        """Block until every job is done (whatever its outcome); return the group."""
        for _ in self.as_completed(timeout):
            pass
        return self

    def results(self, timeout: float | None = None, *, return_exceptions: bool = False) -> list[Any]:
        """Wait for every job and return their results in order.

        The first failed or canceled job (in order) raises its error, unless
        ``return_exceptions`` puts the errors in the list instead.
        """
        self.wait(timeout)
        out = []
        for job in self:
            error = job.exception()
            if error is not None and not return_exceptions:
                raise error
            out.append(error if error is not None else job.result)
        return out

    def cancel(self) -> int:
        """Cancel every job that is not done yet; return how many this call canceled."""
        return sum(1 for job in self if job.cancel())

    def __repr__(self) -> str:
        if not self:
            return "<JobGroup of 0 jobs>"
        return f"<JobGroup of {len(self)} jobs: {_format_counts(self.counts())}>"

    def _repr_html_(self) -> str:
        from fs_task_queue.reprs import group_html

        return group_html(self)


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "none"
