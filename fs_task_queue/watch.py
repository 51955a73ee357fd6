"""Cheap waiting for changes in queue directories.

On Linux a :class:`DirWatcher` sleeps on inotify, so a worker or a waiting client
wakes within a millisecond of a change made on this host while making no
filesystem operations at all. inotify cannot see changes made by other hosts on
a network filesystem, so the watcher also wakes to poll: rarely on a local
filesystem (a safety net), and on a backoff from ``min_interval`` to
``max_interval`` on a network one. Without inotify it only polls.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
from collections.abc import Iterable
from typing import Any

from fs_task_queue.fsinfo import is_local_filesystem

__all__ = ["DirWatcher"]

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_IN_MASK = 0x00000004 | 0x00000080 | 0x00000100 | 0x00000200 | 0x00000040
# IN_ATTRIB | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM
_IN_NEW = 0x00000100 | 0x00000080  # IN_CREATE | IN_MOVED_TO
_IN_ISDIR = 0x40000000
_IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()


class DirWatcher:
    """Wait until something may have changed in a set of directories.

    ``dirs`` are OS paths (or None where the storage is not mounted, e.g. SFTP,
    which makes the watcher poll). With ``nested=True`` it also watches the
    folders inside them, including ones made later (the shards of ``queued/``).
    Call :meth:`reset` after finding work so the polling backoff starts short
    again. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        dirs: Iterable[str | None],
        *,
        min_interval: float = 0.05,
        max_interval: float = 1.0,
        local_safety_interval: float = 5.0,
        nested: bool = False,
    ) -> None:
        self.min_interval = min_interval
        self.max_interval = max_interval
        self._interval = min_interval
        self._fd = -1
        self._wake_r = self._wake_w = -1
        # Watch descriptor -> folder whose new sub-folders get watched too (nested).
        self._parents: dict[int, bytes] = {}
        paths = list(dirs)
        real = [p for p in paths if p is not None]
        self._all_local = bool(real) and len(real) == len(paths) and all(map(is_local_filesystem, real))
        self._local_safety = local_safety_interval
        # A pipe that interrupt() writes to, so a stop request (even from a
        # signal handler) ends a wait at once instead of at the next poll.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if real and _libc is not None and os.environ.get("FSQ_NO_INOTIFY") != "1":
            fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                for path in real:
                    wd = self._add(os.fsencode(path))
                    if wd < 0:  # e.g. too many watches: polling still works
                        os.close(fd)
                        self._fd = -1
                        break
                    if nested:
                        self._parents[wd] = os.fsencode(path)
                        self._watch_subfolders(os.fsencode(path))

    def _watch_subfolders(self, path: bytes) -> None:
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        self._add(entry.path)
        except OSError:
            self._all_local = False  # cannot tell what to watch: poll on the short backoff

    def _add(self, path: bytes) -> int:
        wd = int(_libc.inotify_add_watch(self._fd, path, _IN_MASK))
        if wd < 0 and ctypes.get_errno() != errno.ENOENT:
            # Out of watches (fs.inotify.max_user_watches): a change there could
            # go unnoticed, so fall back to polling on the short backoff.
            self._all_local = False
        return wd

    @property
    def uses_inotify(self) -> bool:
        """Whether waits wake on change notifications rather than only on a timer."""
        return self._fd >= 0

    def reset(self) -> None:
        """Make the next poll short again (call after finding something)."""
        self._interval = self.min_interval

    def _next_poll(self) -> float:
        if self._fd >= 0 and self._all_local:
            return self._local_safety
        interval = self._interval
        self._interval = min(self._interval * 2, self.max_interval)
        return interval

    def wait(self, timeout: float | None = None, also: tuple[int, ...] = ()) -> set[str] | None:
        """Sleep until a change is noticed, it is time to poll, or a descriptor in ``also`` is readable.

        Returns the names of the entries that changed (from notifications), or
        None when it woke for another reason: then anything may have changed.
        """
        delay = self._next_poll()
        if timeout is not None:
            delay = min(delay, max(timeout, 0.0))
        return self._select(delay, also)

    def changes_now(self) -> set[str] | None:
        """The names changed since the last look, without waiting (None: unknown, no notifications)."""
        if self._fd < 0:
            return None
        return self._select(0.0) or set()

    def _select(self, delay: float, also: tuple[int, ...] = ()) -> set[str] | None:
        fds = [self._wake_r, *also] if self._fd < 0 else [self._fd, self._wake_r, *also]
        ready, _, _ = select.select(fds, [], [], delay)
        if also and any(fd in ready for fd in also):
            return None
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            return None
        if not ready:
            return None
        return self._drain()

    def interrupt(self) -> None:
        """End the current (or next) wait now; safe to call from a signal handler or thread."""
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass  # already pending, or closed

    def _drain(self) -> set[str]:
        names: set[str] = set()
        try:
            while data := os.read(self._fd, 65536):
                offset = 0
                # struct inotify_event { int wd; uint32 mask, cookie, len; char name[len]; }
                while offset + _EVENT.size <= len(data):
                    wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                    offset += _EVENT.size
                    name = data[offset : offset + length].rstrip(b"\0")
                    names.add(name.decode(errors="replace"))
                    offset += length
                    if mask & _IN_Q_OVERFLOW:
                        # Events were lost, folders made meanwhile among them:
                        # watch every sub-folder again (a second watch is a no-op).
                        for folder in self._parents.values():
                            self._watch_subfolders(folder)
                    parent = self._parents.get(wd)
                    if parent is not None and mask & _IN_ISDIR and mask & _IN_NEW:
                        # Watched before the caller lists it: a file moved into it
                        # after that listing still wakes the next wait.
                        self._add(parent + b"/" + name)
        except BlockingIOError:
            pass
        return names

    def close(self) -> None:
        """Release the inotify descriptor and the wake-up pipe."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def __enter__(self) -> DirWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
