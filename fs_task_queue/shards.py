"""``queued/`` is split into shards: one folder per tenth of a second of submissions.

A claimer lists the top of ``queued/`` (one name per shard) and then only the
oldest shards, never every queued task at once, so its first claim costs about
the same with 1,000 or 50,000 tasks waiting: listing 50,000 names takes ~35 ms
on ext4, a shard of 1,500 about 1 ms. A shard is named by the first
:data:`~fs_task_queue.layout.SHARD_LEN` characters of the order keys in it
(``YYYYMMDD-HHMMSS-d``), so the path of a task follows from its name (finding
a job stays a constant number of operations) and shards sort in submission order.

Shards come and go. Whoever puts a task into ``queued/`` makes its shard when
needed, and claimers remove emptied shards. The two can race: a move into a
shard removed a moment earlier fails with ENOENT, and the mover makes the shard
again and retries (``make_parent`` of the storage's publish and rename). Shards
are old whenever a task goes back under its old name (requeue, retry, recovery,
release) or a submitter's clock is behind, and idle claimers are woken by the
very ``mkdir`` of such a shard, so a claimer removes a shard it merely *found*
empty only once it has seen it empty for :data:`KEEP_RECENT` seconds of its
own monotonic clock: a mover has long renamed its task in by then. A shard a
claimer emptied itself goes at once, and a mover that still loses retries for
up to :data:`MOVE_PATIENCE` seconds. The newest shard is also kept while it is
recent, so a steady trickle of submissions does not make and remove a folder
for every task.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator

from fs_task_queue import layout
from fs_task_queue.errors import SymlinkInQueueError
from fs_task_queue.ids import is_task_name
from fs_task_queue.storage import Storage

__all__ = [
    "Backlog",
    "is_shard_name",
    "iter_queued_names",
    "move_to_queued",
    "publish_queued",
    "publish_queued_many",
    "queued_names",
]

_SHARD_RE = re.compile(r"\d{8}-\d{6}-\d")  # fullmatch: "$" would accept a trailing newline
log = logging.getLogger("fs_task_queue.worker")

#: A claimer lists shards until its batch holds this many names (one shard when
#: they are full, many when a slow trickle left one task per shard).
BATCH_NAMES = 512
#: A claimer re-lists ``queued/`` at least this often even with names left in its
#: batch, so re-queued (older) tasks are not stuck behind a long batch.
BATCH_MAX_AGE = 10.0
#: The newest shard is not removed while it is younger than this (seconds), and
#: a shard found empty is removed only after it stayed empty this long.
KEEP_RECENT = 2.0
#: A mover whose shard keeps vanishing retries this long (seconds) before it gives up (EAGAIN).
MOVE_PATIENCE = 5.0
#: After losing a race for a name a claimer skips up to this many of the next ones.
STEP_ASIDE = 32


def is_shard_name(name: str) -> bool:
    """True when ``name`` has the shape of a shard folder of ``queued/``."""
    return _SHARD_RE.fullmatch(name) is not None


def _shard_of_time(seconds: float) -> str:
    tenths = int(seconds * 10)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(tenths // 10)) + f"-{tenths % 10}"


def publish_queued(storage: Storage, name: str, data: bytes) -> None:
    """Publish a new task file as ``queued/<shard>/<name>``, making the shard if it is missing.

    The shard is made after the data is written: a submit that fails (disk full)
    leaves nothing in ``queued/``, not even an empty shard. Raises OSError with
    EAGAIN (nothing published) if the shard vanished at every try for
    :data:`MOVE_PATIENCE` seconds.
    """
    path = layout.queued_path(name)
    _into_shard(storage, name, lambda: storage.publish(path, data, replace=False, make_parent=True))


def publish_queued_many(storage: Storage, tasks: list[tuple[str, bytes]]) -> list[OSError | None]:
    """:func:`publish_queued` each ``(name, data)`` through the storage's batch publish; each one's error or None.

    Those that met a vanishing or symlinked shard are published again one at a
    time, with the patience and setting-aside of :func:`publish_queued`.
    """
    errors = storage.publish_many([(layout.queued_path(n), d) for n, d in tasks], replace=False, make_parent=True)
    for i, exc in enumerate(errors):
        if exc is not None and (
            isinstance(exc, (NotADirectoryError, SymlinkInQueueError)) or exc.errno == errno.EAGAIN
        ):
            try:
                publish_queued(storage, *tasks[i])
                errors[i] = None
            except OSError as again:
                errors[i] = again
    return errors


def move_to_queued(storage: Storage, src: str, name: str) -> None:
    """Rename the task file ``src`` to ``queued/<shard>/<name>``, making the shard if needed.

    Raises FileNotFoundError when ``src`` is gone (another process moved it first),
    and OSError with EAGAIN (``src`` left where it is) if the shard vanished at
    every try for :data:`MOVE_PATIENCE` seconds.
    """
    path = layout.queued_path(name)
    _into_shard(storage, name, lambda: storage.rename(src, path, make_parent=True))


def _into_shard(storage: Storage, name: str, move: Callable[[], None]) -> None:
    """Make ``move`` (of the task ``name`` into its shard), setting a symlinked shard aside first if needed."""
    try:
        _patiently(move)
    except (NotADirectoryError, SymlinkInQueueError):
        _set_aside(storage, name)
        _patiently(move)


def _set_aside(storage: Storage, name: str) -> None:
    """Move a symlink (or file) found where the shard of ``name`` belongs to ``quarantine/``.

    The storage refused to move a task through it; what it points to is not
    touched. The mover then makes a real shard folder and tries once more.
    """
    shard = name[: layout.SHARD_LEN]
    target = f"{layout.QUARANTINE}/{shard}.{os.urandom(3).hex()}"
    try:
        storage.rename(f"{layout.QUEUED}/{shard}", target)
    except FileNotFoundError:
        return  # moved aside by another process already
    log.warning("moved queued/%s to %s: not a folder (a symlink?), no task is moved through it", shard, target)


def _patiently(move: Callable[[], None]) -> None:
    """Run ``move`` again while it fails with EAGAIN (its shard removed at each of its tries).

    The storage's own tries follow each other within microseconds; a claimer
    that keeps winning against them (one that removes empty shards at sight,
    such as an older version) is outwaited here, with pauses growing from 1 ms
    to 100 ms, for at most :data:`MOVE_PATIENCE` seconds. Nothing here runs for
    a move that succeeds at once.
    """
    deadline = 0.0
    pause = 0.001
    while True:
        try:
            move()
            return
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            now = time.monotonic()
            if not deadline:
                deadline = now + MOVE_PATIENCE
            elif now >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _top(storage: Storage) -> tuple[list[str], list[str]]:
    """The top of ``queued/``: (shard folders, other entries), dot-files left out."""
    shards, others = [], []
    for name, is_dir in storage.scan(layout.QUEUED):
        if name.startswith("."):
            continue  # NFS silly-rename files and the like
        if is_dir and is_shard_name(name):
            shards.append(name)
        else:
            others.append(name)
    return shards, others


def iter_queued_names(storage: Storage) -> Iterator[str]:
    """The file names in the shards of ``queued/`` (not dot-files), a shard at a time, in no order."""
    try:
        shards, _ = _top(storage)
    except FileNotFoundError:
        return
    for shard in shards:
        try:
            names = storage.listdir(f"{layout.QUEUED}/{shard}")
        except (FileNotFoundError, NotADirectoryError, SymlinkInQueueError):
            continue  # emptied and removed meanwhile, or swapped for a symlink (never listed through)
        yield from (n for n in names if not n.startswith("."))


def queued_names(storage: Storage) -> list[str]:
    """Every file name in the shards of ``queued/`` (not dot-files), oldest first."""
    return sorted(iter_queued_names(storage))


class Backlog:
    """The oldest queued task names for one claimer, listed a few shards at a time.

    :meth:`pop` hands out names oldest first; the claimer tries to claim each.
    Entries of ``queued/`` that are not shards, and names inside a shard that are
    not its tasks, go to ``on_foreign`` (their path under ``queued/``) unread.
    Emptied shards are removed.
    """

    def __init__(self, storage: Storage, on_foreign: Callable[[str], None]) -> None:
        self._storage = storage
        self._on_foreign = on_foreign
        # Shards of the last listing of queued/ not yet read, newest first (pop() takes the oldest).
        self._shards: list[str] = []
        self._newest = ""
        # Names read from shards, as a heap: heapify is O(n), each pop O(log n).
        self._heap: list[str] = []
        self._left: dict[str, int] = {}  # shard -> its names still in the heap
        self._emptied: list[str] = []  # shards whose last name was handed out
        # Shards found empty -> when first (monotonic clock); removed once empty for KEEP_RECENT.
        self._empty_since: dict[str, float] = {}
        self._listed_at = 0.0
        self._relisted = False

    def clear(self) -> None:
        """Forget everything so the next :meth:`pop` lists ``queued/`` again."""
        self._shards.clear()
        self._heap.clear()
        self._left.clear()
        self._listed_at = 0.0

    def new_round(self) -> None:
        """Start a claim: :meth:`pop` may list ``queued/`` once more before it gives up."""
        self._relisted = False
        if self._listed_at and time.monotonic() - self._listed_at > BATCH_MAX_AGE:
            self.clear()

    def pop(self) -> str | None:
        """The oldest name not handed out yet, or None when this round found nothing more."""
        if self._emptied:
            # Removed only now, after the claimer moved the shard's last task out of it.
            for shard in self._emptied:
                self._remove_if_done(shard)
            self._emptied.clear()
        heap = self._heap
        if not heap and not self._refill():
            return None
        return self._hand_out(heapq.heappop(heap))

    def step_aside(self) -> None:
        """After losing the race for a name, skip a random few of the next ones.

        Claimers that read the same shards would otherwise walk the same names
        in lockstep and lose every other rename (measured with two workers: half
        of all claim renames failed). The skipped names are left to the claimer
        that is ahead; any it does not take are found again by the next listing,
        so a name is never lost, only started a little out of order.
        """
        heap = self._heap
        for _ in range(random.randrange(STEP_ASIDE)):
            if not heap:
                break
            self._hand_out(heapq.heappop(heap))

    def _hand_out(self, name: str) -> str:
        shard = name[: layout.SHARD_LEN]
        left = self._left[shard] - 1
        if left:
            self._left[shard] = left
        else:
            del self._left[shard]
            self._emptied.append(shard)
        return name

    def _refill(self) -> bool:
        while True:
            while self._shards and len(self._heap) < BATCH_NAMES:
                self._read(self._shards.pop())
            if self._heap:
                return True
            if self._relisted:
                return False
            self._list_top()

    def _list_top(self) -> None:
        self._relisted = True
        self._listed_at = time.monotonic()
        shards, others = _top(self._storage)
        for name in others:
            self._on_foreign(name)
        shards.sort(reverse=True)
        self._shards = shards
        self._newest = shards[0] if shards else ""
        if self._empty_since:  # forget shards removed by others meanwhile
            listed = set(shards)
            self._empty_since = {s: t for s, t in self._empty_since.items() if s in listed}

    def _read(self, shard: str) -> None:
        try:
            names = self._storage.listdir(f"{layout.QUEUED}/{shard}")
        except FileNotFoundError:
            return  # emptied and removed by another claimer
        except (NotADirectoryError, SymlinkInQueueError):
            # Swapped for a symlink (or a file) since queued/ was listed: never
            # descended into, moved aside like any other foreign entry.
            self._on_foreign(shard)
            return
        tasks = []
        for name in names:
            if name.startswith("."):
                continue
            if name.startswith(shard) and is_task_name(name):
                tasks.append(name)
            else:
                self._on_foreign(f"{shard}/{name}")
        if not tasks:
            # Found empty: it may be a shard a mover has just made and is about
            # to rename its task into (idle claimers are woken by that mkdir), so
            # it goes only once it stayed empty for KEEP_RECENT on this clock.
            now = time.monotonic()
            since = self._empty_since.setdefault(shard, now)
            if now - since >= KEEP_RECENT:
                del self._empty_since[shard]
                self._remove_if_done(shard)
            return
        self._empty_since.pop(shard, None)
        self._left[shard] = len(tasks)
        self._heap += tasks
        heapq.heapify(self._heap)

    def _remove_if_done(self, shard: str) -> None:
        if shard == self._newest and shard >= _shard_of_time(time.time() - KEEP_RECENT):
            return  # submitters are likely still writing into it
        try:
            self._storage.remove_dir(f"{layout.QUEUED}/{shard}")
        except OSError:
            pass  # not empty (a task arrived: the next listing finds it), or gone already
