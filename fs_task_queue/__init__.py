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
    HostKeyError,
    InsecureQueueError,
    JobCanceledError,
    JobError,
    JobTimeoutError,
    NoSuchJobError,
    PythonVersionMismatchError,
    QueueError,
    RemoteConnectionError,
    RemoteError,
    SerializationError,
    SymlinkInQueueError,
    WaitTimeoutError,
    WorkerError,
    WorkerLostError,
)
from fs_task_queue.group import JobGroup
from fs_task_queue.job import Job
from fs_task_queue.progress import JobInfo, Progress, WorkerInfo
from fs_task_queue.queue import Queue
from fs_task_queue.runtime import current_job, progress
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.executor import JobFuture, QueueExecutor
    from fs_task_queue.worker import Worker

__all__ = [
    "CorruptFileError",
    "FSQError",
    "HostKeyError",
    "InsecureQueueError",
    "SymlinkInQueueError",
    "Job",
    "JobCanceledError",
    "JobError",
    "JobFuture",
    "JobGroup",
    "JobInfo",
    "JobStatus",
    "JobTimeoutError",
    "NoSuchJobError",
    "Progress",
    "PythonVersionMismatchError",
    "Queue",
    "QueueError",
    "RemoteConnectionError",
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
    # Imported only when asked for, so a client (a notebook that only submits)
    # does not load the worker (supervise, board, recovery...) and a worker
    # does not load concurrent.futures.
    if name in ("JobFuture", "QueueExecutor"):
        from fs_task_queue import executor

        return getattr(executor, name)
    if name == "Worker":
        from fs_task_queue.worker import Worker

        return Worker
    raise AttributeError(f"module 'fs_task_queue' has no attribute {name!r}")
