"""The notebook layer: ``%load_ext fs_task_queue.jupyter`` registers ``%fsq`` and ``%%fsq``.

Nothing is imported at module level: workers import
``fs_task_queue.jupyter.cellrun`` to run cells, and must not load IPython or
ipywidgets.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def _after_cell(*_args: Any) -> None:
    # On the main thread, inside the execute request: widget updates made now
    # are recorded with the cell (a thread's are only while some cell runs).
    from fs_task_queue.jupyter.poller import Poller

    Poller.instance().tick(force=True)


def load_ipython_extension(ip: Any) -> None:
    """Register the magics, the live displays, the autopull hook and the after-cell refresh on shell ``ip``."""
    from fs_task_queue.jupyter import magics

    magics.load(ip)
    if _after_cell not in ip.events.callbacks["post_run_cell"]:
        ip.events.register("post_run_cell", _after_cell)


def unload_ipython_extension(ip: Any) -> None:
    """Undo :func:`load_ipython_extension` (local workers are stopped)."""
    from fs_task_queue.jupyter import magics

    magics.unload(ip)
    if _after_cell in ip.events.callbacks["post_run_cell"]:
        ip.events.unregister("post_run_cell", _after_cell)
