"""Run times learned from earlier runs of the same function, kept in the queue.

A worker whose allocation ends (a SLURM job) must not claim a task that cannot
finish in its time left. A task may say how long it runs (its
``expected_duration`` option); when it does not, the worker goes by what the
queue learned from earlier successful runs of the same function.

Files: ``durations/<hash of the key>.json``, one per function, JSON only
(never code), at most :data:`MAX_FILE_BYTES`::

    {"key": "mymodule.simulate", "runs": 12, "recent": [61.2, 58.9, ...], "high": 61.2, "updated": 1765000000.0}

``key`` is the function's module and qualname (the task header's ``fn``); for
a notebook cell shipped by ``%%fsq``, the notebook and the cell's first line.
``recent`` holds the last :data:`RECENT` run times; ``high`` (the estimate) is
their maximum: a robust-high guess, since a task taken wrongly costs a put-back
while a task left wrongly only waits for the next worker. Each file is
rewritten whole and atomically (``Storage.publish(replace=True)``). Two
workers flushing the same function at once may lose a few of each other's
samples: the last write wins, which only makes the estimate a little staler.

Costs: the writer batches (a worker records run times in memory and writes
each function's file at most every :data:`FLUSH_INTERVAL` seconds and when its
task loop ends: 1 read + 1 publish per function per flush, about nothing per
task). The reader (only a worker with an allocation end) caches each
function's estimate for :data:`REFRESH_INTERVAL` seconds: at most one read
per function per interval, never one per claim. A missing, oversized or
malformed file is no estimate: the task is not held back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fs_task_queue.queue import Queue
    from fs_task_queue.storage import Storage

__all__ = ["DURATIONS", "DurationCache", "DurationLog", "Estimate", "duration_key", "learned_durations"]

log = logging.getLogger("fs_task_queue.worker")

#: The folder of the learned run times, at the queue's root.
DURATIONS = "durations"
#: Run times kept per function; the estimate is their maximum.
RECENT = 20
#: A file larger than this is not read (it is nobody's estimate).
MAX_FILE_BYTES = 16384
#: Seconds between a worker's writes of one function's run times.
FLUSH_INTERVAL = 30.0
#: Seconds a worker trusts an estimate it read before reading it again.
REFRESH_INTERVAL = 30.0
_KEY_LEN = 500


def duration_key(header: dict[str, Any]) -> str | None:
    """The key under which a task's run times are learned (None: nothing to learn by)."""
    opt = header.get("opt")
    meta = opt.get("metadata") if isinstance(opt, dict) else None
    fsq = meta.get("fsq") if isinstance(meta, dict) else None
    if isinstance(fsq, dict) and fsq.get("kind") == "cell":
        # Every %%fsq cell runs the same function (the cell runner): its code is what differs.
        key = f"cell {fsq.get('notebook') or '-'}: {fsq.get('summary') or ''}"
    else:
        fn = header.get("fn")
        if not isinstance(fn, str) or not fn:
            return None
        key = fn
    return key[:_KEY_LEN]


def duration_path(key: str) -> str:
    return f"{DURATIONS}/{hashlib.sha1(key.encode()).hexdigest()[:24]}.json"


@dataclass(frozen=True)
class Estimate:
    """What the queue learned about one function's run time."""

    key: str
    runs: int
    high: float  # seconds: the longest of the recent runs
    recent: tuple[float, ...]
    updated: float

    def to_json(self) -> bytes:
        record = {"key": self.key, "runs": self.runs, "recent": list(self.recent), "high": self.high}
        return json.dumps({**record, "updated": self.updated}).encode()

    @classmethod
    def parse(cls, data: bytes) -> Estimate | None:
        """The estimate in ``data``, or None if it is not one (too big, not JSON, wrong types)."""
        if len(data) > MAX_FILE_BYTES:
            return None
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):  # [[[[...: deep nesting is no ValueError
            return None
        if not isinstance(record, dict):
            return None
        key, runs, recent, updated = record.get("key"), record.get("runs"), record.get("recent"), record.get("updated")
        if not isinstance(key, str) or not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
            return None
        if not isinstance(recent, list) or not recent or not all(_seconds(x) for x in recent):
            return None
        if not isinstance(updated, (int, float)) or not _seconds(updated):
            return None
        values = tuple(float(x) for x in recent[-RECENT:])
        return cls(key=key, runs=runs, high=max(values), recent=values, updated=float(updated))

    def add(self, seconds: list[float], now: float) -> Estimate:
        recent = (*self.recent, *seconds)[-RECENT:]
        return Estimate(self.key, self.runs + len(seconds), max(recent), recent, now)


def _seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def read_estimate(storage: Storage, key: str) -> Estimate | None:
    """The estimate recorded for ``key`` (None: none, or the file is not one)."""
    try:
        estimate = Estimate.parse(storage.read(duration_path(key)))
    except OSError:
        return None
    # A hash collision (or a file copied by hand) is someone else's estimate.
    return estimate if estimate is not None and estimate.key == key else None


class DurationLog:
    """Run times of finished tasks, written to the queue per function in batches."""

    def __init__(self, storage: Storage, interval: float = FLUSH_INTERVAL) -> None:
        self.storage = storage
        self.interval = interval
        self._pending: dict[str, list[float]] = {}
        self._next_flush = 0.0

    def add(self, key: str, seconds: float) -> None:
        if not _seconds(seconds):
            return
        self._pending.setdefault(key, []).append(float(seconds))
        if time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self) -> None:
        """Write what was learned since the last flush (1 read + 1 publish per function)."""
        pending, self._pending = self._pending, {}
        self._next_flush = time.monotonic() + self.interval
        for key, seconds in pending.items():
            now = time.time()
            old = read_estimate(self.storage, key) or Estimate(key, 0, 0.0, (), now)
            try:
                self.storage.publish(
                    duration_path(key), old.add(seconds, now).to_json(), replace=True, make_parent=True
                )
            except OSError as exc:  # advisory data: never a reason to stop serving
                log.warning("cannot record the run time of %s: %s", key, exc)


class DurationCache:
    """Learned estimates as a worker sees them: each re-read at most every ``interval`` seconds."""

    def __init__(self, storage: Storage, interval: float = REFRESH_INTERVAL) -> None:
        self.storage = storage
        self.interval = interval
        self._cache: dict[str, tuple[float, Estimate | None]] = {}

    def estimate(self, key: str) -> Estimate | None:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.interval:
            return hit[1]
        if len(self._cache) > 4096:
            self._cache.clear()
        estimate = read_estimate(self.storage, key)
        self._cache[key] = (now, estimate)
        return estimate


def learned_durations(queue: Queue, limit: int = 50) -> list[Estimate]:
    """The queue's learned run times (at most ``limit`` files read), longest first."""
    storage = queue.storage
    try:
        names = sorted(n for n in storage.listdir(DURATIONS) if n.endswith(".json"))[:limit]
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name, data in storage.read_many([f"{DURATIONS}/{n}" for n in names]).items():
        if isinstance(data, bytes):
            with contextlib.suppress(ValueError):
                estimate = Estimate.parse(data)
                if estimate is not None and name == duration_path(estimate.key):
                    found.append(estimate)
    return sorted(found, key=lambda e: -e.high)
