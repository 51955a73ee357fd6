"""Tools for the fault-injection tests: real worker processes, side-effect and commit counters, the tally.

Counting, Jepsen style:

* executions: every run of a task function creates ``fx/<key>.<uuid>`` with
  O_CREAT|O_EXCL, so the files per key count how often the function ran;
* commits: an inotify watch on ``results/`` counts every name that appears
  there (a rename or link into it is one commit; a no-replace publish that
  loses creates nothing), so a job committed twice shows two events;
* lost: a job with no outcome after the queue was drained.

Task functions here are shipped to workers by value (see conftest.py): they use
only the standard library.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import WAIT
from helpers import wait_for as wait_for  # re-exported: one waiting helper for both suites

#: Generous: waits end as soon as their condition holds; this only bounds a failure.
PYTHON = sys.executable
WORKER = [PYTHON, "-m", "fs_task_queue", "worker"]
ADMIN = [PYTHON, "-m", "fs_task_queue"]
#: Environment variables of the fault hooks that a worker must not inherit by accident.
FAULT_ENV = ("FSQ_CRASH_AT", "FSQ_HOST_ID")


# ------------------------------------------------------------------ task functions
def mark(fx: str, key: Any, first_sleep: float = 0.0, sleep: float = 0.0, end: bool = False) -> str:
    """Record one execution as ``fx/<key>.<uuid>`` and return that token.

    ``first_sleep``: sleep this long if no earlier execution of ``key`` exists
    (so the first run is slow and a re-run after recovery is quick). ``sleep``:
    always sleep. ``end``: afterwards create ``fx/<key>.<uuid>.end``.
    """
    prefix = f"{key}."
    first = first_sleep > 0 and not any(n.startswith(prefix) for n in os.listdir(fx))
    token = f"{key}.{uuid.uuid4().hex}"
    os.close(os.open(os.path.join(fx, token), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    if first:
        time.sleep(first_sleep)
    if sleep:
        time.sleep(sleep)
    if end:
        os.close(os.open(os.path.join(fx, token + ".end"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    return token


# ------------------------------------------------------------------- counting
def fails_first_time(fx: str, key: Any) -> str:
    """Fails on its first run, succeeds on the next (runs counted by files)."""
    ran = any(n.startswith(f"{key}.") for n in os.listdir(fx))
    token = mark(fx, key)
    if not ran:
        raise RuntimeError(f"{key} fails the first time")
    return token


def executions(fx: str | os.PathLike[str]) -> Counter[str]:
    """How many times the task of each key started (``<key>.<uuid>`` files)."""
    return Counter(n.rsplit(".", 1)[0] for n in os.listdir(fx) if not n.endswith(".end"))


def ends(fx: str | os.PathLike[str]) -> Counter[str]:
    """How many executions of each key ran to the end (``<key>.<uuid>.end`` files)."""
    return Counter(n.rsplit(".", 2)[0] for n in os.listdir(fx) if n.endswith(".end"))


_IN_CREATE = 0x100
_IN_MOVED_TO = 0x80
_IN_MOVED_FROM = 0x40
_IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")


class CommitCounter:
    """Counts every name that appears in a queue's ``results/`` directory (inotify, on this host).

    Watch the directory where the files really live (for an sshfs queue: the
    server's directory), so every writer's commits are seen. The queue's
    ``tmp/`` is watched too, though its events are not counted: the kernel
    merges an event into an identical one still unread at the tail of the queue,
    and the tmp/ events (every commit first writes a temporary file there) sit
    between two commits of one name, so none is merged away.
    """

    def __init__(self, results_dir: str | os.PathLike[str]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._results_wd = libc.inotify_add_watch(self._fd, os.fsencode(results_dir), _IN_CREATE | _IN_MOVED_TO)
        if self._results_wd < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"cannot watch {results_dir}")
        tmp_dir = Path(results_dir).parent / "tmp"
        if tmp_dir.is_dir():
            libc.inotify_add_watch(self._fd, os.fsencode(tmp_dir), _IN_CREATE | _IN_MOVED_FROM)
        self.counts: Counter[str] = Counter()
        self.overflow = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="commit-counter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._wake_r], [], [])
            self._drain()
            if self._wake_r in ready:
                return

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset : offset + length].rstrip(b"\0").decode(errors="replace")
                offset += length
                if mask & _IN_Q_OVERFLOW:
                    self.overflow = True
                elif wd == self._results_wd and name and not name.startswith(".") and not name.endswith(".tmp"):
                    self.counts[name] += 1

    def snapshot(self) -> Counter[str]:
        """The counts so far (events already delivered by the kernel)."""
        time.sleep(0.05)
        return Counter(self.counts)

    def close(self) -> Counter[str]:
        if self._fd >= 0:
            os.write(self._wake_w, b"x")
            self._thread.join(10)
            for fd in (self._fd, self._wake_r, self._wake_w):
                os.close(fd)
            self._fd = -1
        assert not self.overflow, "inotify queue overflowed: commit counts are incomplete"
        return self.counts


@dataclass
class Tally:
    """Jepsen-style counts after draining a queue."""

    name: str
    tasks: int
    lost: list[str] = field(default_factory=list)
    executed_twice: list[str] = field(default_factory=list)
    committed_twice: list[str] = field(default_factory=list)
    not_finished: list[str] = field(default_factory=list)
    foreign_results: list[str] = field(default_factory=list)
    note: str = ""

    def row(self) -> tuple[str, int, int, int, int, str]:
        return (self.name, self.tasks, len(self.lost), len(self.executed_twice), len(self.committed_twice), self.note)

    def __str__(self) -> str:
        return (
            f"[{self.name}] tasks={self.tasks} lost={len(self.lost)} executed>1={len(self.executed_twice)}"
            f" committed>1={len(self.committed_twice)} not-finished={len(self.not_finished)}"
            f" results-from-no-execution={len(self.foreign_results)} {self.note}"
        )


def tally(
    name: str,
    jobs: dict[str, Any],
    fx: str | os.PathLike[str],
    commits: Counter[str] | None,
    results_dir: str | os.PathLike[str],
) -> Tally:
    """Count lost, re-executed and re-committed jobs; ``jobs`` maps a side-effect key to its Job."""
    from fs_task_queue import JobStatus

    execs = executions(fx)
    result_files = set(os.listdir(results_dir))
    out = Tally(name, len(jobs))
    for key, job in jobs.items():
        if job.id not in result_files or not job.done():
            out.lost.append(key)
            continue
        if job.get_status() is not JobStatus.FINISHED:
            out.not_finished.append(key)
        elif isinstance(token := job.result, str) and not os.path.exists(os.path.join(fx, token)):
            out.foreign_results.append(key)  # a result no execution produced
        if execs[str(key)] > 1:
            out.executed_twice.append(key)
        if commits is not None and commits[job.id] > 1:
            out.committed_twice.append(key)
    return out


# ---------------------------------------------------------------- the table
#: Rows of the final fault table, filled by the tests, printed by conftest.
ROWS: list[tuple[str, int, int, int, int, str]] = []
#: Measured detection times, printed with the table.
NOTES: list[str] = []


def record(result: Tally, note: str | None = None) -> Tally:
    if note is not None:
        result.note = note
    print(result)
    ROWS.append(result.row())
    return result


def format_table() -> str:
    head = ("fault test", "tasks", "lost", "executed>1", "committed>1", "notes")
    rows = [head, *[(r[0], str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5]) for r in ROWS]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:5], widths[1:], strict=True))]
        lines.append(" | ".join([*cells, row[5]]).rstrip())
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths) + "-+-------")
    return "\n".join(lines)


# ------------------------------------------------------------------ processes
def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in the process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry))
    return out


class Procs:
    """Processes started by one test, each in its own process group; :meth:`close` always ends them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def start(
        self, cmd: list[str], *, env: dict[str, str] | None = None, label: str = "proc"
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{len(self.procs):02d}-{label}.log"
        full_env = {k: v for k, v in os.environ.items() if k not in FAULT_ENV}
        full_env.update(env or {})
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.log_dir,
                env=full_env,
                start_new_session=True,  # its own group: SIGSTOP/cleanup reach the task child too
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def worker(
        self, path: str | os.PathLike[str], name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m fs_task_queue worker --path PATH --name NAME ARGS``."""
        return self.start([*WORKER, "--path", os.fspath(path), "--name", name, *args], env=env, label=name)

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def wait(self, proc: subprocess.Popen[bytes], timeout: float = WAIT) -> int:
        """Wait for ``proc`` to exit by itself (fail, showing its log, if it does not)."""
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process {proc.pid} did not exit within {timeout} s:\n{self.log(proc)}") from None

    def close(self) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            for sig in (signal.SIGCONT, signal.SIGTERM):  # a stopped process must run to handle SIGTERM
                _signal_group(proc.pid, sig)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)  # the worker, and any task child left behind
            proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_cli(*args: str, timeout: float = WAIT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fs_task_queue ARGS`` to completion."""
    full_env = {k: v for k, v in os.environ.items() if k not in FAULT_ENV}
    full_env.update(env or {})
    return subprocess.run(
        [*ADMIN, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=full_env
    )


def registered(path: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The ``workers/<name>`` record of a registered worker, or None."""
    try:
        return dict(json.loads(Path(path, "workers", name).read_bytes()))
    except (OSError, ValueError):
        return None


def queued_file(root: str | os.PathLike[str], name: str) -> Path:
    """Where a task file named ``name`` waits in the queue at ``root`` (its shard folder is made)."""
    path = Path(root, "queued", name[:17], name)
    path.parent.mkdir(exist_ok=True)
    return path


def queued_names(root: str | os.PathLike[str]) -> list[str]:
    """What waits in ``queued/``: the files in its shard folders and anything else at its top.

    An empty shard folder is not counted: claimers remove them lazily.
    """
    out = []
    for entry in names(Path(root, "queued")):
        path = Path(root, "queued", entry)
        if path.is_dir() and not path.is_symlink() and len(entry) == 17:
            out += names(path)
        else:
            out.append(entry)
    return sorted(out)


def names(path: str | os.PathLike[str]) -> list[str]:
    """Entries of a directory that are not hidden (an absent directory is empty)."""
    try:
        return sorted(n for n in os.listdir(path) if not n.startswith("."))
    except FileNotFoundError:
        return []


def claimed(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Task files held in ``claimed/<worker>/``, per worker."""
    base = Path(path, "claimed")
    return {w: names(base / w) for w in names(base)}


def all_claimed(path: str | os.PathLike[str]) -> list[str]:
    return [n for files in claimed(path).values() for n in files]
