"""The states a job moves through."""

from __future__ import annotations

from enum import Enum

__all__ = ["JobStatus"]


class JobStatus(str, Enum):
    """A job's state. Compares equal to its lower-case string value (``"queued"``...).

    QUEUED -> STARTED -> FINISHED | FAILED, and QUEUED/STARTED -> CANCELED.
    """

    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_done(self) -> bool:
        """True for the terminal states (finished, failed, canceled)."""
        return self in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED)

    def __str__(self) -> str:
        return self.value
