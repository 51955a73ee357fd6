"""The worker: claim tasks, run them, commit outcomes, keep a heartbeat.

A worker registers ``workers/<worker-id>`` (JSON: host, pid, start time,
version), touches it every ``heartbeat_interval`` seconds and stops after its
current task when the file is deleted. SIGINT/SIGTERM make it stop claiming,
finish the running task, unregister and return.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any

from fs_task_queue import layout
from fs_task_queue._version import __version__
from fs_task_queue.execute import run_claimed
from fs_task_queue.queue import Claimer, Queue, default_worker_id
from fs_task_queue.watch import DirWatcher

__all__ = ["Worker"]

log = logging.getLogger("fs_task_queue.worker")


class Worker:
    """Runs tasks from ``queue`` until told to stop.

    ``burst``: return when no task is left. ``max_jobs``: return after that many.
    ``max_idle``: return after that many seconds without a task.
    ``heartbeat_interval``: seconds between touches of the heartbeat file.
    ``poll_interval``/``max_poll_interval``: the polling backoff used where
    change notifications cannot see other hosts (network filesystems).
    """

    def __init__(
        self,
        queue: Queue | str | os.PathLike[str],
        *,
        name: str | None = None,
        burst: bool = False,
        max_jobs: int | None = None,
        max_idle: float | None = None,
        heartbeat_interval: float = 30.0,
        poll_interval: float = 0.05,
        max_poll_interval: float = 1.0,
    ) -> None:
        self.queue = queue if isinstance(queue, Queue) else Queue(queue)
        self.id = name or default_worker_id()
        if not self.id or "/" in self.id or self.id.startswith("."):
            raise ValueError(f"invalid worker name {self.id!r}: use letters, digits, '-' and '_'")
        self.burst = burst
        self.max_jobs = max_jobs
        self.max_idle = max_idle
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.jobs_done = 0
        self._stop = threading.Event()
        self._stop_reason = ""
        self._heartbeat_path = layout.worker_path(self.id)

    # -------------------------------------------------------------- control
    def stop(self, reason: str = "asked to stop") -> None:
        """Stop claiming; the running task (if any) finishes first."""
        if not self._stop.is_set():
            self._stop_reason = reason
            log.info("worker %s stopping: %s", self.id, reason)
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop(f"received {signal.Signals(signum).name}")

    # ------------------------------------------------------------ heartbeat
    def _register(self) -> None:
        record = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": time.time(),
            "version": __version__,
            "python": sys.version.split()[0],
        }
        try:
            self.queue.storage.publish(self._heartbeat_path, json.dumps(record).encode(), replace=False)
        except FileExistsError:
            raise ValueError(
                f"a worker named {self.id!r} is already registered in {self.queue.path}: pick another"
                f" --name, or delete {layout.WORKERS}/{self.id} if that worker is gone"
            ) from None

    def _unregister(self) -> None:
        for path in (self._heartbeat_path,):
            with contextlib.suppress(FileNotFoundError):
                self.queue.storage.remove(path)
        with contextlib.suppress(OSError):
            self.queue.storage.remove_tree(layout.claimed_dir(self.id))

    def _heartbeat_alive(self) -> bool:
        """Touch the heartbeat file; False (and stop) if it was deleted or cannot be written."""
        try:
            self.queue.storage.touch(self._heartbeat_path)
        except FileNotFoundError:
            self.stop(f"heartbeat file {layout.WORKERS}/{self.id} was deleted")
            return False
        except OSError as exc:
            self.stop(f"heartbeat file cannot be written ({exc.strerror})")
            return False
        return True

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            self._heartbeat_alive()

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        """Work until stopped; return the number of jobs processed."""
        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        self._register()
        beat = threading.Thread(target=self._heartbeat_loop, name=f"fsq-heartbeat-{self.id}", daemon=True)
        beat.start()
        log.info("worker %s serving %s", self.id, self.queue.path)
        claimer = Claimer(self.queue, self.id)
        storage = self.queue.storage
        watcher = DirWatcher(
            [storage.local_path(layout.QUEUED), storage.local_path(layout.WORKERS)],
            min_interval=self.poll_interval,
            max_interval=self.max_poll_interval,
        )
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                job = claimer.claim()
                if job is not None:
                    watcher.reset()
                    log.debug("running job %s", job.id)
                    run_claimed(job)
                    self.jobs_done += 1
                    idle_since = time.monotonic()
                    if self.max_jobs is not None and self.jobs_done >= self.max_jobs:
                        self.stop(f"reached --max-jobs {self.max_jobs}")
                    continue
                if self.burst:
                    self.stop("no task left (burst mode)")
                    break
                idle = time.monotonic() - idle_since
                if self.max_idle is not None and idle >= self.max_idle:
                    self.stop(f"idle for {self.max_idle} s")
                    break
                timeout = None if self.max_idle is None else self.max_idle - idle
                changed = watcher.wait(timeout)
                if changed and self.id in changed and not storage.exists(self._heartbeat_path):
                    # Something changed in workers/: was it our own heartbeat file?
                    self.stop(f"heartbeat file {layout.WORKERS}/{self.id} was deleted")
        finally:
            self._stop.set()
            watcher.close()
            self._unregister()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            log.info("worker %s stopped after %d jobs (%s)", self.id, self.jobs_done, self._stop_reason)
        return self.jobs_done
