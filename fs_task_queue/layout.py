"""Where every file of a queue lives: pure path arithmetic, no I/O.

Paths are relative to the queue root and use ``/``, so the same layout serves a
local directory and a remote one. See ``docs/protocol.md`` for what each holds.
"""

from __future__ import annotations

__all__ = [
    "ALIVE_FILE",
    "DELAYED",
    "DONE_TASKS",
    "FAILED_TASKS",
    "done_task_path",
    "alive_path",
    "identity_path",
    "delayed_path",
    "failed_task_path",
    "CLAIMED",
    "FORMAT_FILE",
    "JOBS",
    "KEY_FILE",
    "QUARANTINE",
    "QUEUED",
    "RESULTS",
    "SUBDIRS",
    "TMP",
    "WORKERS",
    "claimed_dir",
    "claimed_path",
    "job_dir",
    "job_file",
    "queued_path",
    "queued_shard",
    "SHARD_LEN",
    "result_path",
    "worker_path",
]

FORMAT_FILE = "fsq-format.json"
KEY_FILE = "key"
QUEUED = "queued"
CLAIMED = "claimed"
RESULTS = "results"
JOBS = "jobs"
WORKERS = "workers"
TMP = "tmp"
QUARANTINE = "quarantine"
DELAYED = "delayed"
FAILED_TASKS = "failed"
#: Task files of finished jobs, kept until purged: moving a file costs a rename,
#: deleting it an unlink, which is several times slower on ext4 (block freeing, discard).
DONE_TASKS = "done"
ALIVE_FILE = ".alive"
IDENTITY_FILE = ".identity"
SUBDIRS = (QUEUED, DELAYED, CLAIMED, RESULTS, FAILED_TASKS, DONE_TASKS, JOBS, WORKERS, TMP, QUARANTINE)


#: Length of a shard's name: the first 17 characters of an order key
#: (``YYYYMMDD-HHMMSS-d``), so one shard holds a tenth of a second of submissions.
SHARD_LEN = 17


def queued_shard(name: str) -> str:
    """The shard folder in ``queued/`` that holds the task file ``name``."""
    return f"{QUEUED}/{name[:SHARD_LEN]}"


def queued_path(name: str) -> str:
    """Where the task file ``name`` waits: ``queued/<shard>/<name>`` (see :mod:`fs_task_queue.shards`)."""
    return f"{QUEUED}/{name[:SHARD_LEN]}/{name}"


def claimed_dir(worker_id: str) -> str:
    return f"{CLAIMED}/{worker_id}"


def delayed_path(name: str) -> str:
    return f"{DELAYED}/{name}"


def failed_task_path(name: str) -> str:
    return f"{FAILED_TASKS}/{name}"


def done_task_path(name: str) -> str:
    return f"{DONE_TASKS}/{name}"


def alive_path(worker_id: str) -> str:
    return f"{CLAIMED}/{worker_id}/{ALIVE_FILE}"


def identity_path(worker_id: str) -> str:
    return f"{CLAIMED}/{worker_id}/{IDENTITY_FILE}"


def claimed_path(worker_id: str, name: str) -> str:
    return f"{CLAIMED}/{worker_id}/{name}"


def result_path(job_id: str) -> str:
    return f"{RESULTS}/{job_id}"


def job_dir(job_id: str) -> str:
    return f"{JOBS}/{job_id}"


def job_file(job_id: str, name: str) -> str:
    return f"{JOBS}/{job_id}/{name}"


def worker_path(worker_id: str) -> str:
    return f"{WORKERS}/{worker_id}"
