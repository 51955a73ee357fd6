"""fs-task-queue: a task queue whose only broker is a directory on a shared filesystem.

>>> from fs_task_queue import Queue
>>> queue = Queue("path/to/queue")              # doctest: +SKIP
>>> job = queue.enqueue(operator.add, 1, 2)     # doctest: +SKIP
>>> job.wait()                                  # doctest: +SKIP
3
"""

from typing import TYPE_CHECKING, Any

from fs_task_queue._version import __version__
from fs_task_queue.errors import (
    CorruptFileError,
    FSQError,
    InsecureQueueError,
    JobCanceledError,
    JobError,
    JobTimeoutError,
    NoSuchJobError,
    PythonVersionMismatchError,
    QueueError,
    RemoteError,
    SerializationError,
    SymlinkInQueueError,
    WaitTimeoutError,
    WorkerError,
    WorkerLostError,
)
from fs_task_queue.job import Job
from fs_task_queue.progress import JobInfo, Progress, WorkerInfo
from fs_task_queue.queue import Queue
from fs_task_queue.runtime import current_job, progress

if TYPE_CHECKING:
    from fs_task_queue.executor import JobFuture, QueueExecutor
from fs_task_queue.status import JobStatus
from fs_task_queue.worker import Worker

__all__ = [
    "CorruptFileError",
    "FSQError",
    "InsecureQueueError",
    "SymlinkInQueueError",
    "Job",
    "JobCanceledError",
    "JobError",
    "JobFuture",
    "JobInfo",
    "JobStatus",
    "JobTimeoutError",
    "NoSuchJobError",
    "Progress",
    "PythonVersionMismatchError",
    "Queue",
    "QueueError",
    "QueueExecutor",
    "RemoteError",
    "SerializationError",
    "WaitTimeoutError",
    "WorkerError",
    "Worker",
    "WorkerInfo",
    "WorkerLostError",
    "__version__",
    "current_job",
    "progress",
]


def __getattr__(name: str) -> Any:
    # The executor pulls in concurrent.futures: imported only when asked for,
    # so a worker or a plain client starts faster.
    if name in ("JobFuture", "QueueExecutor"):
        from fs_task_queue import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'fs_task_queue' has no attribute {name!r}")
