"""``fs_task_queue.plugin.dask.DaskWorker``, as the seed's README spells it.

The same objects as :mod:`fs_task_queue.plugins.dask`.
"""

from fs_task_queue.plugins.dask import DaskExecutor, DaskWorker

__all__ = ["DaskExecutor", "DaskWorker"]
