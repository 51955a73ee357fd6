"""Running one claimed task: read and verify it, call it, commit its outcome.

The steps are separate so that the call itself can run in another process:
:func:`read_task` and :func:`commit` need the queue; :func:`call_task` needs only
the task bytes and a :class:`~fs_task_queue.runtime.TaskContext`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fs_task_queue import layout
from fs_task_queue.errors import CorruptFileError, PythonVersionMismatchError, SerializationError
from fs_task_queue.faults import crash_point
from fs_task_queue.liveness import host_name
from fs_task_queue.runtime import TaskContext
from fs_task_queue.serialize import TASK_MAGIC, dumps, loads, open_envelope, python_version, seal
from fs_task_queue.shards import move_to_queued
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.job import Job

__all__ = [
    "CallResult",
    "Task",
    "attempt_record",
    "call_task",
    "commit",
    "outcome_record",
    "publish_outcome",
    "seal_outcome",
    "quarantine",
    "read_claimed",
    "read_task",
    "release",
    "requeue",
    "run_claimed",
]

log = logging.getLogger("fs_task_queue.worker")
# FSQ_HOST_ID names this host in records, as it does for liveness decisions.
_HOST = host_name()
# Enum .value is a property lookup; this runs for every task.
_STATUS_TEXT = {status: status.value for status in JobStatus}


@dataclass
class Task:
    """A verified task file."""

    job_id: str
    name: str
    header: dict[str, Any]
    payload: bytes

    @property
    def options(self) -> dict[str, Any]:
        """The task options given at submission (read-only)."""
        opts: dict[str, Any] = self.header.get("opt") or {}
        return opts


@dataclass
class CallResult:
    """What running a task produced: a status, an error record and a payload."""

    status: JobStatus
    payload: bytes = b""
    error: dict[str, Any] | None = None
    started: float = 0.0
    ended: float = 0.0


def read_task(job: Job) -> Task:
    """Read and verify the claimed task file of ``job`` (raises CorruptFileError)."""
    assert job._name is not None and job._claimed_by is not None
    path = layout.claimed_path(job._claimed_by, job._name)
    try:
        data = job.queue.storage.read(path)
    except (IsADirectoryError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptFileError(f"the task file of job {job.id} cannot be read as a file: {exc}") from None
    env = open_envelope(TASK_MAGIC, job.queue._key, job.id, data)
    crash_point("after-read")
    return Task(job.id, job._name, env.header, env.payload)


def error_record(exc: BaseException, kind: str = "remote", skip_frames: int = 0) -> dict[str, Any]:
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    tb = exc.__traceback__
    for _ in range(skip_frames):  # hide the worker's own frames from the user
        if tb is not None:
            tb = tb.tb_next
    # Runners of user code (a notebook cell's) mark their frames as pytest and IPython do.
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_locals.get("__tracebackhide__"):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(cls, exc, tb))
    return {"kind": kind, "type": name, "message": str(exc), "traceback": text}


def _pickled_exception(exc: BaseException) -> bytes:
    # Only ship the exception if it also unpickles, or the client would trade
    # a readable error for an unpickling one.
    try:
        data = dumps(exc, "the exception")
        loads(data, "the exception")
    except Exception:
        return b""
    return data


def failed(exc: BaseException, kind: str = "remote", skip_frames: int = 0) -> CallResult:
    payload = _pickled_exception(exc)
    return CallResult(JobStatus.FAILED, payload, error_record(exc, kind, skip_frames))


_functions: OrderedDict[bytes, Any] = OrderedDict()


def _load_function(data: bytes) -> Any:
    # Tasks from one map() share their function bytes: unpickle them once.
    func = _functions.get(data)
    if func is None:
        func = loads(data, "the task's function")
        _functions[data] = func
        if len(_functions) > 64:
            _functions.popitem(last=False)
    return func


def call_task(task: Task, ctx: TaskContext) -> CallResult:
    """Unpickle and call the task in this process, capturing output; never raises."""
    started = time.time()
    result = _call(task, ctx)
    result.started, result.ended = started, time.time()
    return result


def _call(task: Task, ctx: TaskContext) -> CallResult:
    theirs, ours = task.header.get("py"), python_version()
    if theirs != ours:
        return failed(
            PythonVersionMismatchError(
                f"job {task.job_id} was submitted from Python {theirs} but this worker runs Python {ours}:"
                f" run workers with Python {theirs} (pickles do not cross minor versions safely)"
            ),
            kind="version",
        )
    try:
        split = int(task.header.get("fl", 0))
        func = _load_function(task.payload[:split])
        args, kwargs = loads(task.payload[split:], "the task's arguments")
    except SerializationError as exc:
        return failed(exc, kind="serialization")
    with ctx.activate():
        try:
            value = func(*args, **kwargs)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from a task fail only it
            return failed(exc, skip_frames=1)
    try:
        return CallResult(JobStatus.FINISHED, dumps(value, "the result"))
    except SerializationError as exc:
        return failed(exc, kind="serialization")


def attempt_record(task: Task, worker: str | None, result: CallResult | None, outcome: str) -> dict[str, Any]:
    """One line of a job's attempt history."""
    record: dict[str, Any] = {
        "attempt": int(task.header.get("attempt", 1)),
        "worker": worker,
        "host": _HOST if result is not None else None,
        "outcome": outcome,
    }
    if result is not None:
        record["start"], record["end"] = result.started, result.ended
        if result.error:
            record["error"] = f"{result.error.get('type')}: {result.error.get('message')}"
    return record


def outcome_record(job: Job, task: Task | None, result: CallResult, *, worker: str | None = None) -> dict[str, Any]:
    """The header of the result file of ``job`` (what ran, when, where, how it ended)."""
    header = task.header if task is not None else {}
    record: dict[str, Any] = {
        "status": _STATUS_TEXT[result.status],
        "id": job.id,
        "fn": header.get("fn"),
        "enq": header.get("at"),
        "start": result.started,
        "end": result.ended,
        "worker": worker or job._claimed_by,
        "host": _HOST,
        "attempt": int(header.get("attempt", 1)),
    }
    history = header.get("hist")
    if history:
        record["hist"] = history
    meta = (header.get("opt") or {}).get("metadata")
    if meta:
        record["meta"] = meta
    if result.error is not None:
        record["error"] = result.error
    return record


def commit(job: Job, task: Task | None, result: CallResult, *, worker: str | None = None) -> bool:
    """Publish the outcome of a claimed job and release the claim; False if it already had one."""
    data = seal_outcome(job, outcome_record(job, task, result, worker=worker), result.payload)
    return publish_outcome(job, data, failed=result.status is JobStatus.FAILED)


def seal_outcome(job: Job, record: dict[str, Any], payload: bytes) -> bytes:
    """The signed bytes of the result file of ``job``."""
    from fs_task_queue.job import Outcome

    return Outcome.seal(job.queue, job.id, record, payload)


def publish_outcome(job: Job, data: bytes, *, failed: bool, on_published: Callable[[], None] | None = None) -> bool:
    """Publish the sealed outcome ``data`` of a claimed job and release the claim; False if it already had one.

    The result file is published without replacing: if a canceler or another
    worker (this one was presumed dead) committed first, this outcome is dropped.
    The task file is kept: in ``failed/`` for a ``failed`` job (so it can be
    requeued), in ``done/`` otherwise; purging the job deletes it.
    ``on_published`` is called once the result file is in place, before the
    task file moves (a claim whose job has a result is only tidying left).
    """
    queue = job.queue
    crash_point("before-commit")
    try:
        try:
            queue.storage.publish(layout.result_path(job.id), data, replace=False)
        except FileExistsError:
            if queue._has_outcome(job.id):
                raise
            # The file in the way failed verification and was quarantined: it
            # was nobody's outcome, so this one is the job's first.
            queue.storage.publish(layout.result_path(job.id), data, replace=False)
    except FileExistsError:
        log.info("job %s already has an outcome (canceled or run elsewhere); dropping this one", job.id)
        if on_published is not None:
            # Settled all the same: the job has its one outcome. Not calling it
            # made the worker take the drop for a refused write and stop.
            on_published()
        release(job)
        return False
    crash_point("after-commit")
    if on_published is not None:
        on_published()
    # The task file is kept (moved, not deleted: see layout.DONE_TASKS).
    keep = layout.failed_task_path if failed else layout.done_task_path
    release(job, keep_as=keep(job._name or job.id))
    crash_point("after-release")
    return True


def requeue(job: Job, task: Task | None = None, updates: dict[str, Any] | None = None, delay: float = 0.0) -> None:
    """Put a claimed task back in the queue (``updates`` go into its header, re-signed).

    Without updates the claimed file is just renamed back: a task interrupted by
    a worker shutdown loses nothing and is not counted as an attempt.
    """
    assert job._claimed_by is not None and job._name is not None
    storage = job.queue.storage
    claimed = layout.claimed_path(job._claimed_by, job._name)
    if not updates and delay <= 0:
        try:
            move_to_queued(storage, claimed, job._name)
        except FileNotFoundError:
            log.warning("job %s was taken from this worker before it could be requeued", job.id)
        return
    assert task is not None, "a task is needed to rewrite its header"
    header = {**task.header, **(updates or {})}
    if delay > 0:
        header["nb"] = time.time() + delay
        storage.mkdir(layout.DELAYED)
    # Rewrite the claimed file in place, then move it with one rename: the task
    # exists as exactly one file at every instant, so a crash in between leaves
    # it to recovery and never makes a second copy.
    storage.publish(claimed, seal(TASK_MAGIC, job.queue._key, job.id, header, task.payload), replace=True)
    try:
        if delay > 0:
            storage.rename(claimed, layout.delayed_path(job._name))
        else:
            move_to_queued(storage, claimed, job._name)
    except FileNotFoundError:
        log.warning("job %s was taken from this worker before it could be requeued", job.id)


def release(job: Job, keep_as: str | None = None) -> None:
    """Remove the claimed task file of ``job`` (or move it to ``keep_as``).

    It may be gone already if this worker was presumed dead and recovery moved it.
    """
    assert job._claimed_by is not None and job._name is not None
    claimed = layout.claimed_path(job._claimed_by, job._name)
    storage = job.queue.storage
    try:
        if keep_as is None:
            storage.remove(claimed)
        else:
            try:
                storage.rename(claimed, keep_as)
            except FileNotFoundError:
                if not storage.exists(claimed):
                    raise
                # A queue made by an older version lacks the target folder.
                storage.mkdir(keep_as.rpartition("/")[0])
                storage.rename(claimed, keep_as)
    except FileNotFoundError:
        log.warning("job %s was taken from this worker (presumed dead?) before it finished", job.id)


def quarantine(job: Job, exc: Exception) -> None:
    """Move an unreadable task file to ``quarantine/`` and fail its job with the reason."""
    assert job._claimed_by is not None and job._name is not None
    log.error("quarantining task %s: %s", job._name, exc)
    try:
        job.queue.storage.rename(layout.claimed_path(job._claimed_by, job._name), f"{layout.QUARANTINE}/{job._name}")
    except FileNotFoundError:
        return
    except OSError as err:  # a name that exists in quarantine already: just drop it
        log.error("could not quarantine %s: %s", job._name, err)
        release(job)
    result = failed(CorruptFileError(f"{exc} (moved to {layout.QUARANTINE}/{job._name})"), kind="corrupt")
    result.started = result.ended = time.time()
    data = seal_outcome(job, {"status": "failed", "id": job.id, "error": result.error}, result.payload)
    with contextlib.suppress(FileExistsError, OSError):
        job.queue.storage.publish(layout.result_path(job.id), data, replace=False)


def read_claimed(job: Job) -> Task | None:
    """Read a claimed task; quarantine it if unreadable. None when there is nothing to run."""
    try:
        return read_task(job)
    except FileNotFoundError:
        log.warning("claimed task %s vanished before it could be read", job.id)
    except CorruptFileError as exc:
        quarantine(job, exc)
    return None


def run_claimed(job: Job) -> None:
    """Run a claimed job in this process from start to commit."""
    task = read_claimed(job)
    if task is None:
        return
    result = call_task(task, TaskContext(job.queue, job.id, name=job._name))
    commit(job, task, result)
