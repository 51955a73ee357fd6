"""Ending the processes that tasks leave behind (Linux; elsewhere these do nothing).

A task may start processes of its own (``multiprocessing``, ``subprocess``, a
daemon that double-forks and calls ``setsid``) and return, raise or crash
while they still run. Such processes must not keep the worker from going on
or from exiting (they may hold its pipes, or be joined at interpreter exit),
so they are found and killed when the process that ran the task ends:

* the task process runs in its own session and is a *child subreaper*
  (``PR_SET_CHILD_SUBREAPER``), so while it lives every process its tasks
  started is in its subtree, even one that left the session: an orphan is
  re-parented to it, not to init;
* when it ends in order (recycling, shutdown, burst end) it kills its own
  subtree before it exits;
* when the worker process kills it (timeout, cancel, end of the grace) the
  worker process stops and kills the whole subtree at once;
* when it dies by itself (segfault, ``os._exit``) its session is found by its
  id (the kernel keeps a session id from being reused as a pid while the
  session has members), and the worker process, itself a subreaper when it
  owns its process, inherits the orphans that had left the session.

Nothing here runs per task: only when a process that ran tasks ends. Killing
first stops every process found (SIGSTOP) and looks again until no new one
appears, so none can fork away while the others are killed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable

__all__ = [
    "Orphans",
    "become_subreaper",
    "children",
    "describe",
    "end_processes",
    "reap_child",
    "session_members",
    "subtree",
]

log = logging.getLogger("fs_task_queue.worker")

_PR_SET_CHILD_SUBREAPER = 36
#: How long killed processes get to disappear before the worker reports them and goes on, seconds.
REAP_WAIT = 10.0


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (not init's); False where unsupported."""
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    fields = data.rpartition(b")")[2].split()
    if len(fields) < 4:
        return None
    return fields[0].decode(), int(fields[1]), int(fields[3])


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (of all its threads)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def subtree(pid: int) -> set[int]:
    """Every descendant of ``pid`` (not ``pid`` itself)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def session_members(sid: int) -> set[int]:
    """The live processes of the session ``sid``, and their descendants."""
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[2] == sid and stat[0] != "Z":
                found.add(int(entry))
    for pid in list(found):
        found |= subtree(pid)
    return found


def describe(pid: int) -> str:
    """``pid (command line)`` for a log message."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").strip().decode(errors="replace")
    except OSError:
        cmd = ""
    if len(cmd) > 120:
        cmd = cmd[:117] + "..."
    return f"{pid} ({cmd or '?'})"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def end_processes(
    find: Callable[[], Iterable[int]], *, spare: Iterable[int] = (), kill_too: Iterable[int] = ()
) -> list[str]:
    """Stop and kill every live process ``find`` returns (asked again until it finds no new one).

    Processes in ``spare`` are never signaled; those in ``kill_too`` are
    killed with the others but neither reported nor reaped (the caller reaps
    them for their exit status). Killed processes that are, or become, children
    of this one are reaped. Returns ``pid (command)`` of each process killed.
    """
    me = os.getpid()
    others = set(kill_too)
    keep = {me, *spare, *others}
    seen: dict[int, str] = {}
    for _ in range(1000):  # each round stops the processes found; a stopped one cannot fork
        new = []
        for pid in find():
            if pid not in seen and pid not in keep:
                stat = _stat(pid)
                if stat is not None and stat[0] != "Z":
                    new.append(pid)
                elif stat is not None and stat[1] == me:
                    reap_child(pid)  # an orphan that ended by itself
        if not new:
            break
        for pid in new:
            seen[pid] = describe(pid)
            _signal(pid, signal.SIGSTOP)
    for pid in [*seen, *others]:
        _signal(pid, signal.SIGKILL)
    _reap(seen, others, me)
    return list(seen.values())


def _reap(pids: Iterable[int], dying: set[int], me: int) -> None:
    """Wait until each killed process is gone; reap those that are (or become) our children."""
    pending = set(pids)
    dying = dying | pending
    deadline = time.monotonic() + REAP_WAIT
    while pending:
        for pid in list(pending):
            stat = _stat(pid)
            if stat is None:
                pending.discard(pid)
            elif stat[0] == "Z" and stat[1] == me:
                reap_child(pid)
                pending.discard(pid)
            elif stat[0] == "Z" and stat[1] not in dying:
                pending.discard(pid)  # its parent (init, a live process) reaps it
            # else: alive still, or its parent is dying: it then becomes ours (a subreaper's) or init's
        if pending:
            if time.monotonic() > deadline:
                log.warning("processes still there %.0f s after SIGKILL: %s", REAP_WAIT, sorted(pending))
                return
            time.sleep(0.005)


def reap_child(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class Orphans:
    """The orphans of tasks that this process, as a child subreaper, inherits.

    Only a process that owns itself becomes one: a single-threaded one (the
    command-line worker), whose children are then all its own task processes
    or what their tasks left (processes present at the start are spared). A
    threaded host program (a notebook) may start children of its own that
    could not be told apart, so there it stays off.
    """

    def __init__(self) -> None:
        self.active = threading.active_count() == 1 and become_subreaper()
        self._before = subtree(os.getpid()) if self.active else set()

    def find(self, exclude: Iterable[int] = ()) -> set[int]:
        """This process's children (and their subtrees) other than ``exclude`` and those it had at the start.

        Zombie children (orphans that ended by themselves) are reaped here.
        """
        if not self.active:
            return set()
        found: set[int] = set()
        skip = self._before.union(exclude)
        for pid in children(os.getpid()):
            if pid in skip:
                continue
            stat = _stat(pid)
            if stat is not None and stat[0] == "Z":
                reap_child(pid)
                continue
            found.add(pid)
            found |= subtree(pid)
        return found

    def close(self) -> None:
        if self.active:
            self.active = False
            try:
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
            except (OSError, AttributeError):
                pass
