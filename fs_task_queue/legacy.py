"""Queues made by fs-task-queue 0.1.9: recognizing them, and importing their waiting tasks.

0.1.9 (the original package) kept a queue as seven folders, read here from its
``fs_task_queue/core.py``: ``tasks/<uuid>`` holds a task as JSON
``{"module": ..., "name": ..., "args": [...], "kwargs": {...}}`` (a function
named by its module and name, arguments as JSON), and a symlink named
``<uuid>`` in ``queued/``, ``started/``, ``finished/`` or ``failed/`` gives its
state; ``results/<uuid>`` holds a JSON outcome and ``workers/<id>`` a
worker's heartbeat. It has no key and no format file, so nothing in it is
signed: this version does not open it as a queue, but says what it is.

Importing enqueues, into a queue of this version, a call of each waiting
task's function *by name* (:class:`CallByName`): nothing of the old task is
imported or run while importing; a worker imports the module when it runs the
task, as 0.1.9's worker did.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fs_task_queue import layout
from fs_task_queue.errors import NoSuchJobError, QueueError

if TYPE_CHECKING:
    from fs_task_queue.queue import Queue
    from fs_task_queue.storage import Storage

__all__ = ["CallByName", "ImportReport", "import_019", "v019_error", "v019_waiting"]

#: The folders 0.1.9's Queue.ensure_directories() makes.
DIRS = ("tasks", "results", "workers", "queued", "finished", "failed", "started")
#: The ones no queue of this version has: with the rest, they say "0.1.9".
_OWN = {"tasks", "started", "finished"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def v019_waiting(storage: Storage) -> int | None:
    """How many tasks wait in the 0.1.9 queue at ``storage``'s root; None if it is not one."""
    try:
        names = set(storage.listdir(""))
        if layout.FORMAT_FILE in names or layout.KEY_FILE in names or not (_OWN | {"queued"}) <= names:
            return None
        return len(storage.listdir("queued"))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None


def v019_error(path: str, waiting: int) -> QueueError:
    """The error for a 0.1.9 queue: what it is, and the two ways to get its tasks run."""
    where = shlex.quote(path)
    return QueueError(
        f"{path} is a fs-task-queue 0.1.9 queue ({waiting} task(s) waiting): this version uses another"
        " format and does not open it. Fix: drain it with 0.1.9 (in another environment: `pip install"
        f" fs-task-queue==0.1.9`, then `fs-task-queue-worker --path {where}`), or import its waiting"
        f" tasks into a new queue with `fs-task-queue import-0.1.9 {where} NEWPATH`"
    )


class CallByName:
    """A call of ``module.name``, imported only when the task runs (on the worker)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        # What a queue's listing names the task by (Queue._func_name reads these).
        self.__module__, self.__qualname__ = module, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CallByName, (self.module, self.name))

    def __repr__(self) -> str:
        return f"CallByName({self.module!r}, {self.name!r})"


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    #: Job id and why it was left in the 0.1.9 queue.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    started: int = 0


def _check_owned(path: str, what: str) -> None:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise QueueError(f"{path} is a symlink: import only from a real 0.1.9 queue directory")
    if info.st_uid != os.geteuid():
        raise QueueError(
            f"{path} ({what}) is not yours (uid {info.st_uid}): its tasks name functions that would run as"
            " you, so they are imported only from a 0.1.9 queue you own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise QueueError(
            f"{path} ({what}) is writable by others (mode {stat.S_IMODE(info.st_mode):04o}): they could have"
            f" written its tasks. Fix: check them, then chmod go-w {shlex.quote(path)}"
        )


def _read_task(tasks: str, job_id: str) -> tuple[str, str, list[Any], dict[str, Any]]:
    """The task ``job_id`` of a 0.1.9 queue, checked; ValueError says what is wrong with it."""
    path = os.path.join(tasks, job_id)
    _check_owned(path, "a task file")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        task = json.loads(f.read())
    if not isinstance(task, dict):
        raise ValueError("not a 0.1.9 task (a JSON object)")
    module, name, args, kwargs = task.get("module"), task.get("name"), task.get("args"), task.get("kwargs")
    if not (isinstance(module, str) and all(_NAME.fullmatch(p) for p in module.split("."))):
        raise ValueError(f"its module {module!r} is not a module name")
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise ValueError(f"its function name {name!r} is not a name")
    if module == "__main__":
        raise ValueError(f"its function {name} was defined in a script (__main__): no worker can import it")
    if not (isinstance(args, list) and isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
        raise ValueError("its args are not a list, or its kwargs not an object")
    return module, name, args, kwargs


def import_019(old: str | os.PathLike[str], new: str | os.PathLike[str] | Queue) -> ImportReport:
    """Enqueue every task waiting in the 0.1.9 queue at ``old`` into the queue ``new``, then unqueue it there.

    ``new`` is a queue or its path (created if missing, once ``old`` passed its checks).

    Each task keeps its id. Its ``queued/`` entry is removed only once the
    new task is written (its ``tasks/`` file stays), so an import stopped
    midway loses nothing and, run again, skips what it already imported.
    Refused while 0.1.9 workers are registered (one could start a task being
    imported) and for a directory you do not own.
    """
    root = os.path.abspath(os.fspath(old))
    from fs_task_queue.storage.local import LocalStorage

    if v019_waiting(LocalStorage(root)) is None:
        raise QueueError(f"{root} is not a fs-task-queue 0.1.9 queue (no tasks/, queued/, started/, finished/)")
    for rel, what in (("", "the 0.1.9 queue"), ("tasks", "its tasks folder"), ("queued", "its queued folder")):
        _check_owned(os.path.join(root, rel), what)
    workers = sorted(os.listdir(os.path.join(root, "workers")))
    if workers:
        raise QueueError(
            f"{root} has 0.1.9 workers registered ({', '.join(workers[:3])}{' ...' if len(workers) > 3 else ''}):"
            " one could start a task while it is imported. Fix: stop them first; if they are gone already,"
            f" delete their files in {os.path.join(root, 'workers')}"
        )
    from fs_task_queue.queue import Queue

    queue = new if isinstance(new, Queue) else Queue(new)
    report = ImportReport(started=len(os.listdir(os.path.join(root, "started"))))
    tasks, queued = os.path.join(root, "tasks"), os.path.join(root, "queued")
    # In submission order (0.1.9 kept none: a task's queued/ link is made when it is submitted).
    waiting = sorted((os.lstat(os.path.join(queued, n)).st_mtime_ns, n) for n in os.listdir(queued))
    for _, job_id in waiting:
        if not _ID.fullmatch(job_id):
            report.skipped.append((job_id, "not a 0.1.9 task id"))
            continue
        try:
            module, name, args, kwargs = _read_task(tasks, job_id)
        except (OSError, ValueError) as exc:
            report.skipped.append((job_id, str(exc)))
            continue
        try:
            queue.job(job_id)  # imported by an earlier run stopped before it unqueued the task
        except NoSuchJobError:
            queue.enqueue_call(CallByName(module, name), args, kwargs, job_id=job_id, metadata={"imported_from": root})
        # Written: only now does the task leave the 0.1.9 queue.
        os.unlink(os.path.join(queued, job_id))
        report.imported.append(job_id)
    return report
