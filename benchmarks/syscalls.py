"""Counting filesystem system calls with strace.

The benchmark runs a process under ``strace -f -y -e trace=<FS_SYSCALLS>`` and
reads the full trace rather than ``strace -c``'s summary, for one reason: the
summary cannot tell a ``read`` of a task file from a ``read`` of the socket to
the worker's isolation child or of an inotify descriptor. ``-y`` prints what
each descriptor refers to, so calls on pipes, sockets and inotify (no
filesystem work at all) are counted apart. Both figures are kept: the
filesystem-only one is what the targets are about, the raw one is what
``strace -f -c -e trace=...`` would have shown.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["FS_SYSCALLS", "Trace", "have_strace", "parse", "strace_prefix"]

#: System calls that act on files, directories and their names. Some do not
#: exist on every architecture; strace is told to skip unknown ones ("?" prefix).
FS_SYSCALLS = (
    "open", "openat", "openat2", "creat", "close", "close_range",
    "read", "pread64", "readv", "preadv", "preadv2",
    "write", "pwrite64", "writev", "pwritev", "pwritev2",
    "lseek", "ftruncate", "truncate", "fallocate", "fsync", "fdatasync", "sync_file_range",
    "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat",
    "unlink", "unlinkat", "rmdir", "mkdir", "mkdirat",
    "stat", "lstat", "fstat", "newfstatat", "statx", "statfs", "fstatfs",
    "access", "faccessat", "faccessat2", "readlink", "readlinkat",
    "getdents", "getdents64",
    "utime", "utimes", "futimesat", "utimensat",
    "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat",
    "flock", "copy_file_range", "sendfile", "inotify_add_watch",
)  # fmt: skip

#: What ``strace -y`` prints for descriptors that are not files or directories.
_NOT_FILES = ("pipe:", "socket:", "anon_inode:")
# "1234 [1700000000.123456 ]name(args) = result"; "<... name resumed>" lines
# are the second half of a call already counted at its first half.
_LINE = re.compile(r"^(\d+)\s+(?:(\d+\.\d+)\s+)?([a-z0-9_]+)\((.*)$")
_FD_ARG = re.compile(r"(\d+)<([^>]*)>")
_ERROR = re.compile(r"= -1 (E[A-Z]+)")


def have_strace() -> bool:
    return shutil.which("strace") is not None


def strace_prefix(output: str, *, timestamps: bool = False) -> list[str]:
    """The strace command line that traces FS_SYSCALLS (and nothing else) into ``output``."""
    cmd = ["strace", "-f", "-qq", "-y", "-o", output, "-e", "trace=" + ",".join(f"?{s}" for s in FS_SYSCALLS)]
    if timestamps:
        cmd.append("-ttt")
    return cmd


@dataclass
class Trace:
    """Counts from one trace: per syscall, on files (``fs``) and on other descriptors (``other``)."""

    fs: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # "syscall ENOENT" -> count (fs calls only)

    @property
    def fs_total(self) -> int:
        return sum(self.fs.values())

    @property
    def raw_total(self) -> int:
        """What ``strace -c`` with the same syscall list would count."""
        return self.fs_total + sum(self.other.values())

    def minus(self, base: Trace) -> Trace:
        """Element-wise difference (may go negative by noise; kept, not clipped, so it shows)."""
        out = Trace()
        for mine, theirs, dest in ((self.fs, base.fs, out.fs), (self.other, base.other, out.other)):
            for key in mine.keys() | theirs.keys():
                dest[key] = mine[key] - theirs[key]
        for key in self.errors.keys() | base.errors.keys():
            out.errors[key] = self.errors[key] - base.errors[key]
        return out


def parse(path: str, t_from: float | None = None, t_to: float | None = None) -> Trace:
    """Count the calls in a trace file, optionally only those started within [t_from, t_to]."""
    trace = Trace()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _LINE.match(line)
            if m is None:
                continue  # resumed halves, exits, signals
            _pid, stamp, name, rest = m.groups()
            if t_from is not None and stamp is not None and not (t_from <= float(stamp) <= (t_to or float("inf"))):
                continue
            fd = _FD_ARG.match(rest)
            # inotify_add_watch takes an inotify descriptor but looks up a path: a filesystem call.
            if fd is not None and fd.group(2).startswith(_NOT_FILES) and name != "inotify_add_watch":
                trace.other[name] += 1
                continue
            trace.fs[name] += 1
            err = _ERROR.search(rest)
            if err is not None:
                trace.errors[f"{name} {err.group(1)}"] += 1
    return trace
