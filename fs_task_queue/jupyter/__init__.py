"""The Jupyter layer: ``%load_ext fs_task_queue.jupyter``.

Nothing is imported at module level: worker processes import modules of this
package, and must not pay for (or need) IPython and ipywidgets.

(Minimal version for the live views; the magics' version replaces it.)
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
    from fs_task_queue.jupyter import views

    views.register_formatters(ip)
    if _after_cell not in ip.events.callbacks["post_run_cell"]:
        ip.events.register("post_run_cell", _after_cell)


def unload_ipython_extension(ip: Any) -> None:
    from fs_task_queue.jupyter import views

    views.unregister_formatters(ip)
    if _after_cell in ip.events.callbacks["post_run_cell"]:
        ip.events.unregister("post_run_cell", _after_cell)
