"""``SSHQueue``: submit to and watch a queue on another machine (a cluster) over SSH.

The queue directory lives on the cluster, where the workers run; this process
reaches it through :class:`~fs_task_queue.storage.sftp.SFTPStorage`. Everything
a local :class:`~fs_task_queue.Queue` does works (it *is* a Queue, over another
storage). See ``docs/ssh.md`` for URLs, keys, agents, ``~/.ssh/config`` and bastions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fs_task_queue.errors import QueueError
from fs_task_queue.queue import Queue

__all__ = ["SSHQueue"]


def _storage_class() -> Any:
    try:
        from fs_task_queue.storage.sftp import open_ssh_storage
    except ImportError as exc:
        if getattr(exc, "name", None) == "paramiko" or "paramiko" in str(exc):
            raise QueueError(
                "SSH queues need paramiko, which is not installed: pip install 'fs-task-queue[ssh]'"
            ) from None
        raise
    return open_ssh_storage


class SSHQueue(Queue):
    """A queue at ``ssh://[user[:password]@]host[:port]/path`` (``/~/path``: in the remote home).

    ``create=False`` (the default here): a mistyped path is an error naming the
    path, not a new queue nobody serves; the workers' first start creates it
    (or pass ``create=True``). SSH options (``key_filename``, ``passphrase``,
    ``allow_agent``, ``look_for_keys``, ``ssh_config``, ``known_hosts``,
    ``accept_new_host_key``, ``timeout``, ``keepalive``, ``check_python``) are
    those of :class:`~fs_task_queue.storage.sftp.SSHOptions`; unset ones come
    from the ``PARAMIKO_SSH_*`` environment variables, then OpenSSH's defaults.

    >>> queue = SSHQueue("ssh://alice@login.hpc.example/~/queue")   # doctest: +SKIP
    >>> queue.enqueue(operator.add, 1, 2).wait()                     # doctest: +SKIP
    3
    """

    def __init__(
        self,
        url: str,
        *,
        create: bool = False,
        shared: bool = False,
        clock: Callable[[], float] | None = None,
        **ssh_options: Any,
    ) -> None:
        open_storage = _storage_class()
        from fs_task_queue.storage.sftp import SSHOptions

        try:
            options = SSHOptions(**ssh_options)
        except TypeError:
            known = sorted(SSHOptions.__dataclass_fields__)
            unknown = sorted(set(ssh_options) - set(known))
            raise TypeError(
                f"SSHQueue got unknown option(s) {', '.join(unknown)}; it takes {', '.join(known)}"
            ) from None
        file_mode, dir_mode = (0o660, 0o2770) if shared else (0o600, 0o700)
        storage = open_storage(url, options, file_mode=file_mode, dir_mode=dir_mode)
        try:
            super().__init__(storage=storage, create=create, shared=shared, clock=clock)
        except BaseException:
            storage.close()
            raise
