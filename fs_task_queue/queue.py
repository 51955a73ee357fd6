"""The queue: submitting tasks, finding jobs, and the claim/commit protocol.

This is the one implementation of the on-disk protocol (``docs/protocol.md``);
it does all I/O through a :class:`~fs_task_queue.storage.Storage`, so a local
directory and a remote one share it. In short:

* submit: write ``tmp/…``, rename to ``queued/<order>[.<id>]`` (the task is
  visible whole or not at all);
* claim: rename ``queued/<name>`` to ``claimed/<worker>/<name>``; one racing
  worker wins, the others get FileNotFoundError and try the next name;
* commit: publish ``results/<id>`` *without replacing*; the first outcome wins
  (a canceler, a worker, a worker presumed dead), so no job gets two results;
  then remove the claimed file.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import json
import logging
import os
import re
import shlex
import stat
import threading
import time
import weakref
from collections.abc import Callable, Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from fs_task_queue import layout
from fs_task_queue._version import __version__
from fs_task_queue.errors import (
    CorruptFileError,
    InsecureQueueError,
    NoSuchJobError,
    QueueError,
    SymlinkInQueueError,
    cli_fix,
)
from fs_task_queue.faults import crash_point
from fs_task_queue.group import JobGroup
from fs_task_queue.ids import (
    is_generated_id,
    is_worker_id,
    job_id_of,
    new_order_key,
    task_name,
    validate_job_id,
    validate_worker_id,
)
from fs_task_queue.job import Job, Outcome
from fs_task_queue.legacy import v019_error, v019_waiting
from fs_task_queue.liveness import AliveLock, HostIdentity
from fs_task_queue.progress import WorkerInfo
from fs_task_queue.security import check_queue_permissions
from fs_task_queue.serialize import (
    TASK_MAGIC,
    dumps,
    dumps_call,
    json_text,
    open_envelope,
    python_version,
    seal_encoded,
    settings_signature_ok,
    sign_settings,
)
from fs_task_queue.shards import (
    MOVE_PATIENCE,
    Backlog,
    iter_queued_names,
    move_to_queued,
    publish_queued,
    publish_queued_many,
    queued_names,
)
from fs_task_queue.snapshot import JobState, snapshot
from fs_task_queue.status import JobStatus
from fs_task_queue.storage import Storage
from fs_task_queue.storage.local import LocalStorage
from fs_task_queue.watch import DirWatcher

if TYPE_CHECKING:
    from fs_task_queue.executor import QueueExecutor

__all__ = ["FORMAT_VERSION", "Queue"]

log = logging.getLogger("fs_task_queue.worker")

#: 2: the format file is signed with the queue's key (1, unsigned, was a development version).
FORMAT_VERSION = 2
_FORMAT_NAME = "fs-task-queue"
#: A key is 32 random bytes; a shorter one is a truncated or replaced file.
_KEY_SIZE = 32
#: How long an opener waits for a racing creator that has written the key but
#: not yet the format file, before calling the directory damaged.
_CREATOR_GRACE = 2.0
#: map() and enqueue_many() seal this many tasks, then write them, then the next ones.
_SEAL_CHUNK = 256
#: A submitter measures how far its clock is from the storage's at its first
#: submission and again after this many seconds (of its monotonic clock).
SKEW_RECHECK = 300.0
#: Clocks closer than this (seconds) are taken to agree: a file time can be whole
#: seconds (SFTP) or a kernel tick late, so smaller measured offsets are noise.
SKEW_TOLERANCE = 1.0


def _now() -> float:
    return time.time()


class Queue:
    """A task queue kept in the directory ``path``.

    ``Queue(path)`` opens the queue, creating it (owner-only permissions) when
    the directory does not exist or is empty; ``create=False`` refuses to.
    ``shared=True`` (or a ``group``-readable ``mode``) makes a new queue usable by
    the members of the directory's group. ``durable=True`` fsyncs every file and
    directory entry it writes (survives power loss, costs speed). ``clock`` is
    this process's time source for submissions (a callable returning epoch
    seconds, default :func:`time.time`); submissions correct it to the storage's
    clock, so a host whose clock is off still queues in submission order.

    >>> queue = Queue("path/to/queue")            # doctest: +SKIP
    >>> job = queue.enqueue(operator.add, 1, 2)   # doctest: +SKIP
    >>> job.wait()                                # doctest: +SKIP
    3
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        shared: bool = False,
        durable: bool = False,
        storage: Storage | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning epoch seconds (like time.time), got {clock!r}")
        owned = storage is None
        if storage is None:
            if path is None:
                raise TypeError("Queue() needs a path (or a storage)")
            file_mode, dir_mode = (0o660, 0o2770) if shared else (0o600, 0o700)
        if storage is None and isinstance(path, str) and path.startswith("ssh://"):
            # A queue on another machine, reached over SSH (paramiko, imported only now).
            from fs_task_queue.storage.sftp import open_ssh_storage

            storage = open_ssh_storage(path, file_mode=file_mode, dir_mode=dir_mode)
        elif storage is None:
            assert path is not None
            # "~/q" means the home directory, as the worker's `--path ~/q` does
            # after the shell expands it; left as is it would be ./~/q.
            root = _real_root(os.path.expanduser(os.fspath(path)))
            storage = LocalStorage(root, file_mode=file_mode, dir_mode=dir_mode, durable=durable)
        self.storage: Storage = storage
        self.path = storage.location
        try:
            self._host = os.uname().nodename
            self._format = self._open(create, shared)
            try:
                self._key = self.storage.read(layout.KEY_FILE)
            except PermissionError:
                raise cli_fix(
                    QueueError(
                        f"cannot read the signing key of the queue at {self.path}: it belongs to another user."
                        " Ask its owner to share it (Queue(path, shared=True) and a common group) or use your own"
                        " queue"
                    ),
                    "Queue(path, shared=True)",
                    "a queue made with `fs-task-queue create --shared PATH`",
                ) from None
            except FileNotFoundError:
                raise QueueError(
                    f"the queue at {self.path} has no signing key file ({layout.KEY_FILE}); it is damaged:"
                    " create a new queue"
                ) from None
            self._check_key_and_format()
            # A valid signature proves only that whoever wrote the settings had the
            # key: owners and modes say whether that can be someone else (who can
            # sign anything). Checked after the signature so that edited settings
            # are reported as such, not as the modes they imply.
            check_queue_permissions(storage, self._format["shared"])
            if self._format["shared"]:
                # Everyone who opens a shared queue must create group-usable files.
                storage.share_with_group()
        except BaseException:
            if owned:
                # A connection this call made (SSH) must not outlive the failed open.
                storage.close()
            raise
        self._pyver = python_version()
        self._clock: Callable[[], float] = clock or time.time
        self._skew = 0.0  # storage clock minus ours, added to every submission time
        self._skew_due = 0.0  # monotonic time of the next measurement (0: at the first submission)
        self._claimer: Claimer | None = None
        self._status_cache: dict[str, JobStatus] = {}
        self._watchers = threading.local()

    @property
    def shared(self) -> bool:
        """Whether the queue was created for sharing with its directory's group (``shared=True``)."""
        return bool(self._format["shared"])

    def _watcher(self, directory: str) -> DirWatcher:
        """A long-lived watcher of ``directory`` for this thread.

        Reused across waits: closing an inotify descriptor that holds a watch
        blocks for a kernel grace period (about 8 ms), which would otherwise be
        added to every ``job.wait()``.
        """
        watcher: DirWatcher | None = getattr(self._watchers, directory, None)
        if watcher is None:
            # queued/ holds its tasks in shard folders: watch those too.
            watcher = self.storage.watcher(directory, nested=directory == layout.QUEUED)
            setattr(self._watchers, directory, watcher)
        watcher.reset()
        return watcher

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.storage,))

    def close(self) -> None:
        """Release the queue's descriptors, watchers and connection (an SSH queue's); reopened when used again."""
        if self._claimer is not None:
            self._claimer.close()
            self._claimer = None
        # Only this thread's watchers are reachable here; others close when their threads end.
        for watcher in list(vars(self._watchers).values()):
            watcher.close()
        self._watchers = threading.local()
        self.storage.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ opening
    def _open(self, create: bool, shared: bool) -> dict[str, Any]:
        try:
            return self._read_format()
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            raise QueueError(
                f"{self.path} or one of its parents is a file, not a directory: pass the path of a directory"
            ) from None
        except PermissionError as exc:
            raise QueueError(f"cannot read the queue at {self.path}: {exc.strerror}; check its permissions") from None
        waiting = v019_waiting(self.storage)
        if waiting is not None:
            raise v019_error(self.path, waiting)
        if self._was_made():
            # Never made again: a new format file could turn a shared queue private.
            return self._await_format()
        if not create:
            # Where creating would be refused (a file, a world-writable or foreign
            # directory, `/`), that is the error, not a suggestion to create it.
            self._check_creatable(shared)
            python = f"Queue({self.path!r})"
            raise cli_fix(
                QueueError(f"there is no queue at {self.path}: create it with {python}"),
                python,
                f"`fs-task-queue create {shlex.quote(self.path)}` (a worker started on it creates it too)",
            )
        return self._create(shared)

    def _was_made(self) -> bool:
        """Whether the directory holds a key, or folders made for a shared queue (only then looked at)."""
        try:
            names = set(self.storage.listdir(""))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return False  # reported by _create
        if layout.KEY_FILE in names:
            return True
        if names - {*layout.SUBDIRS, layout.FORMAT_FILE}:
            return False  # other files (`/` has a tmp/ too): not a queue, as _check_creatable says
        for sub in names.intersection(layout.SUBDIRS):
            with contextlib.suppress(FileNotFoundError):
                if self.storage.stat(sub).mode & (stat.S_ISGID | stat.S_IRWXG):
                    return True  # a private queue's folders are 0700
        return False

    def _await_format(self) -> dict[str, Any]:
        # A creator publishes the key, then the format file: give one that is
        # between the two (or still making shared folders) time to finish.
        deadline = time.monotonic() + _CREATOR_GRACE
        while True:
            try:
                return self._read_format()
            except FileNotFoundError:
                pass
            if time.monotonic() >= deadline:
                raise QueueError(
                    f"{self.path} holds a queue (a signing key, or folders made for a shared queue) but"
                    f" no {layout.FORMAT_FILE}: the queue is damaged or its format file was deleted. It is"
                    " not made again, because a new format file could silently turn a shared queue"
                    " private. Fix: if its creation was interrupted and it holds no work, remove the"
                    f" directory and create the queue again; otherwise restore {layout.FORMAT_FILE}"
                    " from a backup, or create a new queue"
                )
            time.sleep(0.02)

    def _read_format(self) -> dict[str, Any]:
        """The format file, its fields checked strictly (its signature is checked once the key is read)."""
        raw = self.storage.read(layout.FORMAT_FILE)
        shown = f"{self.path}/{layout.FORMAT_FILE}"
        try:
            fmt = json.loads(raw)
            ok = type(fmt) is dict and fmt.get("format") == _FORMAT_NAME
        except ValueError:
            ok = False
        if not ok:
            raise QueueError(f"{shown} is not an fs-task-queue format file")
        version = fmt.get("version")
        # type(), not isinstance(): true is an int to Python, and no version to us.
        if type(version) is not int or version < 1:
            raise QueueError(
                f'{shown} has "version": {json.dumps(version)}, not a format version (a whole number):'
                " the file is damaged or was edited. Fix: create a new queue"
            )
        if version > FORMAT_VERSION:
            raise QueueError(
                f"the queue at {self.path} has format {version}, newer than this"
                f" fs-task-queue {__version__} reads ({FORMAT_VERSION}): upgrade fs-task-queue"
            )
        if version < FORMAT_VERSION:
            raise QueueError(
                f"the queue at {self.path} has format {version}, made by an earlier development version"
                f" of fs-task-queue ({fmt.get('created_by', 'unknown')}) whose format file is not signed;"
                f" fs-task-queue {__version__} does not open it. Fix: create a new queue (a new directory)"
                " for new work, and drain this one with the fs-task-queue version that made it"
            )
        if type(fmt.get("shared")) is not bool:
            raise QueueError(
                f'{shown} has "shared": {json.dumps(fmt.get("shared"))}, which must be true or false:'
                " the file is damaged or was edited. Fix: create a new queue"
            )
        if type(fmt.get("signature")) is not str:
            raise QueueError(f"{shown} has no signature: the file is damaged or was edited. Fix: create a new queue")
        return dict(fmt)

    def _check_key_and_format(self) -> None:
        """Refuse a short key, and settings not signed with the key (changed by someone without it)."""
        if len(self._key) < _KEY_SIZE:
            raise QueueError(
                f"the signing key {self.path}/{layout.KEY_FILE} is {len(self._key)} bytes long, not"
                f" {_KEY_SIZE}: it was truncated (a crash while the queue was made?) or replaced, so"
                " nothing in the queue can be verified. Fix: create a new queue"
            )
        settings = {k: v for k, v in self._format.items() if k != "signature"}
        if not settings_signature_ok(self._key, settings, self._format["signature"]):
            raise InsecureQueueError(
                f"{self.path}/{layout.FORMAT_FILE} fails its signature check: its settings were changed"
                " by someone without the queue's key, or the key was replaced, so the queue cannot be"
                " trusted. Fix: find out who can write into the queue, and create a new queue"
            )

    def _check_creatable(self, shared: bool) -> None:
        """Raise the error creating a queue here would meet, if any (looks only; writes nothing)."""
        storage = self.storage
        try:
            info = storage.stat("")
        except FileNotFoundError:
            return
        if not info.is_dir:
            raise QueueError(f"{self.path} is a file, not a queue directory: pass the path of a directory")
        # The format file too: a racing creator may finish between our
        # look for it and this listing (then the queue is complete).
        known = {*layout.SUBDIRS, layout.KEY_FILE, layout.FORMAT_FILE}
        foreign = sorted(n for n in storage.listdir("") if n not in known)
        # Nothing is made in a directory another user controls or all can write
        # (/tmp). Of one that holds other files, only the root: `/`'s tmp/ is no queue folder.
        check_queue_permissions(storage, shared, creating=True, root_only=bool(foreign))
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise QueueError(
                f"{self.path} is not a queue and is not empty (it holds {shown}):"
                " use a new or empty directory for a queue"
            )

    def _create(self, shared: bool) -> dict[str, Any]:
        storage = self.storage
        try:
            self._check_creatable(shared)
            storage.mkdir("")
            for sub in layout.SUBDIRS:
                storage.mkdir(sub)
            # The key is made before the format file, which is written last: a
            # directory with a format file is a complete queue. Racing creators
            # are fine because neither file is ever replaced; each signs with
            # the key that won. Both are fsynced whatever `durable` says: a
            # crash must not leave an empty key or a queue without settings.
            with contextlib.suppress(FileExistsError):
                storage.publish(layout.KEY_FILE, os.urandom(_KEY_SIZE), replace=False, sync=True)
            settings: dict[str, Any] = {
                "format": _FORMAT_NAME,
                "version": FORMAT_VERSION,
                "created_by": __version__,
                "created_at": _now(),
                "shared": shared,
            }
            settings["signature"] = sign_settings(storage.read(layout.KEY_FILE), settings)
            with contextlib.suppress(FileExistsError):
                storage.publish(layout.FORMAT_FILE, json.dumps(settings, indent=1).encode(), replace=False, sync=True)
        except PermissionError as exc:
            raise QueueError(
                f"cannot create a queue at {self.path}: {exc.strerror} ({exc.filename});"
                " choose a directory you can write to"
            ) from None
        except OSError as exc:
            if isinstance(exc, QueueError):
                raise
            raise QueueError(f"cannot create a queue at {self.path}: {exc}") from None
        return self._read_format()

    # --------------------------------------------------------------- submitting
    def enqueue(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Job:
        """Submit ``func(*args, **kwargs)`` and return its :class:`Job`.

        Every keyword argument goes to ``func``; to set task options (job id,
        timeout, retries, metadata) use :meth:`enqueue_call`.
        """
        return self.enqueue_call(func, args, kwargs)

    def enqueue_call(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        job_id: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        retry_backoff: float = 2.0,
        metadata: dict[str, Any] | None = None,
        expected_duration: float | None = None,
    ) -> Job:
        """Submit ``func(*args, **kwargs)`` with task options that never reach ``func``.

        ``job_id`` names the job (letters, digits, ``_``, ``-``); it must be
        unique in the queue: submitting an id whose job already has an outcome
        raises FileExistsError (an id still queued or running is not checked).
        ``timeout`` (seconds), ``retries``, ``retry_delay`` and
        ``retry_backoff`` are enforced by the worker. ``metadata`` is a
        JSON-serializable dict kept with the job. ``expected_duration``
        (seconds): how long the task is expected to run; a worker whose
        allocation ends sooner (a SLURM job's walltime) leaves it for another.
        """
        func_bytes, args_bytes = dumps_call(func, tuple(args), dict(kwargs or {}))
        options = _options(timeout, retries, retry_delay, retry_backoff, metadata, expected_duration)
        self._sync_clock()
        task = self._seal(func, func_bytes, args_bytes, options, job_id)
        if job_id is not None and self.storage.exists(layout.result_path(task[0])):
            raise FileExistsError(errno.EEXIST, f"a job with id {job_id!r} already exists in {self.path}")
        return self._publish([task])[0]

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        retry_backoff: float = 2.0,
        metadata: dict[str, Any] | None = None,
        expected_duration: float | None = None,
    ) -> JobGroup:
        """Submit ``func(*items)`` for each tuple of items, like builtin ``map``.

        Much faster per task than a loop of :meth:`enqueue`: the function is
        pickled once and shared by every task file. Returns the jobs in order,
        as a :class:`~fs_task_queue.group.JobGroup` (a list of jobs).
        """
        options = _options(timeout, retries, retry_delay, retry_backoff, metadata, expected_duration)
        func_bytes, _ = dumps_call(func, (), {})
        empty: dict[str, Any] = {}
        # Pickle (and seal) everything before publishing anything: a bad item submits nothing.
        payloads = [dumps((tuple(items), empty), "the arguments") for items in zip(*iterables, strict=False)]
        return self._submit_many(func, func_bytes, payloads, options)

    def enqueue_many(
        self, func: Callable[..., Any], calls: Iterable[tuple[tuple[Any, ...], dict[str, Any]]], **options: Any
    ) -> JobGroup:
        """Submit ``func(*args, **kwargs)`` for each ``(args, kwargs)`` in ``calls``; return a :class:`JobGroup`."""
        opts = _options(**options)
        func_bytes, _ = dumps_call(func, (), {})
        payloads = [dumps((tuple(a), dict(k)), "the arguments") for a, k in calls]
        return self._submit_many(func, func_bytes, payloads, opts)

    def _submit_many(
        self, func: Callable[..., Any], func_bytes: bytes, payloads: list[bytes], options: dict[str, Any]
    ) -> JobGroup:
        # Sealed in chunks, each written in one tight loop (see _publish): the
        # signed copies of large arguments are held a chunk at a time, not all.
        jobs = JobGroup()
        # A remote storage pays round trips per publish_many call, not per task: it may take more at once.
        size = max(_SEAL_CHUNK, int(getattr(self.storage, "publish_batch", _SEAL_CHUNK)))
        for start in range(0, len(payloads), size):
            chunk = payloads[start : start + size]
            self._sync_clock()
            tasks = [self._seal(func, func_bytes, payload, options, None) for payload in chunk]
            jobs += self._publish(tasks, queued_before=len(jobs), total=len(payloads))
        return jobs

    def _seal(
        self,
        func: Callable[..., Any],
        func_bytes: bytes,
        args_bytes: bytes,
        options: dict[str, Any],
        job_id: str | None,
    ) -> tuple[str, str, dict[str, Any], bytes]:
        """A task ready to publish: (job id, file name, header, signed bytes)."""
        now = self._clock() + self._skew  # on the storage's clock: see _sync_clock
        order = new_order_key(now)
        job_id = order if job_id is None else validate_job_id(job_id)
        fn = _func_name(func)
        header = {"id": job_id, "py": self._pyver, "fn": fn, "at": now, "opt": options, "fl": len(func_bytes)}
        # The header is written by hand, not by json: it is a third of a submit's
        # Python time otherwise. Job ids are validated to characters JSON never
        # escapes, and a float's repr is its JSON text.
        head = (
            f'{{"id":"{job_id}","py":"{self._pyver}","fn":{_json_name(fn)},"at":{now!r},'
            f'"opt":{json_text(options) if options else "{}"},"fl":{len(func_bytes)}}}'
        )
        data = seal_encoded(TASK_MAGIC, self._key, job_id, head.encode(), func_bytes, args_bytes)
        return job_id, task_name(order, job_id), header, data

    def _sync_clock(self) -> None:
        """Learn how far this process's clock is from the storage's, if it is time to.

        Order keys are times, and tasks are claimed in key order: a submitter
        whose clock is minutes behind would jump ahead of every other one (and
        write into shards idle workers remove), one minutes ahead would fall
        behind. So submission times are put on one clock, the storage's: the
        time it gives a file written now (on NFS or SFTP the server's). Measured
        at the first submission and every SKEW_RECHECK seconds, never per task.
        """
        mono = time.monotonic()
        if mono < self._skew_due:
            return
        try:
            before = self._clock()
            theirs = self.storage.now()
            after = self._clock()
        except OSError:
            # No probe file could be written (read-only, full): the submit
            # itself says why. Measure again at a later submission.
            self._skew_due = mono + 10.0
            return
        if theirs == int(theirs):  # whole seconds (SFTP, old filesystems): take the middle of that second
            theirs += 0.5
        skew = theirs - (before + after) / 2
        self._skew = skew if abs(skew) >= SKEW_TOLERANCE else 0.0
        self._skew_due = mono + SKEW_RECHECK
        if self._skew:
            log.info("this clock is %+.1f s off the clock of %s; submissions are corrected by that", -skew, self.path)

    def _publish(
        self, tasks: list[tuple[str, str, dict[str, Any], bytes]], *, queued_before: int = 0, total: int = 1
    ) -> list[Job]:
        """Publish sealed tasks in order; return their jobs (``queued_before`` of ``total`` went in already)."""
        storage = self.storage
        done = 0
        try:
            if len(tasks) == 1:
                publish_queued(storage, tasks[0][1], tasks[0][3])
                done = 1
            else:
                # One batch: a remote storage sends it in a few round trips, not a few per task.
                errors = publish_queued_many(storage, [(name, data) for _, name, _, data in tasks])
                failed = [exc for exc in errors if exc is not None]
                done = len(errors) - len(failed)
                if failed:
                    raise failed[0]
        except PermissionError as exc:
            raise cli_fix(
                QueueError(
                    f"cannot write into the queue at {self.path}: {exc.strerror}. It belongs to another"
                    " user or is read-only: ask its owner to share it (Queue(path, shared=True)) or use your own"
                ),
                "Queue(path, shared=True)",
                "a queue made with `fs-task-queue create --shared PATH`",
            ) from None
        except OSError as exc:
            done += queued_before
            queued = "Nothing was queued" if not done else f"The first {done} of {total} tasks were queued"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise QueueError(
                    f"cannot submit to {self.path}: {exc.strerror}. {queued}; free space"
                    " or quota (or remount read-write) and submit again"
                ) from None
            if exc.errno == errno.EAGAIN:
                raise QueueError(
                    f"cannot submit to {self.path}: {exc.strerror}: something removed the shard folder in"
                    f" {layout.QUEUED}/ each time it was made, for {MOVE_PATIENCE:g} s. {queued}. Upgrade"
                    f" workers older than fs-task-queue {__version__} (they remove empty shards at sight),"
                    f" make sure nothing else deletes folders in {layout.QUEUED}/, and submit again"
                ) from None
            raise QueueError(
                f"cannot submit to {self.path}: {exc.strerror or exc}"
                f"{f' ({exc.filename})' if exc.filename else ''}. {queued}; check that the queue"
                " directory is reachable and intact (its subfolders exist), then submit again"
            ) from None
        return [Job(self, job_id, name=name, header=header) for job_id, name, header, _ in tasks]

    # ------------------------------------------------------------ finding jobs
    def job(self, job_id: str) -> Job:
        """Reattach to an existing job by id (from another process or after a restart)."""
        try:
            validate_job_id(job_id)
        except ValueError as exc:
            # Never looked up: an id is a file name in the queue, and "..", "a/b"
            # or "id\n" would name another file.
            raise NoSuchJobError(f"no job {job_id!r} in the queue at {self.path}: {exc}") from None
        job = Job(self, job_id)
        job._resolve()  # raises NoSuchJobError for an unknown id
        return job

    def jobs(self, status: JobStatus | str | None = None) -> list[Job]:
        """The jobs in the queue, optionally only those in ``status``.

        Queued jobs (including retries waiting in ``delayed/``) come first in
        submission order, then started ones, then done ones by id.
        """
        wanted = JobStatus(status) if status is not None else None
        out: list[Job] = []
        if wanted in (None, JobStatus.QUEUED):
            waiting = queued_names(self.storage) + self._list_tasks(layout.DELAYED)
            out += [Job(self, job_id_of(n), name=n) for n in sorted(waiting)]
        # claimed/ is listed before results/: see _running.
        claimed = self._claimed_names() if wanted in (None, JobStatus.STARTED) else []
        results = self._result_ids() if wanted is None or wanted.is_done else None
        out += [Job(self, job_id_of(n), name=n) for n in self._running(claimed, results)]
        if results is not None:
            statuses = self._result_statuses(results) if wanted is not None else {}
            for job_id in sorted(results):
                if wanted is None or statuses[job_id] is wanted:
                    out.append(Job(self, job_id))
        return out

    def stats(self) -> dict[str, int]:
        """Counts of jobs per state: queued, started, finished, failed, canceled (and workers)."""
        counts = {s.value: 0 for s in JobStatus}
        waiting = len(queued_names(self.storage)) + len(self._list_tasks(layout.DELAYED))
        counts[JobStatus.QUEUED.value] = waiting
        claimed = self._claimed_names()
        results = self._result_ids()
        counts[JobStatus.STARTED.value] = len(self._running(claimed, results))
        counts["unreadable"] = 0  # result files that fail verification (see `fs-task-queue purge`)
        for job_id, status in self._result_statuses(results).items():
            if status is not None:
                counts[status.value] += 1
            elif self.storage.exists(layout.result_path(job_id)):
                counts["unreadable"] += 1
        counts["workers"] = len(self.workers())
        return counts

    def snapshot(
        self, jobs: Iterable[Job | str], *, progress: bool = True, details: bool = True
    ) -> dict[str, JobState]:
        """The states of many jobs (jobs or ids) at once, by id, from a few directory listings.

        Much cheaper than asking each job: see :func:`fs_task_queue.snapshot.snapshot`.
        Live views (widgets, progress bars) poll through it.
        """
        return snapshot(self, jobs, progress=progress, details=details)

    def workers(self) -> list[WorkerInfo]:
        """The registered workers, with heartbeat age and running jobs."""
        out = []
        now = _now()
        for worker_id in sorted(self._list(layout.WORKERS)):
            if worker_id.startswith("."):
                continue
            record, mtime = self._worker_record(worker_id)
            if record is None or mtime is None:
                continue
            try:
                running = tuple(job_id_of(n) for n in self._list_tasks(layout.claimed_dir(worker_id)))
            except OSError:
                running = ()
            out.append(
                WorkerInfo(
                    id=worker_id,
                    host=record.get("host"),
                    pid=record.get("pid"),
                    started_at=record.get("started_at"),
                    version=record.get("version"),
                    heartbeat_age=max(0.0, now - mtime),
                    running=running,
                    **_slurm_fields(record),
                )
            )
        return out

    def _worker_record(self, worker_id: str) -> tuple[dict[str, Any] | None, float | None]:
        """A worker's heartbeat file: its JSON record and modification time (None, None if unreadable)."""
        path = layout.worker_path(worker_id)
        try:
            mtime = self.storage.stat(path).mtime
            record = json.loads(self.storage.read(path) or b"{}")
        except (OSError, ValueError):
            return None, None
        return (record if isinstance(record, dict) else None), mtime

    def _list(self, directory: str) -> list[str]:
        try:
            return self.storage.listdir(directory)
        except FileNotFoundError:
            return []

    def _list_tasks(self, directory: str) -> list[str]:
        return sorted(n for n in self._list(directory) if not n.startswith("."))

    def _claimed_names(self) -> list[str]:
        """The task files in every worker's ``claimed/`` folder, a worker at a time."""
        return [n for w in self._claimers() for n in self._claimed_by(w)]

    def _claimers(self) -> list[str]:
        """The worker folders in ``claimed/`` (names no worker can have are not looked into)."""
        return [w for w in self._list(layout.CLAIMED) if is_worker_id(w)]

    def _claimed_by(self, worker_id: str) -> list[str]:
        """The task files in ``claimed/<worker_id>``; none if it is a symlink (never listed through)."""
        try:
            return self._list_tasks(layout.claimed_dir(worker_id))
        except (NotADirectoryError, SymlinkInQueueError):
            return []

    def _running(self, claimed: list[str], results: list[str] | None) -> list[str]:
        """The claimed task files whose job has no result yet (``results``: listed already, or None).

        A worker publishes a result before it moves the task file out of
        ``claimed/``, so for a moment a finished job's file is still there; it
        is not running. Looking at ``results/`` after listing ``claimed/`` keeps
        a job that finishes in between from counting as both.
        """
        if not claimed:
            return []
        if results is None:  # a few claims: a look each is cheaper than listing results/
            return [n for n in claimed if not self.storage.exists(layout.result_path(job_id_of(n)))]
        done = set(results)
        return [n for n in claimed if job_id_of(n) not in done]

    def _result_ids(self) -> list[str]:
        """The job ids in ``results/`` (not temporary or dot files)."""
        return [r for r in self._list(layout.RESULTS) if not r.startswith(".") and ".tmp" not in r]

    def _result_status(self, job_id: str) -> JobStatus | None:
        return self._result_statuses([job_id])[job_id]

    def _result_statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        """The outcome status of each job (None: no readable result), its result files read in one batch."""
        out: dict[str, JobStatus | None] = {}
        for job_id in job_ids:
            out[job_id] = self._status_cache.get(job_id)
        todo = [job_id for job_id, status in out.items() if status is None]
        if not todo:
            return out
        found = self.storage.read_many([layout.result_path(job_id) for job_id in todo])
        for job_id in todo:
            data = found[layout.result_path(job_id)]
            if isinstance(data, OSError):
                continue
            try:
                status = out[job_id] = Outcome.parse(self, job_id, data).status
            except CorruptFileError:
                continue
            if status is not JobStatus.FAILED:  # failed jobs can be requeued
                self._status_cache[job_id] = status
        return out

    def _has_outcome(self, job_id: str) -> bool:
        """Whether ``results/<job_id>``, known to exist, is a valid outcome; a bad one is quarantined.

        Called only when a result file exists where none was expected (a claim,
        a commit that lost, recovery), so the read costs nothing on the usual
        path. An empty, foreign, tampered or misnamed file is nobody's outcome:
        it must not make a worker throw the task away (it would then have no
        outcome at all), so it is moved to ``quarantine/`` and the task runs.
        """
        path = layout.result_path(job_id)
        try:
            Outcome.parse(self, job_id, self.storage.read(path))
            return True
        except FileNotFoundError:
            return False  # removed meanwhile (a requeue): no outcome
        except (CorruptFileError, ValueError, KeyError, IsADirectoryError) as exc:
            reason = exc
        except OSError:
            return True  # cannot tell (a network filesystem away): never risk a second run
        return not self._quarantine_result(job_id, reason)

    def _quarantine_result(self, job_id: str, reason: BaseException) -> bool:
        """Move the bad result file of ``job_id`` to ``quarantine/<job_id>.result``; True if this call did."""
        target = f"{layout.QUARANTINE}/{job_id}.result"
        try:
            self.storage.rename(layout.result_path(job_id), target)
        except FileNotFoundError:
            return True  # another process moved it first: it is gone either way
        except OSError as exc:
            log.error("cannot quarantine the bad result file of job %s (%s): %s", job_id, reason, exc)
            return False
        self._status_cache.pop(job_id, None)
        log.warning("moved the bad result file of job %s to %s (%s); its task runs", job_id, target, reason)
        return True

    def _find_task(self, job_id: str) -> tuple[str, str | None] | None:
        """Where the task file of ``job_id`` is: (name, worker id or None if queued or delayed)."""
        if is_generated_id(job_id):
            if self.storage.exists(layout.queued_path(job_id)) or self.storage.exists(layout.delayed_path(job_id)):
                return job_id, None
        else:
            suffix = f".{job_id}"
            # Stops at the first shard that holds it, not after listing them all.
            for name in itertools.chain(iter_queued_names(self.storage), self._list(layout.DELAYED)):
                if name.endswith(suffix):
                    return name, None
        for worker_id in self._claimers():
            for name in self._claimed_by(worker_id):
                if job_id_of(name) == job_id:
                    return name, worker_id
        return None

    # ------------------------------------------------------- worker-side calls
    def dequeue(self, timeout: float | None = None, *, worker_id: str | None = None) -> Job:
        """Claim the next task and return its job; run it with ``job()``.

        Waits up to ``timeout`` seconds (None: forever) and raises TimeoutError
        when no task came. This is the building block of custom workers.
        """
        claimer = self._own_claimer(worker_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher = self._watcher(layout.QUEUED)
        while True:
            job = claimer.claim()
            if job is not None:
                return job
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no task arrived in {self.path} within {timeout} s")
            watcher.wait(left)

    def _own_claimer(self, worker_id: str | None = None) -> Claimer:
        """This process's claimer for :meth:`dequeue` and ``job()`` (made on first use)."""
        if self._claimer is None or (worker_id is not None and self._claimer.worker_id != worker_id):
            if self._claimer is not None:
                self._claimer.close()
            self._claimer = Claimer(self, worker_id or default_worker_id())
            # A process that claimed and then exits must unregister, or its
            # heartbeat file stays: `info` would show a phantom worker and every
            # worker would "recover" it. (A killed process is recovered as dead.)
            atexit.register(_close_at_exit, weakref.ref(self._claimer), os.getpid())
        return self._claimer

    def executor(self, **options: Any) -> QueueExecutor:
        """A :class:`concurrent.futures.Executor` that runs submissions on this queue."""
        from fs_task_queue.executor import QueueExecutor

        return QueueExecutor(self, **options)

    def __repr__(self) -> str:
        return f"Queue({self.path!r})"

    def _repr_html_(self) -> str:
        from fs_task_queue.reprs import queue_html

        return queue_html(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queue) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


class Claimer:
    """Claims tasks for one worker, oldest first, at a cost that does not grow with the queue.

    Its :class:`~fs_task_queue.shards.Backlog` lists the oldest shards of
    ``queued/`` into a batch and hands out names oldest first; names that another
    worker took first fail their rename and are skipped. It lists again when the
    batch runs out or is older than :data:`~fs_task_queue.shards.BATCH_MAX_AGE`.
    """

    def __init__(
        self, queue: Queue, worker_id: str, *, heartbeat: bool = True, held_by_supervisor: bool = False
    ) -> None:
        self.queue = queue
        self.worker_id = validate_worker_id(worker_id)
        self.heartbeat = heartbeat
        #: The folder and liveness lock belong to a supervising worker process.
        self._held_elsewhere = held_by_supervisor
        self._touched = 0.0
        self._backlog = Backlog(queue.storage, self._quarantine_foreign)
        self._lock: AliveLock | None = None
        self._delayed_due: float | None = 0.0
        self._delayed_checked = 0.0
        #: How many delayed retries the last :meth:`promote_delayed` moved to ``queued/``.
        self.promoted = 0

    def register(self) -> None:
        """Create this claimer's folder and take its liveness lock (done by the first claim too)."""
        if self._lock is not None:
            return
        storage = self.queue.storage
        for attempt in range(3):
            is_dir = True
            storage.mkdir(layout.claimed_dir(self.worker_id))
            with contextlib.suppress(FileNotFoundError):  # removed by a recoverer: the lock says so below
                is_dir = storage.stat(layout.claimed_dir(self.worker_id)).is_dir
            if not is_dir:
                # A symlink planted under this claimer's name: the lock file and
                # every claim would land wherever it points.
                raise SymlinkInQueueError(
                    f"{self.queue.path}/{layout.claimed_dir(self.worker_id)}",
                    f"{self.queue.path}/{layout.claimed_dir(self.worker_id)} is not a folder (a symlink?):"
                    " fs-task-queue never claims through it. Remove it, or pick another worker name",
                )
            # Held for the claimer's lifetime; the kernel drops it the instant this
            # process dies, which is how recoverers on this host know it is gone.
            lock = AliveLock(storage, self.worker_id)
            try:
                lock.acquire()
                break
            except FileExistsError:
                raise ValueError(
                    f"a live process already claims as {self.worker_id!r} in {self.queue.path}:"
                    " pick another worker name"
                ) from None
            except FileNotFoundError:
                # A recoverer removed the folder of a dead claimer of this name
                # (an earlier run) just as this one registered: make it again.
                if attempt == 2:
                    raise
        self._lock = lock
        identity = json.dumps({"id": self.worker_id, "pid": os.getpid(), **HostIdentity.here(storage).as_record()})
        storage.publish(layout.identity_path(self.worker_id), identity.encode(), replace=True)
        if self.heartbeat:
            storage.publish(layout.worker_path(self.worker_id), identity.encode(), replace=True)
            self._touched = time.monotonic()

    def _beat(self) -> None:
        # Claimers without a Worker (queue.dequeue) keep a heartbeat by claiming:
        # enough for recoverers on other hosts as long as tasks are short.
        if self.heartbeat and time.monotonic() - self._touched > 10.0:
            self._touched = time.monotonic()
            try:
                self.queue.storage.touch(layout.worker_path(self.worker_id))
            except OSError:
                pass

    def close(self) -> None:
        """Put unfinished claims back in the queue and drop the liveness lock."""
        if self._lock is None:
            return
        storage = self.queue.storage
        stuck = []
        for name in self.queue._list_tasks(layout.claimed_dir(self.worker_id)):
            try:
                move_to_queued(storage, layout.claimed_path(self.worker_id, name), name)
            except FileNotFoundError:
                pass  # taken by a recoverer meanwhile
            except OSError as exc:
                stuck.append(name)
                log.error("cannot put job %s back in the queue (%s); recovery will", job_id_of(name), exc)
        if stuck:
            # Leave the folder, identity and heartbeat as a dead claimer's, so
            # recovery re-queues what could not be moved; never delete it.
            self._lock.release()
            self._lock = None
            return
        # The identity file goes while the lock is still held: a recoverer that
        # finds the lock free without it does not take this claimer for dead
        # (see Recoverer.verdict), so a clean exit is never "recovered".
        with contextlib.suppress(FileNotFoundError):
            storage.remove(layout.identity_path(self.worker_id))
        self._lock.release(remove=True)
        self._lock = None
        if self.heartbeat:
            try:
                storage.remove(layout.worker_path(self.worker_id))
            except FileNotFoundError:
                pass
        try:
            storage.remove_tree(layout.claimed_dir(self.worker_id))
        except OSError:
            pass

    def promote_delayed(self, force: bool = False) -> float | None:
        """Move due retries from ``delayed/`` to ``queued/``; return the next due time.

        Checked at most once a second unless ``force``; cheap when ``delayed/`` is empty.
        """
        now = time.time()
        if not force and now - self._delayed_checked < 1.0 and (self._delayed_due is None or self._delayed_due > now):
            return self._delayed_due
        self._delayed_checked = now
        self.promoted = 0
        storage = self.queue.storage
        next_due: float | None = None
        for name in self.queue._list_tasks(layout.DELAYED):
            try:
                data = storage.read(layout.delayed_path(name))
                due = float(open_envelope(TASK_MAGIC, self.queue._key, job_id_of(name), data).header.get("nb", 0))
            except FileNotFoundError:
                continue
            except (OSError, CorruptFileError, ValueError):
                due = 0.0  # let the claim path quarantine it
            if due <= now:
                try:
                    move_to_queued(storage, layout.delayed_path(name), name)
                    self._backlog.clear()  # an old name: list again so it goes first
                    self.promoted += 1
                except FileNotFoundError:
                    pass
            elif next_due is None or due < next_due:
                next_due = due
        self._delayed_due = next_due
        return next_due

    def refresh(self) -> None:
        """Forget the batch so the next claim lists ``queued/`` again."""
        self._backlog.clear()

    def claim(self, skip: Container[str] = ()) -> Job | None:
        """Claim the oldest available task, or return None if there is none.

        Task file names in ``skip`` are left queued (for workers they suit better).
        """
        storage = self.queue.storage
        if self._lock is None and not self._held_elsewhere:
            self.register()
        self._beat()
        backlog = self._backlog
        backlog.new_round()
        while (name := backlog.pop()) is not None:
            if name in skip:
                continue
            claimed = layout.claimed_path(self.worker_id, name)
            try:
                storage.rename(layout.queued_path(name), claimed)
            except FileNotFoundError:
                backlog.step_aside()  # another worker won this one, and is likely to win the next
                continue
            crash_point("after-claim")
            job_id = job_id_of(name)
            if storage.exists(layout.result_path(job_id)) and self.queue._has_outcome(job_id):
                # Canceled while queued, or a replayed/duplicate file of a job
                # that already has its one result: never run it again. (A bad
                # result file is quarantined by _has_outcome and the task runs.)
                _remove_quietly(storage, claimed)
                continue
            return Job(self.queue, job_id, name=name, claimed_by=self.worker_id)
        return None

    def claim_named(self, name: str) -> Job | None:
        """Claim the queued task file ``name`` (one job, e.g. to run it in place); None if it is not queued."""
        if self._lock is None and not self._held_elsewhere:
            self.register()
        storage = self.queue.storage
        claimed = layout.claimed_path(self.worker_id, name)
        try:
            storage.rename(layout.queued_path(name), claimed)
        except FileNotFoundError:
            return None  # claimed by a worker, delayed, or done
        job_id = job_id_of(name)
        if storage.exists(layout.result_path(job_id)) and self.queue._has_outcome(job_id):
            _remove_quietly(storage, claimed)  # canceled while queued: never run it
            return None
        return Job(self.queue, job_id, name=name, claimed_by=self.worker_id)

    def _quarantine_foreign(self, path: str) -> None:
        # A name no client would write (``path`` is under queued/): move it
        # aside, never read it, so it cannot stall the queue, and say so once.
        target = f"{layout.QUARANTINE}/{path.rpartition('/')[2]}"
        try:
            self.queue.storage.rename(f"{layout.QUEUED}/{path}", target)
        except OSError:
            return
        log.warning("moved foreign file queued/%s to %s/ (not a task file name)", path, layout.QUARANTINE)

    def __iter__(self) -> Iterator[Job]:
        while (job := self.claim()) is not None:
            yield job


def _close_at_exit(ref: weakref.ref[Claimer], pid: int) -> None:
    claimer = ref()
    # Not in a forked child that exits normally: the claims are its parent's.
    if claimer is not None and os.getpid() == pid:
        claimer.close()


def _real_root(path: str | os.PathLike[str]) -> str:
    """The queue's directory: a symlink at its last component is resolved, once, here.

    Users commonly reach scratch space through a symlink. What is trusted is
    the real directory (its owner and modes are checked), and every later
    operation uses its path, so re-pointing the link later changes nothing for
    processes that have the queue open.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.islink(path):
        return path
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        # Not followed to make a queue wherever the link's owner pointed it.
        raise QueueError(
            f"{path} is a symlink to {real}, which is not a directory: create that directory,"
            " or pass the path of a directory"
        )
    return real


_SLURM_JOB_ID = re.compile(r"\d{1,20}(_\d{1,10})?")


def _slurm_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The SLURM part of a worker record (see :class:`~fs_task_queue.progress.WorkerInfo`)."""
    slurm = record.get("slurm")
    fields: dict[str, Any] = {"mismatch": str(record.get("mismatch") or "")}
    if isinstance(slurm, dict):
        end = slurm.get("end_time")
        job_id = slurm.get("job_id")
        fields.update(
            # Only a SLURM job id (digits, "_N" for an array task): it may reach scancel's command line.
            slurm_job_id=job_id if isinstance(job_id, str) and _SLURM_JOB_ID.fullmatch(job_id) else None,
            partition=slurm.get("partition"),
            slurm_end_time=float(end) if isinstance(end, (int, float)) else None,
        )
    return fields


def _reopen(storage: Storage) -> Queue:
    return Queue(storage=storage)


def _remove_quietly(storage: Storage, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        storage.remove(path)


def default_worker_id() -> str:
    """A worker id unique across hosts and restarts: ``<host>-<pid>-<random>``."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in os.uname().nodename)[:40] or "host"
    return f"{host}-{os.getpid()}-{os.urandom(2).hex()}"


_json_names: dict[str, str] = {}


def _json_name(name: str) -> str:
    """``name`` as a JSON string, remembered: a loop of enqueue names one function."""
    text = _json_names.get(name)
    if text is None:
        if len(_json_names) > 256:
            _json_names.clear()
        text = _json_names[name] = json_text(name)
    return text


def _func_name(func: Any) -> str:
    module = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__qualname__
    return f"{module}.{name}" if module else str(name)


def _options(
    timeout: float | None = None,
    retries: int = 0,
    retry_delay: float = 0.0,
    retry_backoff: float = 2.0,
    metadata: dict[str, Any] | None = None,
    expected_duration: float | None = None,
) -> dict[str, Any]:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if expected_duration is not None and not (
        isinstance(expected_duration, (int, float)) and 0 < expected_duration < float("inf")
    ):
        raise ValueError(f"expected_duration must be a positive number of seconds, got {expected_duration!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
    if retry_delay < 0 or retry_backoff < 1:
        raise ValueError("retry_delay must be >= 0 and retry_backoff >= 1")
    opts: dict[str, Any] = {}
    if timeout is not None:
        opts["timeout"] = float(timeout)
    if expected_duration is not None:
        opts["expected_duration"] = float(expected_duration)
    if retries:
        opts["retries"] = retries
        opts["retry_delay"] = float(retry_delay)
        opts["retry_backoff"] = float(retry_backoff)
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict (of JSON-serializable values), got {type(metadata).__name__}")
    if metadata:
        try:
            json.dumps(metadata)
        except TypeError as exc:
            raise ValueError(f"metadata must be JSON-serializable: {exc}") from None
        opts["metadata"] = metadata
    return opts
