"""The storage seam: the few byte-and-name operations the queue logic needs.

Queue, Job and Worker logic is written once against :class:`Storage`; local disk
(:class:`~fs_task_queue.storage.local.LocalStorage`) implements it, and so can
SFTP or anything else that offers an atomic rename. Paths are relative to the
queue root and use ``/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from fs_task_queue.watch import DirWatcher

__all__ = ["CommandResult", "FileInfo", "Storage", "UserIds"]


@dataclass(frozen=True)
class FileInfo:
    """What ``stat`` tells about a file (of the file itself: a symlink is not followed)."""

    size: int
    mtime: float
    #: The inode change time, or None where the storage has none (SFTP v3).
    #: A rename sets it, so it tells when a task was claimed (see ``Job.info``).
    ctime: float | None
    is_file: bool
    is_dir: bool
    #: Permission bits with the set-id and sticky bits (``stat.S_IMODE``).
    mode: int
    #: Owner and group, as the filesystem reports them (the trust check compares them).
    uid: int
    gid: int
    is_symlink: bool


@dataclass(frozen=True)
class UserIds:
    """Who "you" are where the files are: the user whose processes create the storage's files.

    On a mounted filesystem that is this process; over SFTP it is the remote
    login user, whose ids the local system knows nothing about.
    """

    uid: int
    #: The primary and supplementary groups.
    gids: frozenset[int]
    #: The user's name, for messages.
    name: str


@dataclass(frozen=True)
class CommandResult:
    """What :meth:`Storage.run_cli` ran and returned."""

    #: The command line, for messages (its words quoted as the host's shell would see them).
    command: str
    returncode: int
    stdout: str
    stderr: str


@runtime_checkable
class Storage(Protocol):
    """Byte-and-name operations on a queue directory.

    Every write is atomic: readers see a whole file or none. Errors are the
    builtin ``OSError`` subclasses (``FileNotFoundError`` when a racing process
    moved the file first, ``FileExistsError`` when a no-replace target exists).

    Symlinks: no operation follows a symlink anywhere below the queue root. A
    path's folders (``queued/``, then ``queued/<shard>``, ``claimed/<worker>``,
    ``jobs/<id>``) are entered without following links, and its last name is
    acted on itself (a link there is read as a link, renamed or deleted as one,
    never written through). A symlink in place of a folder on the way raises
    :class:`~fs_task_queue.errors.SymlinkInQueueError` (an ``OSError`` too),
    and nothing is read, written, moved or deleted through it. A path with an
    empty, ``.`` or ``..`` component is a ``ValueError``. (The root itself is
    found by its path.)
    """

    #: Human-readable location of the queue (a path or URL).
    location: str
    #: Permission bits given to new files and folders (owner-only unless shared with a group).
    file_mode: int
    dir_mode: int

    def read(self, path: str) -> bytes:
        """The whole content of a regular file (never follows a symlink, never blocks on a FIFO).

        A symlink as the file fails with ELOOP; as one of its folders, SymlinkInQueueError.
        """
        ...

    def read_from(self, path: str, offset: int) -> bytes:
        """The content of ``path`` from byte ``offset`` on (for tailing logs); symlinks as in :meth:`read`."""
        ...

    def read_many(self, paths: list[str]) -> dict[str, bytes | OSError]:
        """:meth:`read` of each path: its bytes, or the ``OSError`` its read raised (FileNotFoundError if missing).

        A remote storage reads them together, a round trip per stage rather
        than per file (a status poll of many finished jobs reads each outcome once).
        """
        ...

    def publish(self, path: str, data: bytes, *, replace: bool, make_parent: bool = False, sync: bool = False) -> None:
        """Write ``data`` to ``path`` atomically (temp file + rename).

        With ``replace=False`` the target must not exist (``FileExistsError``):
        of any number of racing publishers exactly one wins. With
        ``make_parent=True`` a missing parent folder is made once the data is
        written, just before the rename (so a failed write leaves nothing behind).
        The new file replaces a symlink at ``path`` (it never writes through one);
        a symlinked folder on the way raises SymlinkInQueueError and nothing is published.
        With ``sync=True`` the file and its folder entry are made durable even
        when the storage is not (the queue's key and format file).
        """
        ...

    def publish_many(
        self, items: list[tuple[str, bytes]], *, replace: bool = False, make_parent: bool = False
    ) -> list[OSError | None]:
        """:meth:`publish` each ``(path, data)``; return each one's error, or None where it was published.

        A remote storage sends them together, a round trip per stage rather
        than per file, so items after a failed one may be published. A local
        one stops at the first failure: the items after it are not published
        and carry that same error.
        """
        ...

    def append(self, path: str, data: bytes) -> None:
        """Append ``data`` to ``path``, creating it (logs written while a task runs).

        A symlink as the file fails with ELOOP, as one of its folders with
        SymlinkInQueueError: nothing is appended through either.
        """
        ...

    def rename(self, src: str, dst: str, *, make_parent: bool = False) -> None:
        """Move ``src`` to a free name ``dst`` atomically; exactly one racing mover wins.

        With ``make_parent=True`` a missing parent folder of ``dst`` is made and
        the move tried again (``FileNotFoundError`` then means ``src`` is gone).
        A symlink as ``src`` is moved as the link; a symlinked folder on either
        side raises SymlinkInQueueError and nothing moves.
        """
        ...

    def remove(self, path: str) -> None:
        """Delete a file (a symlink is deleted itself, never its target)."""
        ...

    def remove_tree(self, path: str) -> None:
        """Delete a directory and everything in it; a missing one is fine.

        A symlink (or file) in place of the directory is deleted itself and its
        target left alone; nothing inside the directory is followed either.
        """
        ...

    def remove_many(self, paths: list[str]) -> list[OSError | None]:
        """:meth:`remove` each file; each one's error (FileNotFoundError if missing), or None. Together when remote."""
        ...

    def remove_trees(self, paths: list[str]) -> None:
        """:meth:`remove_tree` of each path, together where the storage can batch them (purging many jobs)."""
        ...

    def mkdir(self, path: str) -> None:
        """Create a directory (and its parents); an existing one is fine (an existing symlink is left as is)."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, unsorted; opened afresh, refusing a symlink (SymlinkInQueueError)."""
        ...

    def scan(self, path: str) -> list[tuple[str, bool]]:
        """Names in a directory, each with whether it is a directory (a symlink to one is not).

        The directory itself is opened as :meth:`listdir` opens it.
        """
        ...

    def remove_dir(self, path: str) -> None:
        """Delete an empty directory (``OSError`` with ENOTEMPTY if something is in it)."""
        ...

    def stat(self, path: str) -> FileInfo:
        """Size, times and type of ``path`` (without following a symlink)."""
        ...

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (a symlink exists as itself, whatever it points to)."""
        ...

    def touch(self, path: str) -> None:
        """Set the modification time of an existing file to now (FileNotFoundError if gone; a symlink's own)."""
        ...

    def now(self) -> float:
        """The storage's own clock: the modification time (epoch seconds) it gives a file written now.

        On NFS or SFTP the server sets it, so submitters on hosts whose clocks
        disagree can all correct their order keys to this one clock.
        """
        ...

    def stat_many(self, paths: list[str]) -> list[FileInfo | None]:
        """:meth:`stat` of each path (None where missing), in one go where the storage can batch them."""
        ...

    def share_with_group(self) -> None:
        """Create group-readable and -writable files and setgid folders from now on (a shared queue)."""
        ...

    def user(self, *, groups: bool = True) -> UserIds:
        """The user (and groups) that owns what this storage creates: "you" for the trust check.

        With ``groups=False`` only the uid is needed: ``gids`` and ``name`` may
        be partial (a remote storage answers without asking the host's user database).
        """
        ...

    def is_member(self, uid: int, gid: int) -> bool:
        """Whether user ``uid`` belongs to group ``gid`` where the files are (primary or listed member)."""
        ...

    def watcher(self, directory: str, *, nested: bool = False) -> DirWatcher:
        """A watcher whose ``wait`` ends when ``directory`` may have changed (waits for results and tasks).

        On a mounted filesystem it sleeps on inotify; a remote storage polls
        with one request a tick on a short backoff, or wakes when its remote
        end pushes a change. ``nested``: the folders inside count too (``queued/``).
        """
        ...

    def close(self) -> None:
        """Release what the storage holds (descriptors, connections); it opens them again if used later."""
        ...

    def run_cli(self, args: list[str], *, timeout: float = 120.0) -> CommandResult:
        """Run ``python -m fs_task_queue ARGS --path ROOT`` on the machine that holds the queue.

        ``ROOT`` is this queue's directory as that machine names it (only the
        storage knows it). The one command a queue runs on its host (``slurm
        submit`` from a laptop, for one): always fs-task-queue's own CLI with
        its Python there, each argument passed as one word (quoted for a remote
        shell, never a string built from input). Raises ``OSError`` when it
        cannot be started (an SFTP-only account); a non-zero exit is returned.
        """
        ...

    def local_path(self, path: str) -> str | None:
        """The OS path of ``path`` when the queue is on a mounted filesystem, else None.

        For messages, watchers and locks only: opening it follows symlinks.
        """
        ...
