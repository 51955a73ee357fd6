"""Fault injection for the fault-tolerance tests.

Setting ``FSQ_CRASH_AT=<point>`` in a worker's environment makes it SIGKILL
itself at that point of the claim -> run -> commit path, so tests can check
that a crash before or after every filesystem operation loses no task. The
points are: after-claim, after-read, before-commit, after-commit, after-release.
Unset (the normal case) it costs one string comparison.
"""

from __future__ import annotations

import os
import signal

__all__ = ["crash_point"]

_CRASH_AT = os.environ.get("FSQ_CRASH_AT", "")


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``FSQ_CRASH_AT`` names this point."""
    if _CRASH_AT and name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
