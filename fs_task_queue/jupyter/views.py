"""Displays of jobs, groups and queues in a notebook (minimal static version).

This module fixes the contract the magics use; the live widgets and the
poller replace its bodies:

- ``show(obj)`` displays a Job, JobGroup or Queue and returns a display handle;
- ``wait(obj, timeout)`` blocks on the main thread until the job or group is
  done, keeping its display current; KeyboardInterrupt goes through;
  WaitTimeoutError on timeout;
- ``finish(handle, obj)`` replaces the display with its final form;
- ``register_formatters(ip)`` / ``unregister_formatters(ip)``.

Here the display is the objects' static HTML, refreshed while waiting.
"""

from __future__ import annotations

import time
from typing import Any

from fs_task_queue.errors import WaitTimeoutError
from fs_task_queue.group import JobGroup
from fs_task_queue.job import Job

__all__ = ["finish", "register_formatters", "show", "unregister_formatters", "wait"]

#: How often a waiting display is refreshed (seconds).
REFRESH = 1.0


def show(obj: Any) -> Any:
    """Display ``obj`` with a display id; the handle (None outside IPython)."""
    from IPython.display import display

    return display(obj, display_id=True)


def _done(obj: Any) -> bool:
    return obj.done() if isinstance(obj, (Job, JobGroup)) else True


def wait(obj: Any, timeout: float | None) -> None:
    """Block until ``obj`` (a Job or JobGroup) is done; WaitTimeoutError after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise WaitTimeoutError(f"{obj!r} is not done after {timeout} s; it goes on")
        step = REFRESH if left is None else min(REFRESH, left)
        try:
            if isinstance(obj, Job):
                obj.exception(timeout=step)  # returns (not raises) the job's error
            elif isinstance(obj, JobGroup):
                obj.wait(step)
            return
        except WaitTimeoutError:
            continue


def finish(handle: Any, obj: Any) -> None:
    """Show ``obj``'s final state in place of its display."""
    if handle is not None:
        handle.update(obj)


def register_formatters(ip: Any) -> None:
    """Nothing to register: the objects' own ``_repr_html_`` serves."""


def unregister_formatters(ip: Any) -> None:
    """Undo :func:`register_formatters`."""
