"""A handle on one job: its status, result, error, output and progress."""

from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING, Any

from fs_task_queue import layout
from fs_task_queue.errors import (
    CorruptFileError,
    FSQError,
    JobCanceledError,
    JobError,
    JobTimeoutError,
    NoSuchJobError,
    WaitTimeoutError,
    WorkerLostError,
    cli_fix,
    remote_error_class,
)
from fs_task_queue.ids import job_id_of
from fs_task_queue.progress import JobInfo, Progress
from fs_task_queue.serialize import RESULT_MAGIC, TASK_MAGIC, loads, open_envelope, seal
from fs_task_queue.snapshot import claimed_at, parse_progress
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.queue import Queue

__all__ = ["Job", "Outcome"]

_MISSING = object()
_ERROR_KINDS: dict[str, type[JobError]] = {
    "canceled": JobCanceledError,
    "timeout": JobTimeoutError,
    "lost": WorkerLostError,
}


class Outcome:
    """The committed end of a job: the verified content of ``results/<id>``."""

    def __init__(self, job_id: str, header: dict[str, Any], payload: bytes) -> None:
        self.job_id = job_id
        self.header = header
        self.payload = payload
        self.status = JobStatus(header["status"])
        self._value: Any = _MISSING

    @classmethod
    def parse(cls, queue: Queue, job_id: str, data: bytes) -> Outcome:
        env = open_envelope(RESULT_MAGIC, queue._key, job_id, data)
        return cls(job_id, env.header, env.payload)

    @staticmethod
    def seal(queue: Queue, job_id: str, header: dict[str, Any], payload: bytes = b"") -> bytes:
        """The bytes of a result file (``header`` must hold ``status``)."""
        return seal(RESULT_MAGIC, queue._key, job_id, header, payload)

    def value(self) -> Any:
        """The return value of a finished job (unpickled once)."""
        if self._value is _MISSING:
            self._value = loads(self.payload, f"the result of job {self.job_id}")
        return self._value

    def error(self) -> BaseException | None:
        """The exception that describes why the job has no result, or None if it finished."""
        if self.status is JobStatus.FINISHED:
            return None
        err = self.header.get("error") or {}
        kind = err.get("kind", "remote")
        message = err.get("message", "")
        if self.status is JobStatus.CANCELED:
            return JobCanceledError(message or f"job {self.job_id} was canceled", self.job_id)
        if kind in _ERROR_KINDS:
            return _ERROR_KINDS[kind](message, self.job_id)
        original: BaseException | None = None
        if self.payload:
            try:
                candidate = loads(self.payload, "the remote exception")
                if isinstance(candidate, BaseException):
                    original = candidate
            except FSQError:
                original = None  # the type is missing here: the text still tells all
        base = type(original) if original is not None else None
        args = (err.get("type", "Exception"), message, err.get("traceback", ""), self.job_id)
        try:
            remote = remote_error_class(base)(*args)
        except Exception:
            remote = remote_error_class(None)(*args)
        if original is not None:
            remote.__cause__ = original
            if isinstance(remote, type(original)):
                _copy_state(original, remote)
        return remote

    def result(self) -> Any:
        """The value, or raise the error."""
        error = self.error()
        if error is not None:
            raise error
        return self.value()


def _missing_task(job: Job) -> str:
    return (
        f"job {job.id} has no task file (not in queued/, delayed/ or any claimed/<worker>/) and no result in"
        f" {job.queue.path}: its file was deleted by hand. Nothing is left to run: `fs-task-queue requeue"
        f" {job.id}` fails it so waiting clients stop waiting; submit it again to run it"
    )


def _missing_result(job: Job, kept: str) -> str:
    return (
        f"job {job.id} has no result file (results/{job.id} was deleted by hand?) though its task file is kept"
        f" in {kept}: `fs-task-queue requeue {job.id}` runs it again, `fs-task-queue recover` fails it"
    )


def _copy_state(original: BaseException, remote: BaseException) -> None:
    """Give the remote error the original's attributes (``e.code``, ``e.errno``...)."""
    for name, value in vars(original).items():
        if name not in vars(remote):
            setattr(remote, name, value)
    if isinstance(original, OSError) and isinstance(remote, OSError):
        remote.errno, remote.strerror = original.errno, original.strerror
        remote.filename, remote.filename2 = original.filename, original.filename2


class Job:
    """A job in a queue. Get one from :meth:`Queue.enqueue` or :meth:`Queue.job`.

    Status and result are read from the queue directory when asked for; a
    finished job's outcome is cached, since it never changes.
    """

    def __init__(
        self,
        queue: Queue,
        job_id: str,
        *,
        name: str | None = None,
        header: dict[str, Any] | None = None,
        claimed_by: str | None = None,
    ) -> None:
        self.queue = queue
        self.id = job_id
        self._name = name
        self._task_header = header
        self._claimed_by = claimed_by
        #: The claimed/ folder the task file was last seen in (status looks there first).
        self._seen_in: str | None = claimed_by
        self._outcome: Outcome | None = None

    # ----------------------------------------------------------------- status
    def _load_outcome(self) -> Outcome | None:
        if self._outcome is None:
            try:
                data = self.queue.storage.read(layout.result_path(self.id))
            except FileNotFoundError:
                return None
            outcome = Outcome.parse(self.queue, self.id, data)
            if outcome.status is not JobStatus.FAILED:
                self._outcome = outcome  # final: only failed jobs can be requeued
            return outcome
        return self._outcome

    def _resolve(self) -> None:
        """Find the task file name of a reattached job, or raise NoSuchJobError."""
        try:
            if self._name is not None or self._load_outcome() is not None:
                return
        except FSQError:
            return  # a result file that fails verification: the job exists (info() says what is wrong)
        found = self.queue._find_task(self.id)
        if found is None:
            if self._load_outcome() is not None:  # it finished while we looked
                return
            kept = self._kept_task()
            if kept is not None:
                raise NoSuchJobError(_missing_result(self, kept))
            raise cli_fix(
                NoSuchJobError(
                    f"no job {self.id!r} in the queue at {self.queue.path}: check the id"
                    " (queue.jobs() lists the jobs; purged jobs are gone). If its task file was deleted by hand,"
                    f" nothing is left of it: `fs-task-queue requeue {self.id}` fails it so waiting clients stop"
                ),
                "queue.jobs()",
                f"`fs-task-queue jobs {shlex.quote(self.queue.path)}`",
            )
        self._name = found[0]
        self._seen_in = found[1]

    def _kept_task(self) -> str | None:
        """The path of this job's task file in ``done/`` or ``failed/``, if one is kept there."""
        storage = self.queue.storage
        if self._name is not None:
            for path in (layout.done_task_path(self._name), layout.failed_task_path(self._name)):
                if storage.exists(path):
                    return path
            return None
        # A reattached job whose name is unknown: only on this error path, so listing is fine.
        for folder in (layout.DONE_TASKS, layout.FAILED_TASKS):
            for name in self.queue._list(folder):
                if job_id_of(name) == self.id:
                    return f"{folder}/{name}"
        return None

    def _still_claimed(self) -> bool:
        """Whether the task file is in some ``claimed/<worker>/`` (one lookup while it stays where it was)."""
        assert self._name is not None
        storage = self.queue.storage
        if self._seen_in is not None and storage.exists(layout.claimed_path(self._seen_in, self._name)):
            return True
        for worker_id in self.queue._list(layout.CLAIMED):
            if not worker_id.startswith(".") and storage.exists(layout.claimed_path(worker_id, self._name)):
                self._seen_in = worker_id
                return True
        return False

    def get_status(self) -> JobStatus:
        """The job's current status (a :class:`JobStatus`)."""
        outcome = self._load_outcome()
        if outcome is not None:
            return outcome.status
        self._resolve()
        if self._name is None:  # resolved by finding the outcome
            return self._outcome.status  # type: ignore[union-attr]
        storage = self.queue.storage
        # Two rounds: a task moving back from claimed/ to queued/ or delayed/ (a
        # retry, a shutdown, a requeue) between the looks is found by the second.
        for _ in range(2):
            if storage.exists(layout.queued_path(self._name)) or storage.exists(layout.delayed_path(self._name)):
                return JobStatus.QUEUED  # delayed: waiting to be retried
            # Not queued: claimed, or finished since the first look (claim, run and
            # commit only move forward), so look at the outcome once more.
            outcome = self._load_outcome()
            if outcome is not None:
                return outcome.status
            if self._still_claimed():
                return JobStatus.STARTED
            outcome = self._load_outcome()  # committed and moved to done/ meanwhile
            if outcome is not None:
                return outcome.status
        # Neither a task file where one runs or waits nor a result: deleted by
        # hand. Say so, rather than report "started" forever.
        kept = self._kept_task()
        raise NoSuchJobError(_missing_result(self, kept) if kept is not None else _missing_task(self))

    @property
    def status(self) -> JobStatus:
        """Same as :meth:`get_status`."""
        return self.get_status()

    def done(self) -> bool:
        """True once the job has finished, failed or been canceled."""
        return self._load_outcome() is not None

    @property
    def is_finished(self) -> bool:
        return self.get_status() is JobStatus.FINISHED

    @property
    def is_failed(self) -> bool:
        return self.get_status() is JobStatus.FAILED

    # ----------------------------------------------------------------- result
    @property
    def result(self) -> Any:
        """None until the job is done, then its return value; raises if it failed or was canceled."""
        outcome = self._load_outcome()
        return None if outcome is None else outcome.result()

    def _wait_outcome(self, timeout: float | None) -> Outcome:
        outcome = self._load_outcome()
        if outcome is not None:
            return outcome
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher = self.queue._watcher(layout.RESULTS)
        while (outcome := self._load_outcome()) is None:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeoutError(self._still_running_message(timeout))
                changed = watcher.wait(left)
                if changed is None or self.id in changed:
                    break  # look again only when our result may be there
        return outcome

    def _still_running_message(self, timeout: float | None) -> str:
        status = self.get_status()
        message = f"job {self.id} is still {status.value} after {timeout} s"
        if status is JobStatus.QUEUED and not self.queue.workers():
            # The commonest reason a first job never runs: nothing serves the queue.
            return (
                f"{message}, and no worker is registered on {self.queue.path}: start one with"
                f" `fs-task-queue-worker --path {self.queue.path}` (the job stays queued until then)"
            )
        return f"{message}; it goes on: wait again, or cancel it with job.cancel()"

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job is done and return its result (or raise its error).

        Raises :class:`~fs_task_queue.errors.WaitTimeoutError` (a TimeoutError)
        if ``timeout`` seconds pass first; the job is not affected.
        """
        return self._wait_outcome(timeout).result()

    def exception(self, timeout: float | None = 0) -> BaseException | None:
        """The job's error if it failed or was canceled, None if it finished or is not done.

        With a ``timeout`` (None: forever) wait that long for the job first.
        """
        if timeout == 0:
            outcome = self._load_outcome()
            return None if outcome is None else outcome.error()
        return self._wait_outcome(timeout).error()

    def cancel(self) -> bool:
        """Cancel the job if it is not done yet; True if this call canceled it.

        A queued job will never start. A running job is marked canceled at once
        and its worker drops whatever it produces.
        """
        if self._load_outcome() is not None:
            return False
        header = {"status": JobStatus.CANCELED.value, "id": self.id, "end": time.time()}
        try:
            self.queue.storage.publish(
                layout.result_path(self.id), Outcome.seal(self.queue, self.id, header), replace=False
            )
        except FileExistsError:  # it ended first
            return False
        if self._name is None:
            found = self.queue._find_task(self.id)
            self._name = found[0] if found else None
        if self._name is not None:
            try:  # workers skip it anyway (it has a result); this just tidies up
                self.queue.storage.remove(layout.queued_path(self._name))
            except FileNotFoundError:
                pass
        return True

    # ------------------------------------------------------ output, progress
    def _read_text(self, name: str) -> str:
        try:
            return self.queue.storage.read(layout.job_file(self.id, name)).decode("utf-8", "replace")
        except (FileNotFoundError, NotADirectoryError):
            return ""

    @property
    def stdout(self) -> str:
        """What the task printed to stdout so far (readable while it runs)."""
        return self._read_text("stdout")

    @property
    def stderr(self) -> str:
        """What the task wrote to stderr so far (readable while it runs)."""
        return self._read_text("stderr")

    def read_output(self, stream: str = "stdout", offset: int = 0) -> bytes:
        """What the task wrote to ``stream`` (``"stdout"`` or ``"stderr"``) from byte ``offset`` on.

        Follows a running task's output without reading it all again: keep
        ``offset += len(data)``. Decode with an incremental decoder
        (``codecs.getincrementaldecoder("utf-8")``): a read can end inside a
        multi-byte character.
        """
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', got {stream!r}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset!r}")
        try:
            return self.queue.storage.read_from(layout.job_file(self.id, stream), offset)
        except (FileNotFoundError, NotADirectoryError):
            return b""

    def read_file(self, name: str) -> bytes | None:
        """The file ``name`` the task wrote with :func:`~fs_task_queue.runtime.write_job_file`, or None."""
        from fs_task_queue.runtime import check_job_file_name

        try:
            return self.queue.storage.read(layout.job_file(self.id, check_job_file_name(name)))
        except (FileNotFoundError, NotADirectoryError):
            return None

    @property
    def progress(self) -> Progress | None:
        """The last progress the task reported, or None."""
        try:
            return parse_progress(self.queue.storage.read(layout.job_file(self.id, "progress")))
        except (FileNotFoundError, NotADirectoryError):
            return None

    # ---------------------------------------------------------------- details
    def _read_task_header(self) -> dict[str, Any] | None:
        if self._task_header is not None:
            return self._task_header
        if self._name is None:
            return None
        # Its queued file first (known by name); searching the claimed folders only if it is not there.
        header = self._header_at(layout.queued_path(self._name))
        if header is None:
            found = self.queue._find_task(self.id)
            if found and found[1] is not None:
                header = self._header_at(layout.claimed_path(found[1], found[0]))
        self._task_header = header
        return header

    def _header_at(self, path: str) -> dict[str, Any] | None:
        try:
            return open_envelope(TASK_MAGIC, self.queue._key, self.id, self.queue.storage.read(path)).header
        except (OSError, FSQError):
            return None

    def info(self) -> JobInfo:
        """When and where the job ran, with its function name and metadata.

        A job whose result file fails verification gets status ``"unreadable"``
        and the reason in ``error`` (rather than an exception), so listings go on.
        """
        try:
            status = self.get_status()
        except CorruptFileError as exc:
            return JobInfo(
                id=self.id,
                status="unreadable",
                error=f"{exc}. A worker that claims its task quarantines the file and runs the task;"
                " `fs-task-queue purge` removes it",
            )
        outcome = self._load_outcome() if status.is_done else None
        if outcome is not None:
            h = outcome.header
            err = h.get("error") or {}
            return JobInfo(
                id=self.id,
                status=status.value,
                function=h.get("fn"),
                enqueued_at=h.get("enq"),
                started_at=h.get("start"),
                ended_at=h.get("end"),
                worker=h.get("worker"),
                host=h.get("host"),
                attempt=h.get("attempt"),
                metadata=h.get("meta") or {},
                error=f"{err.get('type', '')}: {err.get('message', '')}" if err else None,
                history=tuple(h.get("hist") or ()),
            )
        task = self._read_task_header() or {}
        worker = started = None
        if status is JobStatus.STARTED:
            found = self.queue._find_task(self.id)
            if found and found[1]:
                worker = found[1]
                started = self._claimed_at(found[1], found[0])
        opts = task.get("opt") or {}
        return JobInfo(
            id=self.id,
            status=status.value,
            function=task.get("fn"),
            enqueued_at=task.get("at"),
            started_at=started,
            worker=worker,
            attempt=task.get("attempt", 1) if task else None,
            metadata=opts.get("metadata") or {},
            history=tuple(task.get("hist") or ()),
        )

    def _claimed_at(self, worker: str, name: str) -> float | None:
        return claimed_at(self.queue.storage, worker, name, (self._read_task_header() or {}).get("at"))

    @property
    def enqueued_at(self) -> float | None:
        """Submission time (seconds since the epoch)."""
        return self.info().enqueued_at

    @property
    def started_at(self) -> float | None:
        return self.info().started_at

    @property
    def ended_at(self) -> float | None:
        return self.info().ended_at

    @property
    def worker(self) -> str | None:
        """Id of the worker that runs or ran the job."""
        return self.info().worker

    @property
    def metadata(self) -> dict[str, Any]:
        return self.info().metadata

    # -------------------------------------------------------------- running
    def __call__(self) -> Any:
        """Run the job in this process, record its outcome and return its result (None if it failed).

        A job claimed with :meth:`Queue.dequeue` runs at once; a queued job
        (``queue.enqueue(f)()``) is claimed first. A failing task does not
        raise: its error is recorded in the job (:meth:`exception`, :attr:`result`),
        so a ``while True: queue.dequeue()()`` loop goes on, as in 0.1.9.
        """
        if self._claimed_by is None:
            self._claim_here()
        if self._claimed_by is not None:
            from fs_task_queue.execute import run_claimed  # worker code, needed only here

            run_claimed(self)
            self._claimed_by = None  # ran: calling it again gives the outcome, never a second run
        outcome = self._load_outcome()
        if outcome is None or outcome.status is not JobStatus.FINISHED:
            return None
        return outcome.value()

    def _claim_here(self) -> None:
        """Claim this job for :meth:`__call__`, unless it is done; FSQError if a worker runs it."""
        if self._load_outcome() is not None:
            return  # done already: the outcome is what calling it gives
        self._resolve()
        claimed = self.queue._own_claimer().claim_named(self._name) if self._name is not None else None
        if claimed is not None:
            self._claimed_by, self._seen_in = claimed._claimed_by, claimed._claimed_by
            return
        if self._load_outcome() is None:
            self._name = None  # look again: claimed, or delayed for a retry
            self._resolve()
            where = f"worker {self.worker}" if self.get_status() is JobStatus.STARTED else "the queue (delayed retry)"
            raise FSQError(
                f"job {self.id} cannot run here: it is held by {where}. Wait for it with job.wait(), or cancel it first"
            )

    def __repr__(self) -> str:
        status = self._outcome.status.value if self._outcome else None
        if status is None:
            try:
                status = self.get_status().value
            except (OSError, FSQError):
                status = "unknown"
        return f"<Job {self.id} {status}>"

    def _repr_html_(self) -> str:
        from fs_task_queue.reprs import job_html

        return job_html(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id and other.queue == self.queue

    def __hash__(self) -> int:
        return hash((self.id, self.queue.path))
