"""Optional layers over the core: ``SSHQueue`` (needs ``pip install 'fs-task-queue[ssh]'``) and
``DaskWorker`` (``fs_task_queue.plugins.dask``, needs ``pip install 'fs-task-queue[dask]'``).

Imported lazily, so ``import fs_task_queue.plugins`` costs nothing and works
without paramiko installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DaskWorker", "SSHQueue"]


def __getattr__(name: str) -> Any:
    if name == "SSHQueue":
        from fs_task_queue.plugins.ssh import SSHQueue

        return SSHQueue
    if name == "DaskWorker":
        from fs_task_queue.plugins.dask import DaskWorker

        return DaskWorker
    raise AttributeError(f"module 'fs_task_queue.plugins' has no attribute {name!r}")
