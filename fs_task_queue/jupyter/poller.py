"""One background poller per process that keeps every live view current.

Each live view (a job's widget, a group's, a queue dashboard) asks the poller
for the jobs it still waits on; a tick takes ONE :meth:`Queue.snapshot
<fs_task_queue.queue.Queue.snapshot>` per queue for all of them and hands the
states back. What a tick costs therefore depends on the workers and the running
jobs, never on how many jobs are queued or how many views are open.

The thread exists only while some view is pending: it starts with the first
one, backs off (0.2 s up to 5 s) while nothing changes, sleeps on inotify for
local queues (a job that starts or ends wakes it at no cost), and ends by itself
when the last job is done or the last view is dropped. Idle, it makes no file
operation at all. It never creates widgets (comms must be opened on the main
thread); it only sets traits, under :attr:`Poller.lock`, which the main thread
also takes when it ticks (IPython's ``post_run_cell`` and :func:`views.wait
<fs_task_queue.jupyter.views.wait>`).

This module imports neither IPython nor ipywidgets.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Protocol

from fs_task_queue import layout
from fs_task_queue.status import JobStatus
from fs_task_queue.watch import DirWatcher

if TYPE_CHECKING:
    from fs_task_queue.queue import Queue
    from fs_task_queue.snapshot import JobState

__all__ = ["LiveView", "Poller"]


class LiveView(Protocol):
    """What the poller needs from a view."""

    #: The queue its jobs are in.
    queue: Queue
    #: Whether the view shows progress reports (only then are they read).
    wants_progress: bool

    @property
    def pending(self) -> bool:
        """True while the view still needs ticks (a job not done, a dashboard refreshing)."""
        ...

    def pending_ids(self) -> Collection[str]:
        """The ids of the jobs it shows that are not done yet (asked for in the next snapshot)."""
        ...

    def apply(self, states: Mapping[str, JobState], now: float) -> bool:
        """Show the new states (set traits only); True if anything on screen changed."""
        ...


class Poller:
    """The process's poller: get it with :meth:`Poller.instance`."""

    #: Seconds between ticks right after a change, and the most it backs off to.
    MIN_INTERVAL = 0.2
    MAX_INTERVAL = 5.0
    #: Back-off factor per tick without change.
    BACKOFF = 1.6

    _instance: Poller | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        #: Held while views are ticked (their traits set); re-entrant for a click during a tick.
        self.lock = threading.RLock()
        self._views: dict[int, weakref.ref[LiveView]] = {}
        self._thread: threading.Thread | None = None
        self._stop = False
        self._poked = False
        #: How many main-thread waits are driving ticks themselves (the thread then only sleeps).
        self._driving = 0
        self._interval = self.MIN_INTERVAL
        self._due = 0.0
        self._watcher: DirWatcher | None = None
        self._watched: tuple[str | None, ...] = ()
        #: Ticks made and file-watching wake-ups (for tests and benchmarks).
        self.ticks = 0

    @classmethod
    def instance(cls) -> Poller:
        """The poller of this process (made on first use)."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
                atexit.register(cls._instance.stop)
            return cls._instance

    # ----------------------------------------------------------------- views
    def register(self, view: LiveView, *, start: bool = True) -> None:
        """Keep ``view`` current (held weakly: a dropped view is forgotten); start the thread if needed."""
        key = id(view)

        def dropped(_ref: weakref.ref[LiveView]) -> None:
            self._forget(key)

        with self.lock:
            self._views[key] = weakref.ref(view, dropped)
            self._due = 0.0  # tick soon: the new view wants its first state
            if start and self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name="fsq-poller", daemon=True)
                self._thread.start()
        self.wake()

    def unregister(self, view: LiveView) -> None:
        with self.lock:
            self._views.pop(id(view), None)
        self.wake()

    def _forget(self, key: int) -> None:
        # Called by the garbage collector, possibly inside a tick (the lock is re-entrant).
        self._views.pop(key, None)
        self.wake()

    def views(self) -> list[LiveView]:
        """The views still alive."""
        return [v for ref in list(self._views.values()) if (v := ref()) is not None]

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wake(self) -> None:
        """Make the thread tick soon (a view added, a job canceled); safe from any thread."""
        self._poked = True
        watcher = self._watcher
        if watcher is not None:
            watcher.interrupt()

    # ----------------------------------------------------------------- ticks
    def tick(self, force: bool = False) -> bool:
        """Update every pending view now if a tick is due (or ``force``); True if something changed.

        Called by the thread, and on the main thread after each cell
        (``post_run_cell``) and while :func:`views.wait` blocks, so widgets are
        current when a cell ends. Nothing pending: returns at once, no file operation.
        """
        if not force and time.monotonic() < self._due:
            return False
        changed, _ = self._tick()
        return changed

    def _tick(self) -> tuple[bool, bool]:
        """(anything changed, a shown job is started so its progress may move)."""
        changed = moving = False
        with self.lock:
            pending = [v for v in self.views() if v.pending]
            if not pending:
                return False, False
            by_queue: dict[Queue, list[LiveView]] = {}
            for view in pending:
                by_queue.setdefault(view.queue, []).append(view)
            now = time.time()
            for queue, views in by_queue.items():
                ids = {job_id for view in views for job_id in view.pending_ids()}
                progress = any(v.wants_progress for v in views)
                states = queue.snapshot(ids, progress=progress) if ids else {}
                for view in views:
                    changed |= view.apply(states, now)
                if progress and any(s.status is JobStatus.STARTED for s in states.values()):
                    moving = True
            self.ticks += 1
            # Progress is not notified by inotify: poll fast while a shown job runs.
            if changed or moving:
                self._interval = self.MIN_INTERVAL
            else:
                self._interval = min(self._interval * self.BACKOFF, self.MAX_INTERVAL)
            self._due = time.monotonic() + self._interval
        return changed, moving

    def _pending_queues(self) -> list[Queue]:
        seen: dict[Queue, None] = {}
        for view in self.views():
            if view.pending:
                seen.setdefault(view.queue)
        return list(seen)

    def watcher_for(self, queues: list[Queue]) -> DirWatcher:
        """A watcher of the queues' ``claimed/`` and ``results/`` (a claim or an end wakes it at once).

        Remote storage has no local path: the watcher then only times out, on
        the intervals the caller passes (its own back-off is set out of the way).
        """
        dirs: list[str | None] = []
        for queue in queues:
            dirs += [queue.storage.local_path(layout.RESULTS), queue.storage.local_path(layout.CLAIMED)]
        big = self.MAX_INTERVAL
        return DirWatcher(dirs, min_interval=big, max_interval=big, local_safety_interval=big, nested=True)

    def _run(self) -> None:
        try:
            while True:
                with self.lock:
                    queues = self._pending_queues()
                    if self._stop or not queues:
                        # Decided under the lock: a register() now starts a new thread.
                        self._thread = None
                        return
                    paths = tuple(q.path for q in queues)
                    if self._watcher is None or paths != self._watched:
                        if self._watcher is not None:
                            self._watcher.close()
                        self._watcher = self.watcher_for(queues)
                        self._watched = paths
                    watcher = self._watcher
                left = self._due - time.monotonic()
                if left <= 0:
                    if not self._driving:
                        self._tick()
                    else:
                        self._due = time.monotonic() + self.MIN_INTERVAL
                    continue
                self._poked = False
                changes = watcher.wait(left)
                if changes or self._poked:
                    # Something happened: look soon, but not more often than MIN_INTERVAL.
                    self._due = min(self._due, time.monotonic() + self.MIN_INTERVAL)
                    self._interval = self.MIN_INTERVAL
        finally:
            with self.lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                if self._watcher is not None and self._thread is None:
                    self._watcher.close()
                    self._watcher = None
                    self._watched = ()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (it ends when nothing is pending); True if it is gone."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def stop(self) -> None:
        """End the thread (at interpreter exit: no daemon thread may touch a closed comm)."""
        self._stop = True
        self.wake()
        self.join(1.0)
