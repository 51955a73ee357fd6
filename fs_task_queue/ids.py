"""Job ids and the names of task files.

A task file in ``queued/`` is named by its *order key*, a string that sorts in
submission order (UTC time to the microsecond, strictly increasing within a
process, then random hex so two clients never collide). A generated job id *is*
its order key, so the file of a generated job is found without a listing. A job
submitted with a custom id is stored as ``<order>.<custom id>``.
"""

from __future__ import annotations

import os
import re
import threading
import time

__all__ = [
    "is_generated_id",
    "is_task_name",
    "is_worker_id",
    "job_id_of",
    "new_order_key",
    "task_name",
    "validate_job_id",
    "validate_worker_id",
]

# Matched with fullmatch: "$" also matches before a trailing newline, so
# re.match("^...$") took "id\n" for an id (a name that is another file).
_ORDER_RE = re.compile(r"\d{8}-\d{6}-\d{6}-[0-9a-f]{6}")
_CUSTOM_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}")
#: Worker ids: what default_worker_id() makes (host name characters, '-', '_')
#: plus '.', '@' and '+' that custom names use, never '/', a leading '-' or '.'.
_WORKER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+\-]{0,127}")

_lock = threading.Lock()
_last_us = 0
_stamp_second = -1
_stamp = ""
_suffix = os.urandom(3).hex()


def _new_suffix() -> None:
    global _suffix
    _suffix = os.urandom(3).hex()


os.register_at_fork(after_in_child=_new_suffix)


def new_order_key(seconds: float | None = None) -> str:
    """A new key for the time ``seconds`` (epoch; default now) that sorts after every key this process made before.

    Submitters pass their clock corrected to the storage's (see ``Queue(clock=...)``).
    """
    global _last_us, _stamp_second, _stamp
    with _lock:
        now_us = time.time_ns() // 1000 if seconds is None else int(seconds * 1_000_000)
        # Two calls within one microsecond (or a clock step back) must still sort
        # in call order, so never hand out a time at or below the last one.
        _last_us = now_us = max(now_us, _last_us + 1)
        seconds, micros = divmod(now_us, 1_000_000)
        if seconds != _stamp_second:  # strftime costs more than the rest together
            _stamp_second, _stamp = seconds, time.strftime("%Y%m%d-%H%M%S", time.gmtime(seconds))
        stamp = _stamp
    # Keys of one process differ by time; the per-process random suffix keeps two
    # processes that pick the same microsecond apart.
    return f"{stamp}-{micros:06d}-{_suffix}"


def is_generated_id(job_id: str) -> bool:
    """True when ``job_id`` has the shape of a generated id (its own order key)."""
    return _ORDER_RE.fullmatch(job_id) is not None


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` if it can name a job, else raise ValueError saying what is allowed."""
    if not isinstance(job_id, str) or not (_CUSTOM_RE.fullmatch(job_id) or is_generated_id(job_id)):
        raise ValueError(
            f"invalid job id {job_id!r}: use 1-128 characters from letters, digits, '_' and '-', not starting with '-'"
        )
    return job_id


def task_name(order: str, job_id: str) -> str:
    """The file name of a task in ``queued/``."""
    return order if order == job_id else f"{order}.{job_id}"


def is_task_name(name: str) -> bool:
    """True when ``name`` has the shape of a task file name (anything else is foreign)."""
    order, dot, custom = name.partition(".")
    if not _ORDER_RE.fullmatch(order):
        return False
    return not dot or _CUSTOM_RE.fullmatch(custom) is not None


def is_worker_id(worker_id: object) -> bool:
    """True when ``worker_id`` can name a worker (its folder ``claimed/<id>``, its file ``workers/<id>``)."""
    return isinstance(worker_id, str) and _WORKER_RE.fullmatch(worker_id) is not None


def validate_worker_id(worker_id: str) -> str:
    """Return ``worker_id`` if it can name a worker, else raise ValueError saying what is allowed.

    A worker id becomes a file and a folder name in the queue, so '/', '..',
    NUL, a newline, a leading '-' or '.' (dot names are not workers) are refused.
    """
    if not is_worker_id(worker_id):
        raise ValueError(
            f"invalid worker id {worker_id!r}: use 1-128 characters from letters, digits, '_', '-', '.',"
            " '@' and '+', starting with a letter, digit or '_'"
        )
    return worker_id


def job_id_of(name: str) -> str:
    """The job id of the task file ``name`` (inverse of :func:`task_name`)."""
    order, _, custom = name.partition(".")
    return custom or order
