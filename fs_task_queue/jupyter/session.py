"""One notebook's state: its default queue, its id, its handles, local workers, pending autopulls."""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from fs_task_queue.group import JobGroup
from fs_task_queue.job import Job
from fs_task_queue.queue import Queue

if TYPE_CHECKING:
    from fs_task_queue.jupyter.localworkers import LocalWorkers

__all__ = ["NotebookSession"]


class NotebookSession:
    """What ``%fsq`` remembers for one IPython shell."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.queue: Queue | None = None
        #: The last job or group submitted (what ``%fsq pull``/``wait``/``cancel`` act on by default).
        self.last: Job | JobGroup | None = None
        self.workers: LocalWorkers | None = None
        #: ``--no-wait --autopull`` handles, pulled before the next cell once done.
        self.autopull: list[tuple[Job | JobGroup, tuple[str, ...] | None]] = []

    @property
    def notebook(self) -> str:
        """This notebook's id, recorded with its jobs (``%fsq jobs`` lists them after a restart)."""
        ns = self.shell.user_ns
        # ipykernel sets __session__ from JPY_SESSION_NAME (the notebook's path, set by
        # jupyter_server); VS Code sets __vsc_ipynb_file__; nbclient sets neither.
        for key in ("__session__", "__vsc_ipynb_file__"):
            value = ns.get(key)
            if isinstance(value, str) and value:
                return value
        return os.environ.get("FSQ_NOTEBOOK") or f"{socket.gethostname()}:{os.getcwd()}"

    def use(self, queue: Queue) -> None:
        if self.workers is not None and self.workers.queue != queue:
            self.workers.stop()
            self.workers = None
        self.queue = queue

    def before_cell(self, *_: Any) -> None:
        """IPython ``pre_run_cell``: pull finished ``--autopull`` jobs (on the main thread, never a poller's)."""
        if not self.autopull:
            return
        from fs_task_queue.jupyter import replay

        waiting = []
        for handle, names in self.autopull:
            if not handle.done():
                waiting.append((handle, names))
                continue
            what = f"job {handle.id}" if isinstance(handle, Job) else f"group of {len(handle)}"
            try:
                pulled = replay.pull(handle, self.shell.user_ns, names=names, show=False)
            except BaseException as exc:
                print(f"fsq: {what} failed: {exc}", file=sys.stderr)
                continue
            print(f"fsq: {', '.join(pulled.names) or 'nothing'} arrived from {what}")
        self.autopull = waiting

    def close(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
