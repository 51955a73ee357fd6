"""Progress reports and metadata about jobs, as the client reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["JobInfo", "Progress", "WorkerInfo"]


@dataclass(frozen=True)
class Progress:
    """The last progress a task reported with :func:`fs_task_queue.progress`."""

    done: float
    total: float | None = None
    message: str | None = None
    updated_at: float = 0.0

    @property
    def fraction(self) -> float | None:
        """``done / total`` clipped to [0, 1], or None without a total."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


@dataclass(frozen=True)
class JobInfo:
    """When and where a job ran (None for what has not happened yet)."""

    id: str
    status: str
    function: str | None = None
    enqueued_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    worker: str | None = None
    host: str | None = None
    attempt: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: Earlier attempts (retries, lost workers): dicts with attempt, worker, host, outcome, times.
    history: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class WorkerInfo:
    """A worker registered in ``workers/`` and what it is running."""

    id: str
    host: str | None
    pid: int | None
    started_at: float | None
    version: str | None
    heartbeat_age: float | None
    running: tuple[str, ...] = ()
    #: For a worker in a SLURM job: its job id, partition and end time (epoch seconds, as last learned).
    slurm_job_id: str | None = None
    partition: str | None = None
    slurm_end_time: float | None = None
    #: How its Python or fs-task-queue version differs from its submitter's ("" if alike or not known).
    mismatch: str = ""
