"""The seed's other spelling: ``fs_task_queue.plugin.dask.DaskWorker`` is :mod:`fs_task_queue.plugins.dask`'s."""
