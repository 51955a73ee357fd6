"""What kind of filesystem a path is on, and what that means for guarantees."""

from __future__ import annotations

import functools
import os

__all__ = ["LOCAL_TYPES", "filesystem_type", "is_local_filesystem"]

# Filesystems whose every writer is on this host, so inotify sees every change
# and flock is exact. Anything else (nfs, lustre, gpfs, fuse.sshfs, cifs...) may
# have writers elsewhere.
LOCAL_TYPES = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs", "jfs", "reiserfs", "overlay", "ramfs"}
)


def _unescape(field: str) -> str:
    # /proc/self/mounts escapes space, tab, newline and backslash as octal.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


@functools.lru_cache(maxsize=256)
def _filesystem_type(target: str) -> str:
    best, best_type = "", "unknown"
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount_point = _unescape(fields[1])
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, fields[2]
    except OSError:
        return "unknown"
    return best_type


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """The type of the filesystem holding ``path`` (e.g. ``ext4``, ``nfs4``, ``fuse.sshfs``).

    Returns ``"unknown"`` where ``/proc/self/mounts`` is unavailable.
    """
    # Cached (realpath too, it stats every component): mounts rarely change
    # while a queue is in use, and waits ask often.
    return _filesystem_type_of(os.fspath(path))


@functools.lru_cache(maxsize=256)
def _filesystem_type_of(path: str) -> str:
    return _filesystem_type(os.path.realpath(path))


def is_local_filesystem(path: str | os.PathLike[str]) -> bool:
    """True when every process that can change ``path`` runs on this host."""
    return filesystem_type(path) in LOCAL_TYPES


_NETWORK_PREFIXES = ("nfs", "lustre", "gpfs", "fuse.sshfs", "cifs", "smb", "beegfs", "ceph", "fuse.")


def guarantee(path: str | os.PathLike[str]) -> str:
    """A sentence saying which execution guarantee a queue at ``path`` gets, and why."""
    fs = filesystem_type(path)
    if fs in LOCAL_TYPES:
        return (
            f"{fs} (local): exactly once. Claims are atomic renames and outcomes are published"
            " without replacing; a worker that dies is detected at once through its flock and"
            " its task runs again elsewhere (so a killed task runs at least once)."
        )
    if fs.startswith(_NETWORK_PREFIXES):
        return (
            f"{fs} (shared): exactly once while workers live. Claims are atomic renames on the"
            " server and outcomes are published without replacing, so no task runs twice and no"
            " job gets two results; flock is not trusted across hosts, so a dead worker on another"
            " host is detected when its heartbeat stops changing for --dead-after seconds and its"
            " task runs again (at least once)."
        )
    return (
        f"{fs}: at least once. This filesystem type is not known to give atomic rename; tasks"
        " are never lost but may run twice."
    )
