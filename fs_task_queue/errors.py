"""The exception tree of fs-task-queue.

Every error the library raises derives from :class:`FSQError`, and where a builtin
exception already describes the problem the error derives from it too, so callers
can catch either::

    FSQError
    ├── QueueError                 (ValueError)   path is not a usable queue
    │   └── InsecureQueueError                     permissions let others write
    │       └── SymlinkInQueueError    (OSError)  a queue folder is a symlink
    ├── NoSuchJobError             (KeyError)     unknown job id
    ├── SerializationError         (TypeError)    function/argument/result cannot be pickled
    │   └── ShipError                              notebook variables a %%fsq cell needs cannot be shipped
    ├── CorruptFileError           (ValueError)   a queue file is truncated, foreign or tampered
    ├── PythonVersionMismatchError (RuntimeError) submitter and worker Python differ
    ├── WaitTimeoutError           (TimeoutError) ``job.wait(timeout=...)`` ran out
    ├── RemoteConnectionError   (ConnectionError) an SSH queue's host cannot be reached or logged into
    │   └── HostKeyError                          its host key is unknown or changed
    └── JobError                                  a job did not produce a result
        ├── RemoteError                           the task raised on the worker
        ├── JobCanceledError                      the job was canceled
        ├── JobTimeoutError        (TimeoutError) the task ran past its timeout
        └── WorkerLostError                       workers running it kept dying

Not an error, hence outside the tree: :class:`WaitInterrupted` (a ``KeyboardInterrupt``)
stops a notebook's wait for a job, never the job, and says how to get it later.

All of them pickle and unpickle to an equal error (they keep their constructor
arguments in ``args``), so they cross process boundaries intact.
"""

from __future__ import annotations

import errno
from typing import Any, TypeVar

__all__ = [
    "CorruptFileError",
    "FSQError",
    "InsecureQueueError",
    "JobCanceledError",
    "JobError",
    "JobTimeoutError",
    "NoSuchJobError",
    "PythonVersionMismatchError",
    "HostKeyError",
    "QueueError",
    "RemoteConnectionError",
    "RemoteError",
    "SerializationError",
    "ShipError",
    "SlurmError",
    "SymlinkInQueueError",
    "WaitInterrupted",
    "WaitTimeoutError",
    "WorkerError",
    "WorkerLostError",
    "cli_fix",
]


class FSQError(Exception):
    """Base class of every error raised by fs-task-queue.

    A message whose fix is a Python call (``create it with Queue('/q')``) also
    carries that fix as the command line says it (``fs-task-queue create /q``):
    see :func:`cli_fix` and :meth:`for_cli`. The message is written once; only
    the fix has two wordings.
    """

    #: (Python wording, command-line wording) pairs, set by :func:`cli_fix`.
    cli_fixes: tuple[tuple[str, str], ...] = ()

    def for_cli(self) -> str:
        """The message as the command line shows it: each Python fix replaced by its command."""
        text = str(self)
        for python, command in self.cli_fixes:
            text = text.replace(python, command)
        return text


_E = TypeVar("_E", bound=FSQError)


def cli_fix(exc: _E, python: str, command: str) -> _E:
    """Return ``exc``, noting that the command line says ``python`` (a part of its message) as ``command``.

    Kept in the instance's ``__dict__``, which pickling keeps, so the fix
    survives the trip from a task process or an SSH helper.
    """
    exc.cli_fixes = (*exc.cli_fixes, (python, command))
    return exc


class QueueError(FSQError, ValueError):
    """The path cannot be used as a queue (a file, unwritable, not a queue, newer format)."""


class InsecureQueueError(QueueError):
    """The queue directory can be written by other users, so its tasks cannot be trusted."""


class SymlinkInQueueError(InsecureQueueError, OSError):
    """A folder inside the queue (``queued/<shard>``, ``claimed/<worker>``, ``jobs/<id>``...) is a symlink.

    Nothing is read, written or deleted through it: whoever planted it could
    otherwise point the queue's writes or deletions at any folder. It is also
    an ``OSError`` (errno ELOOP, ``filename`` the path), so code that treats a
    failed file operation as "skip this one" does so.
    """

    def __init__(self, path: str, message: str | None = None) -> None:
        if message is None:
            message = (
                f"{path} is a symlink, not a folder: fs-task-queue never reads, writes or deletes"
                " through a symlink inside a queue. Remove the link (nothing of the queue is in it)"
            )
        OSError.__init__(self, errno.ELOOP, message, path)
        self.args = (path, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), tuple(self.args))

    def __str__(self) -> str:
        return str(self.args[1])


class NoSuchJobError(FSQError, KeyError):
    """No job with this id exists in the queue."""

    def __str__(self) -> str:  # KeyError quotes its argument; a sentence reads better
        return str(self.args[0]) if self.args else "no such job"


class SerializationError(FSQError, TypeError):
    """A function, argument or result cannot be pickled (or unpickled)."""


class ShipError(SerializationError):
    """Values a ``%%fsq`` cell reads from the notebook cannot be pickled (all are named); nothing was submitted."""


class WaitInterrupted(KeyboardInterrupt):
    """The user interrupted a notebook's wait for a job (or group); the job goes on.

    ``lines`` say where it runs and how to pull or cancel it; IPython shows
    them instead of a traceback. A KeyboardInterrupt, so "Run All" stops.
    """

    def __init__(self, *lines: str) -> None:
        super().__init__(*lines)
        self.lines = lines

    def __str__(self) -> str:
        return "\n".join(self.lines)

    def _render_traceback_(self) -> list[str]:
        return list(self.lines)


class CorruptFileError(FSQError, ValueError):
    """A file in the queue is empty, truncated, foreign, tampered with or wrongly signed."""


class PythonVersionMismatchError(FSQError, RuntimeError):
    """The task was pickled by a Python whose major.minor differs from the worker's."""


class WaitTimeoutError(FSQError, TimeoutError):
    """Waiting for a job ran out of time; the job itself goes on."""


class RemoteConnectionError(FSQError, ConnectionError):
    """An SSH queue's host cannot be reached, refused the login, or the connection broke.

    An ``OSError`` too: code that treats a failed file operation as "try again
    later" does so. The message names the host and the fix.
    """

    def __init__(self, message: str) -> None:
        # One argument, kept whole: OSError would read two as (errno, strerror).
        ConnectionError.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), tuple(self.args))


class HostKeyError(RemoteConnectionError):
    """The SSH host's key is not in known_hosts, or differs from the one there (never accepted silently)."""


class WorkerError(FSQError, RuntimeError):
    """A worker cannot go on (for example its task process dies before running any task)."""


class SlurmError(FSQError, RuntimeError):
    """A SLURM command failed or is missing (``sbatch``, ``squeue``): the message quotes SLURM's own words."""


class JobError(FSQError):
    """A job ended without a result. ``job_id`` names it when known."""

    def __init__(self, message: str, job_id: str | None = None) -> None:
        # Not super(): in a remote_error_class() combination the next class is
        # the user's exception, whose constructor takes other arguments.
        Exception.__init__(self, message, job_id)
        self.message = message
        self.job_id = job_id

    def __str__(self) -> str:
        return self.message


class JobCanceledError(JobError):
    """The job was canceled before it produced a result."""


class WorkerLostError(JobError):
    """Workers running the job died too many times; it was failed so it cannot loop forever."""


class JobTimeoutError(JobError, TimeoutError):
    """The task ran longer than its timeout and was killed."""


class RemoteError(JobError):
    """The task raised an exception on the worker.

    ``remote_type`` is the exception's qualified type name, ``remote_message`` its
    message and ``remote_traceback`` the full traceback text formatted on the worker.
    When the original exception object could be unpickled in the client it is
    attached as ``__cause__``, and the error raised is an instance of a subclass
    of both RemoteError and the original type (see :func:`remote_error_class`),
    so ``except ZeroDivisionError`` works.
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
        job_id: str | None = None,
    ) -> None:
        super().__init__(f"{remote_type}: {remote_message}", job_id)
        self.args = (remote_type, remote_message, remote_traceback, job_id)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        where = f" in job {self.job_id}" if self.job_id else ""
        return (
            f"{self.remote_type}: {self.remote_message}{where}\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"
        )

    def _render_traceback_(self) -> list[str]:
        """Show the worker's traceback in IPython instead of the local frames."""
        where = f" (job {self.job_id})" if self.job_id else ""
        return [f"Remote traceback{where}:", *self.remote_traceback.rstrip().splitlines()]


def _reduce_with_args(self: Exception) -> tuple[Any, ...]:
    return (type(self), tuple(self.args), self.__dict__ or None)


# Exceptions with keyword-free constructors pickle via ``args`` already; the ones
# above that rewrite ``args`` or add attributes need a reduce that restores state.
for _cls in (JobError, RemoteError):
    _cls.__reduce__ = _reduce_with_args  # type: ignore[method-assign,assignment]


_remote_classes: dict[type[BaseException], type[RemoteError]] = {}


def _rebuild_remote(base: type[BaseException], args: tuple[Any, ...]) -> RemoteError:
    return remote_error_class(base)(*args)


def remote_error_class(base: type[BaseException] | None) -> type[RemoteError]:
    """A RemoteError subclass that is also a ``base``, so ``except base`` catches it.

    Falls back to plain RemoteError where the two cannot be combined (builtin
    layout conflicts, BaseException-only types).
    """
    if base is None or not issubclass(base, Exception) or issubclass(base, JobError):
        return RemoteError
    cls = _remote_classes.get(base)
    if cls is None:
        try:
            cls = type(
                f"Remote{base.__name__}",
                (RemoteError, base),
                {
                    "__module__": __name__,
                    "__reduce__": lambda self: (_rebuild_remote, (base, tuple(self.args)), self.__dict__ or None),
                    "__init__": RemoteError.__init__,
                    "__str__": RemoteError.__str__,
                },
            )
        except TypeError:
            cls = RemoteError
        _remote_classes[base] = cls
    return cls
