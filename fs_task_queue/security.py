"""Refusing queue directories that other users could write into.

Whoever can write a task file that a worker unpickles can run code as that
worker's user. Task files are signed, but a directory others can write also
lets them delete, replace or swap files, so a worker refuses to serve a queue
whose root or folders are world-writable, or group-writable when the queue was
not created for sharing (``Queue(path, shared=True)``). The rule is sshd's
StrictModes, applied to the queue.
"""

from __future__ import annotations

import os
import stat

from fs_task_queue import layout
from fs_task_queue.errors import InsecureQueueError
from fs_task_queue.storage import Storage

__all__ = ["check_queue_permissions"]


def check_queue_permissions(storage: Storage, shared: bool) -> None:
    """Raise InsecureQueueError naming the first unsafe path and how to fix it."""
    for rel in ("", *layout.SUBDIRS, layout.KEY_FILE):
        path = storage.local_path(rel)
        if path is None:
            return  # not mounted here: the server's owner must check it
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        shown = path.rstrip("/")
        if stat.S_ISLNK(st.st_mode):
            raise InsecureQueueError(
                f"{shown} is a symlink; a queue's folders must be real directories so nobody can"
                f" redirect them: replace it with a directory"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & stat.S_IWOTH:
            raise InsecureQueueError(
                f"{shown} is world-writable (mode {mode:04o}): any user on this machine could make"
                f" this worker run their code. Fix: chmod o-w {shown}"
            )
        if mode & stat.S_IWGRP and not shared:
            raise InsecureQueueError(
                f"{shown} is group-writable (mode {mode:04o}) but the queue was not created for"
                f" sharing. Fix: chmod g-w {shown}, or create the queue with Queue(path, shared=True)"
                " to share it with your group on purpose"
            )
        if rel == layout.KEY_FILE and mode & (stat.S_IROTH | (0 if shared else stat.S_IRGRP)):
            raise InsecureQueueError(
                f"the queue's signing key {shown} is readable by others (mode {mode:04o}): they could"
                f" sign tasks. Fix: chmod {'640' if shared else '600'} {shown}"
            )
