"""The notebook layer: ``%load_ext fs_task_queue.jupyter`` registers ``%fsq`` and ``%%fsq``.

Nothing is imported at module level: workers import
``fs_task_queue.jupyter.cellrun`` to run cells, and must not load IPython.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ip: Any) -> None:
    """Register the magics, the displays and the autopull hook on shell ``ip``."""
    from fs_task_queue.jupyter import magics

    magics.load(ip)


def unload_ipython_extension(ip: Any) -> None:
    """Undo :func:`load_ipython_extension` (local workers are stopped)."""
    from fs_task_queue.jupyter import magics

    magics.unload(ip)
