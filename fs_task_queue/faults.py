"""Fault injection for the fault-tolerance tests.

Setting ``FSQ_CRASH_AT=<point>`` in a worker's environment makes it SIGKILL
itself at that point of the claim -> run -> commit path, so tests can check
that a crash before or after every filesystem operation loses no task. The
points are: after-claim, after-read, before-commit, after-commit, after-release.
``FSQ_CRASH_AFTER=<n>`` delays the crash to the n-th time a process reaches
the point. Unset (the normal case) it costs one string comparison. In a worker's task
process a crash point kills the worker process too, as a node failure would.
"""

from __future__ import annotations

import os
import signal

__all__ = ["crash_point"]

_CRASH_AT = os.environ.get("FSQ_CRASH_AT", "")
_left = int(os.environ.get("FSQ_CRASH_AFTER", "1"))
#: Set in a worker's task process: the worker process it belongs to.
worker_pid: int | None = None


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``FSQ_CRASH_AT`` names this point."""
    global _left
    if _CRASH_AT and name == _CRASH_AT:
        _left -= 1
        if _left > 0:
            return
        if worker_pid is not None:
            os.kill(worker_pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
