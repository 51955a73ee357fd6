"""Is a worker alive? Exact answers where the kernel can give them.

Every claimer holds an exclusive flock on ``claimed/<worker-id>/.alive`` for
its lifetime (through :mod:`filelock`). The kernel releases it the instant the
process dies, so an observer on the *same host and mount* learns of a death at
once by trying the lock. flock does not exclude across hosts (NFS client
caches, two sshfs mounts), so there the observer judges the worker's heartbeat
file by whether it changes, timed on the observer's own monotonic clock.

A worker's identity for this purpose is (host name, boot id, device of the
queue root); ``FSQ_HOST_ID`` overrides the host name, e.g. for containers that
share a hostname, or tests that simulate two hosts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fs_task_queue import layout
from fs_task_queue.storage import Storage

if TYPE_CHECKING:
    import filelock

__all__ = ["AliveLock", "HostIdentity", "host_name", "probe_alive_lock"]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class HostIdentity:
    """Where a process runs, as far as liveness probes care."""

    host: str
    boot: str
    dev: int | None

    @classmethod
    def here(cls, storage: Storage) -> HostIdentity:
        root = storage.local_path("")
        dev = None
        if root is not None:
            try:
                dev = os.stat(root).st_dev
            except OSError:
                dev = None
        return cls(host_name(), _boot_id(), dev)

    def as_record(self) -> dict[str, Any]:
        return {"host": self.host, "boot": self.boot, "dev": self.dev}


def host_name() -> str:
    """This host's name for records and liveness decisions (``FSQ_HOST_ID`` overrides it)."""
    return os.environ.get("FSQ_HOST_ID") or os.uname().nodename


def _lock(path: str) -> filelock.UnixFileLock:
    import filelock  # only workers take locks: clients need not import it

    # No soft-lock fallback: a lock file that outlives its holder would make a
    # dead worker look alive forever.
    return filelock.UnixFileLock(path, fallback_to_soft=False, preserve_lock_file=True, thread_local=False)


#: Seconds a new claimer keeps trying for its liveness lock before taking the name for taken.
_TAKEN_AFTER = 0.5


#: Descriptors of the liveness locks this process holds. A forked child (a task
#: process, a task's own children and daemons) inherits them, and an flock
#: lives while any descriptor of it is open: a daemon left by a task would keep
#: a SIGKILLed worker "alive" to same-host recoverers for as long as it runs.
#: The child closes its copies at once (the parent's keep the lock).
_held_fds: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _held_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class AliveLock:
    """The liveness lock a claimer holds on ``claimed/<worker-id>/.alive``."""

    def __init__(self, storage: Storage, worker_id: str) -> None:
        self.path = storage.local_path(layout.alive_path(worker_id))
        self._lock = _lock(self.path) if self.path is not None else None

    def acquire(self) -> None:
        """Take the lock; raise FileExistsError if a live process holds it (the name is taken)."""
        if self._lock is not None:
            import filelock

            try:
                # Not timeout=0: a recoverer on this host may be probing the lock
                # (it holds it for microseconds, see probe_alive_lock) just as a
                # new worker registers. A live holder keeps it for good.
                self._lock.acquire(timeout=_TAKEN_AFTER, poll_interval=0.01)
            except filelock.Timeout:
                raise FileExistsError(f"{self.path} is held by a live process") from None
            fd = self._lock._context.lock_file_fd
            if fd is not None:
                _held_fds.add(fd)

    def __del__(self) -> None:
        # Dropped without release() (a dequeue() claimer whose Queue was
        # collected): filelock closes the descriptor next, and its number would
        # be reused. Left in _held_fds, a later fork's child would close that
        # reused descriptor (a pipe, a storage folder) instead of the lock.
        lock = getattr(self, "_lock", None)
        if lock is not None:
            _held_fds.discard(lock._context.lock_file_fd or -1)

    def release(self, remove: bool = False) -> None:
        if self._lock is not None:
            _held_fds.discard(self._lock._context.lock_file_fd or -1)
            self._lock.release(force=True)
            if remove and self.path is not None:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass


def probe_alive_lock(storage: Storage, worker_id: str) -> bool | None:
    """True if the worker holds its lock, False if nobody does, None if there is no lock file.

    Only meaningful for a worker on this host and mount.
    """
    path = storage.local_path(layout.alive_path(worker_id))
    if path is None or not os.path.exists(path):
        return None
    import filelock

    lock = _lock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    except OSError:
        return None
    lock.release(force=True)
    return False
