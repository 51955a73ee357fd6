"""Refusing queue directories that other users control or could write into.

Whoever can write a task file that a worker unpickles can run code as that
worker's user. Task files are signed, but whoever owns the queue's directory,
one of its folders, its key or its format file can replace the key and sign
their own tasks; and a directory others can write lets them delete, replace or
swap files. So every process that opens a queue (clients too: they must not
submit to, or read results from, a queue another user controls) refuses one:

* whose root, folders, key or format file are owned by a user other than root
  or the process's effective user (in a queue created for sharing, by a user
  outside the queue root's group);
* whose root or folders are symlinks, are world-writable, or group-writable
  when the queue was not created for sharing (``Queue(path, shared=True)``);
* whose key is readable by others.

This is sshd's StrictModes rule (owner and modes), applied to the queue. It
runs through ``Storage.stat`` (an ``lstat``), about a dozen calls when a queue
is opened and never on the per-task path.
"""

from __future__ import annotations

import grp
import pwd
import shlex
import stat

from fs_task_queue import layout
from fs_task_queue.errors import InsecureQueueError, cli_fix
from fs_task_queue.storage import FileInfo, Storage

__all__ = ["check_queue_permissions"]

#: Checked in this order: the root first, so a foreign queue is named by its root.
_CHECKED = ("", *layout.SUBDIRS, layout.KEY_FILE, layout.FORMAT_FILE)
_FILES = (layout.KEY_FILE, layout.FORMAT_FILE)


def _user(uid: int, local: bool) -> str:
    if not local:  # the owner of a remote file: this machine's user database knows nothing of it
        return f"uid {uid}"
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid} (no such user on this machine)"


def _group(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def check_queue_permissions(storage: Storage, shared: bool, *, creating: bool = False, root_only: bool = False) -> None:
    """Raise InsecureQueueError naming the first untrusted path, its owner and the fix.

    ``shared`` is what the queue's format file says. Paths that do not exist are
    skipped (the caller reports a missing key or format file). ``creating``: the
    caller is about to make a queue in this directory (the rule is the same,
    the fix for a world-writable root is another: a directory of one's own).
    ``root_only``: look at the root alone (a directory holding other files,
    whose ``tmp/`` say is not a queue's folder).
    """
    checked = _CHECKED[:1] if root_only else _CHECKED
    # One batch: over SFTP these ~12 looks are one round trip, not twelve.
    infos = storage.stat_many(list(checked))
    root_info = infos[0]
    if root_info is None:
        return  # the caller is about to report the missing queue
    # "You" are whoever owns what this storage creates: over SSH the remote login user.
    # A private queue needs only your uid (a remote storage learns it quicker than your groups).
    you = storage.user(groups=shared)
    euid, me, local = you.uid, you.name, storage.local_path("") is not None
    root = storage.location.rstrip("/") or "/"
    group = root_info.gid
    if shared and group not in you.gids:
        raise InsecureQueueError(
            f"{root} is a queue shared with the group {_group(group)}, and you ({me}) are not in that"
            " group. A shared queue trusts every member of its root's group (they may own its files"
            " and write into its folders), so only members may use it: it could run their code as"
            f" you. Fix: ask for {me} to be added to group {_group(group)} (then log in again), or use"
            " a queue of your own"
        )
    for rel, info in zip(checked, infos, strict=True):
        if info is not None:
            _check(
                storage, root, rel, info, shared=shared, group=group, euid=euid, me=me, local=local, creating=creating
            )


def _check(
    storage: Storage,
    root: str,
    rel: str,
    info: FileInfo,
    *,
    shared: bool,
    group: int,
    euid: int,
    me: str,
    local: bool,
    creating: bool,
) -> None:
    shown = f"{root}/{rel}" if rel else root
    if info.is_symlink:
        what = "the queue's root" if not rel else ("a queue's file" if rel in _FILES else "a queue's folder")
        raise InsecureQueueError(
            f"{shown} is a symlink; {what} must be the real thing so nobody can redirect it:"
            f" replace it with a {'file' if rel in _FILES else 'directory'}"
            + (" (or open the queue by the path it points to)" if not rel else "")
        )
    if rel in _FILES and not info.is_file:
        raise InsecureQueueError(f"{shown} is not a regular file: the queue is damaged; create a new queue")
    if info.uid not in (0, euid) and not (shared and storage.is_member(info.uid, group)):
        if shared:
            rule = (
                f"who is neither you ({me}), root, nor a member of the queue's group {_group(group)}:"
                " a shared queue trusts only its group's members"
            )
        else:
            rule = f"not by you ({me}) or root"
        raise InsecureQueueError(
            f"{shown} is owned by {_user(info.uid, local)}, {rule}. Its owner could replace the queue's key"
            " and files, make your workers run their code as you, or forge your results."
            f" Fix: use a queue directory you own, or `chown -R {me} {root}` if it is yours"
        )
    mode = info.mode
    if mode & stat.S_IWOTH and creating and not rel:
        # /tmp, /scratch or a `mkdir -m 777`: `chmod o-w` of a shared scratch folder is not the fix.
        raise InsecureQueueError(
            f"{shown} is world-writable (mode {mode:04o}): a queue there could be changed by any user on this"
            " machine, who could make its workers run their code, so no queue is made there (nothing was written)."
            f" Fix: make a directory of your own in it and use that, e.g. `mkdir -m 700 {shown.rstrip('/')}/$USER-q`;"
            f" or, if {shown} is yours and should not be world-writable, chmod o-w {shown}"
        )
    if mode & stat.S_IWOTH:
        raise InsecureQueueError(
            f"{shown} is world-writable (mode {mode:04o}): any user on this machine could make"
            f" the queue's workers run their code. Fix: chmod o-w {shown}"
        )
    if mode & stat.S_IWGRP and not shared:
        raise cli_fix(
            InsecureQueueError(
                f"{shown} is group-writable (mode {mode:04o}) but the queue was not created for"
                f" sharing. Fix: chmod g-w {shown}, or create the queue with Queue(path, shared=True)"
                " to share it with your group on purpose"
            ),
            "Queue(path, shared=True)",
            f"`fs-task-queue create --shared {shlex.quote(root) if creating else 'PATH'}`",
        )
    if rel == layout.KEY_FILE and mode & (stat.S_IROTH | (0 if shared else stat.S_IRGRP)):
        raise InsecureQueueError(
            f"the queue's signing key {shown} is readable by others (mode {mode:04o}): they could"
            f" sign tasks. Fix: chmod {'640' if shared else '600'} {shown}"
        )
    if shared and info.gid != group and mode & (stat.S_IWGRP | (stat.S_IRGRP if rel == layout.KEY_FILE else 0)):
        raise InsecureQueueError(
            f"{shown} is {'readable' if rel == layout.KEY_FILE else 'writable'} by the group"
            f" {_group(info.gid)}, not by the queue's group {_group(group)}: that group's members"
            f" could make this worker run their code. Fix: chgrp {_group_name(group)} {shown}"
        )


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
