"""Storage on a mounted filesystem (local disk, NFS, Lustre, GPFS, sshfs...).

Each operation uses as few system calls as it can, because workers make them for
every task: a read is open/fstat/read/close and a publish is open/write/close/
rename. Files are opened with O_NOFOLLOW so a symlink planted in the queue cannot
redirect a read or a write, and with O_NONBLOCK for reads so a FIFO cannot hang a
worker.

No symlink is followed below the queue root either: the root and its fixed
folders (``queued/``, ``claimed/``...) are opened once with ``O_DIRECTORY |
O_NOFOLLOW`` and every name below them is resolved with ``*at`` calls relative
to those descriptors, a second-level folder (``queued/<shard>``,
``claimed/<worker>``, ``jobs/<id>``) opened ``O_NOFOLLOW`` relative to its
top-level one. A symlink there fails with :class:`SymlinkInQueueError`. Those
second-level descriptors are kept in a small per-thread cache, so the claim
and submit renames cost what they cost with path strings; a cached descriptor
of a folder removed meanwhile is noticed (``st_nlink`` 0) and opened afresh.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shlex
import stat as stat_mod
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from fs_task_queue.errors import SymlinkInQueueError
from fs_task_queue.storage import CommandResult, FileInfo, UserIds
from fs_task_queue.watch import DirWatcher

_T = TypeVar("_T")

__all__ = ["LocalStorage"]

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_AT_FDCWD = -100
_FIRST_READ = 1 << 16
_RENAME_NOREPLACE = 1
_MOVE_ATTEMPTS = 4  # of a move whose target folder a claimer may remove meanwhile
# A folder handle for *at calls only: O_PATH needs no read permission and reads nothing.
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Second-level folder descriptors one thread keeps (its claimed/<me>, the shards it
#: reads or fills, the job folder of the task it runs).
_SUB_CACHE = 16


def _load_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28, or not Linux
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _fs(path: str) -> bytes:
    # os.fsencode without its per-call lookups (Linux file names are UTF-8 here).
    return path.encode("utf-8", "surrogateescape")


class _Fds(dict[str, int]):
    """Second-level folder descriptors ("queued/<shard>" -> fd), closed when dropped."""

    def __del__(self) -> None:
        for fd in self.values():
            with contextlib.suppress(OSError, TypeError):  # TypeError: os gone at interpreter exit
                os.close(fd)


class _SubFolders(threading.local):
    """Each thread's own :class:`_Fds`.

    Per thread, so no other thread can close a descriptor (and the kernel hand
    its number to another file) between this thread's lookup and its use. A
    thread's descriptors are closed when it ends or the storage is dropped.
    """

    def __init__(self) -> None:
        self.fds = _Fds()


class LocalStorage:
    """Storage rooted at a directory of a mounted filesystem.

    ``file_mode``/``dir_mode`` are the permission bits of what it creates
    (owner-only unless the queue is shared with a group). ``durable=True`` adds
    fsync of every published file and its directory, for power-loss safety at
    the price of speed.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        tmp_dir: str = "tmp",
        file_mode: int = 0o600,
        dir_mode: int = 0o700,
        durable: bool = False,
    ) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.location = self.root
        self._tmp_dir = tmp_dir
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.durable = durable
        # Group-shared queues need bits the umask may strip; fix them explicitly,
        # but only then, so the default path costs no extra syscall.
        self._chmod = (file_mode & 0o077) != 0
        self._noreplace = _renameat2 is not None
        self._counter = 0
        self._rand = os.urandom(4).hex()
        self._init_fds()

    def _init_fds(self) -> None:
        # Opened lazily (a queue being created has no folders yet) and kept for the
        # storage's life; inherited by a forked task process, dropped by pickling.
        self._root_fd = -1
        self._top: dict[str, int] = {}
        self._subs = _SubFolders()
        self._fd_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_root_fd", "_top", "_subs", "_fd_lock"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_fds()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Close the folder descriptors (they are opened again when needed)."""
        top, self._top = getattr(self, "_top", {}), {}
        for fd in [*top.values(), getattr(self, "_root_fd", -1)]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._root_fd = -1
        if hasattr(self, "_subs"):
            self._subs = _SubFolders()

    def share_with_group(self) -> None:
        """Create group-readable and -writable files and setgid folders from now on."""
        self.file_mode, self.dir_mode, self._chmod = 0o660, 0o2770, True

    def _abs(self, path: str) -> str:
        return f"{self.root}/{path}"

    def local_path(self, path: str) -> str | None:
        return self._abs(path)

    def run_cli(self, args: list[str], *, timeout: float = 120.0) -> CommandResult:
        argv = [sys.executable, "-m", "fs_task_queue", *args, "--path", self.root]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        return CommandResult(shlex.join(argv), done.returncode, done.stdout, done.stderr)

    # ------------------------------------------------------------ resolving
    def _root(self) -> int:
        fd = self._root_fd
        if fd < 0:
            # The root itself is found by its path (what may lead to it is the
            # caller's choice); everything below it is opened relative to this.
            fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
            with self._fd_lock:
                if self._root_fd < 0:
                    self._root_fd = fd
                else:
                    os.close(fd)
                fd = self._root_fd
        return fd

    def _open_dir(self, parent: int, name: str, shown: str, flags: int = _DIR_FLAGS) -> int:
        """Open folder ``name`` in ``parent`` without following a symlink (SymlinkInQueueError)."""
        try:
            return os.open(name, flags, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            try:
                is_link = stat_mod.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
            except OSError:
                is_link = False
            if is_link:
                raise SymlinkInQueueError(self._abs(shown)) from None
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", self._abs(shown)) from None

    def _top_fd(self, name: str) -> int:
        fd = self._top.get(name)
        if fd is None:
            fd = self._open_dir(self._root(), name, name)
            with self._fd_lock:
                if name in self._top:
                    os.close(fd)
                    fd = self._top[name]
                else:
                    self._top[name] = fd
        return fd

    def _sub_fd(self, key: str, fresh: bool = False) -> tuple[int, bool]:
        """The descriptor of second-level folder ``key`` and whether it came from the cache."""
        fds = self._subs.fds
        fd = fds.get(key)
        if fd is not None and not fresh:
            # Least recently used goes first when the cache is full: a move holds
            # its source folder's descriptor while it looks up the target's, and
            # evicting (closing) the source then would fail the move with EBADF.
            fds[key] = fds.pop(key)
            return fd, True
        top, _, name = key.partition("/")
        new = self._open_dir(self._top_fd(top), name, key)
        self._keep(key, new)
        return new, False

    def _keep(self, key: str, fd: int) -> None:
        fds = self._subs.fds
        old = fds.pop(key, None)
        if old is not None:
            os.close(old)
        elif len(fds) >= _SUB_CACHE:
            os.close(fds.pop(next(iter(fds))))
        fds[key] = fd

    def _forget(self, key: str) -> None:
        fd = self._subs.fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def _stale(self, key: str, fd: int) -> bool:
        """After ENOENT through a cached folder descriptor: was that folder removed since?

        A removed folder has no links left; its descriptor lists as empty and
        refuses creates with ENOENT, which must not pass for "no such file".
        Then the entry is dropped and the caller opens the folder afresh.
        """
        try:
            stale = os.fstat(fd).st_nlink == 0
        except OSError:  # ESTALE on NFS: as good as removed
            stale = True
        if stale:
            self._forget(key)
        return stale

    def _split(self, path: str) -> tuple[int, str, str | None]:
        """(folder descriptor, last name, cache key of a second-level folder or None)."""
        parts = path.split("/")
        for part in parts:
            if part in ("", ".", ".."):
                raise ValueError(f"{path!r} is not a path inside the queue")
        if len(parts) == 2:
            return self._top_fd(parts[0]), parts[1], None
        if len(parts) == 3:
            key = f"{parts[0]}/{parts[1]}"
            fd, cached = self._sub_fd(key)
            return fd, parts[2], key if cached else None
        if len(parts) == 1:
            return self._root(), parts[0], None
        raise ValueError(f"{path!r} is deeper than any queue file")

    def _at(self, path: str, op: Any) -> Any:
        """``op(folder fd, name)`` for ``path``, once more on a fresh folder if a cached one was removed."""
        fd, name, key = self._split(path)
        try:
            return op(fd, name)
        except FileNotFoundError:
            if key is None or not self._stale(key, fd):
                raise
        return op(self._sub_fd(key, fresh=True)[0], name)

    # ------------------------------------------------------------ operations
    def read(self, path: str) -> bytes:
        fd = self._at(path, _open_read)
        try:
            # A read of a regular file comes back short only at its end, so a
            # small file takes open/read/close and no fstat. A directory fails
            # with EISDIR; a FIFO (opened non-blocking) reads as empty.
            data = os.read(fd, _FIRST_READ)
            if len(data) < _FIRST_READ:
                return data
            chunks = [data]
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def read_many(self, paths: list[str]) -> dict[str, bytes | OSError]:
        out: dict[str, bytes | OSError] = {}
        for path in paths:
            try:
                out[path] = self.read(path)
            except OSError as exc:
                out[path] = exc
        return out

    def read_from(self, path: str, offset: int) -> bytes:
        fd = self._at(path, _open_read)
        try:
            chunks = []
            while chunk := os.pread(fd, 1 << 20, offset):
                chunks.append(chunk)
                offset += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def open_append(self, path: str) -> int:
        """A descriptor that appends to ``path`` (created if missing), never through a symlink."""
        mode = self.file_mode
        return int(self._at(path, lambda fd, name: os.open(name, _APPEND_FLAGS, mode, dir_fd=fd)))

    def _new_tmp_name(self) -> str:
        self._counter += 1
        # Short on purpose: Linux keeps a name of up to 32 bytes inside its
        # dentry and allocates longer ones apart, about 5 µs per file on tmpfs.
        # The pid keeps names unique across a fork that copied the counter
        # (cached: getpid is a system call, and this runs for every file).
        return f"{_pid:x}-{self._rand}-{self._counter:x}.tmp"

    def publish(self, path: str, data: bytes, *, replace: bool, make_parent: bool = False, sync: bool = False) -> None:
        sync = sync or self.durable
        tmp_fd = self._top_fd(self._tmp_dir)
        tmp = self._new_tmp_name()
        fd = os.open(tmp, _CREATE_FLAGS, self.file_mode, dir_fd=tmp_fd)
        try:
            try:
                written = os.write(fd, data)  # all of it, but for huge files or signals
                if written < len(data):
                    view = memoryview(data)[written:]
                    while view:
                        view = view[os.write(fd, view) :]
                if self._chmod:
                    os.fchmod(fd, self.file_mode)
                if sync:
                    os.fsync(fd)
            finally:
                # close() can be where NFS reports ENOSPC/EDQUOT, so its error counts.
                os.close(fd)
            dst_fd = self._move(tmp_fd, tmp, path, replace=replace, make_parent=make_parent)
            if sync:
                # A claimer may have taken the file and removed its emptied shard
                # already: the publish happened, so that is no error.
                with contextlib.suppress(FileNotFoundError):
                    self._fsync_dir(dst_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=tmp_fd)
            raise

    def publish_many(
        self, items: list[tuple[str, bytes]], *, replace: bool = False, make_parent: bool = False
    ) -> list[OSError | None]:
        errors: list[OSError | None] = []
        for path, data in items:
            try:
                self.publish(path, data, replace=replace, make_parent=make_parent)
            except OSError as exc:
                # In order, like a loop of publish: what is queued is always a prefix.
                return errors + [exc] * (len(items) - len(errors))
            errors.append(None)
        return errors

    def _move(self, src_fd: int, src: str, dst: str, *, replace: bool, make_parent: bool) -> int:
        """Move ``src`` (in folder ``src_fd``) to the path ``dst``; return the descriptor of dst's folder."""
        for attempt in range(_MOVE_ATTEMPTS):
            key = None
            try:
                dst_fd, name, key = self._split(dst)
                if replace:
                    os.rename(src, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                else:
                    self._rename_noreplace(src_fd, src, dst_fd, name)
                return dst_fd
            except FileNotFoundError:
                if key is not None and self._stale(key, dst_fd):
                    continue  # a cached folder removed since: look it up again
                # ENOENT names neither side. Only a missing parent of dst is ours
                # to fix (never made, or a claimer removed an emptied shard just
                # now): make it and move the same file again.
                if not make_parent or not _lexists(src_fd, src):
                    raise
                if attempt == _MOVE_ATTEMPTS - 1:
                    # Not FileNotFoundError: callers read that as "someone else
                    # took the file" and could drop a file that is still here.
                    raise OSError(errno.EAGAIN, f"the folder of {self._abs(dst)} keeps disappearing") from None
                with contextlib.suppress(FileNotFoundError):
                    # Removed again between its mkdir and chmod: the next try makes it again.
                    self._make_dir(self._abs(dst.rpartition("/")[0]))
        raise OSError(errno.EAGAIN, f"the folder of {self._abs(dst)} keeps disappearing")

    def _rename_noreplace(self, src_fd: int, src: str, dst_fd: int, dst: str) -> None:
        if self._noreplace and _renameat2 is not None:
            if _renameat2(src_fd, _fs(src), dst_fd, _fs(dst), _RENAME_NOREPLACE) == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise OSError(err, os.strerror(err), dst)
            # NFS, sshfs and older kernels lack the flag: fall back to link(2),
            # which never replaces, and remember so we do not try again.
            self._noreplace = False
        try:
            os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as exc:
            # On NFS a retried LINK can report failure for a link that was made;
            # the truth is whether dst is now the same file as src.
            try:
                same = os.path.samestat(
                    os.stat(src, dir_fd=src_fd, follow_symlinks=False),
                    os.stat(dst, dir_fd=dst_fd, follow_symlinks=False),
                )
            except FileNotFoundError:
                raise exc from None
            if not same:
                raise
        os.unlink(src, dir_fd=src_fd)

    @staticmethod
    def _fsync_dir(dir_fd: int) -> None:
        # The cached descriptors are O_PATH, which fsync refuses: open the folder itself.
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, path: str, data: bytes) -> None:
        fd = self.open_append(path)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str, *, make_parent: bool = False) -> None:
        src_fd, src_name, key = self._split(src)
        if make_parent:
            try:
                self._move(src_fd, src_name, dst, replace=True, make_parent=True)
                return
            except FileNotFoundError:
                if key is None or not self._stale(key, src_fd):
                    raise
            self._move(self._sub_fd(key, fresh=True)[0], src_name, dst, replace=True, make_parent=True)
            return
        # The claim's rename: no extra call when both folders are cached.
        dst_fd, dst_name, dst_key = self._split(dst)
        try:
            os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            return
        except FileNotFoundError:
            src_stale = key is not None and self._stale(key, src_fd)
            dst_stale = dst_key is not None and self._stale(dst_key, dst_fd)
            if not (src_stale or dst_stale):
                raise
        src_fd, src_name, _ = self._split(src)
        dst_fd, dst_name, _ = self._split(dst)
        os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)

    def remove(self, path: str) -> None:
        self._at(path, lambda fd, name: os.unlink(name, dir_fd=fd))

    def remove_tree(self, path: str) -> None:
        if path.count("/") == 1:
            self._forget(path)  # its descriptor would outlive the folder
        try:
            parent, name, _ = self._split(path)
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            return  # missing (or its parent is a symlink: nothing of ours to delete)
        if stat_mod.S_ISLNK(st.st_mode) or not stat_mod.S_ISDIR(st.st_mode):
            # A symlink planted in place of the folder: remove the link, never
            # what it points to.
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=parent)
            return
        _remove_tree_at(parent, name)

    def remove_many(self, paths: list[str]) -> list[OSError | None]:
        out: list[OSError | None] = []
        for path in paths:
            try:
                self.remove(path)
                out.append(None)
            except OSError as exc:
                out.append(exc)
        return out

    def remove_trees(self, paths: list[str]) -> None:
        for path in paths:
            self.remove_tree(path)

    def watcher(self, directory: str, *, nested: bool = False) -> DirWatcher:
        return DirWatcher([self.local_path(directory)], nested=nested)

    def mkdir(self, path: str) -> None:
        self._make_dir(self._abs(path) if path else self.root)

    def _make_dir(self, target: str) -> None:
        # Takes the OS path (a seam the tests use to race folder removal).
        if target == self.root:
            self._make_root()
            return
        path = target[len(self.root) + 1 :]
        try:
            parent, name, _ = self._split(path)
        except FileNotFoundError:
            top = path.partition("/")[0]
            if top == path:
                raise
            self._make_dir(self._abs(top))  # a missing top-level folder (a queue being created)
            parent, name, _ = self._split(path)
        try:
            os.mkdir(name, self.dir_mode, dir_fd=parent)
        except FileExistsError:
            return
        if self._chmod:
            # Through a descriptor of the new folder: a symlink swapped in
            # meanwhile is refused, not chmod-ed.
            fd = self._open_dir(parent, name, path, _LIST_FLAGS)
            try:
                os.fchmod(fd, self.dir_mode)
            finally:
                os.close(fd)
        if self.durable:  # the new folder's own entry must survive a power loss too
            self._fsync_dir(parent)

    def _make_root(self) -> None:
        target = self.root
        try:
            os.mkdir(target, self.dir_mode)
        except FileExistsError:
            return
        except FileNotFoundError:
            os.makedirs(target, self.dir_mode, exist_ok=True)
        if self._chmod:
            os.chmod(target, self.dir_mode)
        if self.durable:
            fd = os.open(target.rpartition("/")[0] or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _open_listing(self, path: str) -> tuple[int, str | None]:
        """A readable descriptor of folder ``path``, opened afresh (a cached one may be of a removed folder)."""
        if not path:
            return os.open(self.root, _LIST_FLAGS & ~os.O_NOFOLLOW), None
        parts = path.split("/")
        if len(parts) == 1 and path not in (".", ".."):
            return self._open_dir(self._root(), path, path, _LIST_FLAGS), None
        if len(parts) == 2 and parts[1] not in ("", ".", ".."):
            return self._open_dir(self._top_fd(parts[0]), parts[1], path, _LIST_FLAGS), path
        raise ValueError(f"{path!r} is not a folder of the queue")

    def listdir(self, path: str) -> list[str]:
        return self._listing(path, os.listdir)

    def scan(self, path: str) -> list[tuple[str, bool]]:
        def entries(fd: int) -> list[tuple[str, bool]]:
            # The kernel's d_type says what each entry is: no stat per name.
            with os.scandir(fd) as found:
                return [(e.name, e.is_dir(follow_symlinks=False)) for e in found]

        return self._listing(path, entries)

    def _listing(self, path: str, read: Callable[[int], _T]) -> _T:
        """``read`` the folder ``path`` through a descriptor opened afresh (no symlink followed)."""
        fd, key = self._open_listing(path)
        try:
            result = read(fd)
        except BaseException:
            os.close(fd)
            raise
        if key is None:
            os.close(fd)
        else:
            self._keep(key, fd)  # the freshest handle of this folder: the claims of these names use it
        return result

    def remove_dir(self, path: str) -> None:
        parent, name, _ = self._split(path)
        os.rmdir(name, dir_fd=parent)
        if path.count("/") == 1:
            self._forget(path)

    def stat(self, path: str) -> FileInfo:
        st = os.lstat(self.root) if not path else self._at(path, _lstat)
        return FileInfo(
            size=st.st_size,
            mtime=st.st_mtime,
            ctime=st.st_ctime,
            is_file=stat_mod.S_ISREG(st.st_mode),
            is_dir=stat_mod.S_ISDIR(st.st_mode),
            mode=stat_mod.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            is_symlink=stat_mod.S_ISLNK(st.st_mode),
        )

    def stat_many(self, paths: list[str]) -> list[FileInfo | None]:
        out: list[FileInfo | None] = []
        for path in paths:
            try:
                out.append(self.stat(path))
            except FileNotFoundError:
                out.append(None)
        return out

    def user(self, *, groups: bool = True) -> UserIds:
        uid = os.geteuid()
        return UserIds(uid, frozenset((os.getegid(), *os.getgroups())), _user_name(uid))

    def is_member(self, uid: int, gid: int) -> bool:
        import grp
        import pwd

        try:
            user = pwd.getpwuid(uid)
        except KeyError:
            return False  # a deleted user's files: nobody can say whom they belong to
        if user.pw_gid == gid:
            return True
        try:
            return user.pw_name in grp.getgrgid(gid).gr_mem
        except KeyError:
            return False

    def exists(self, path: str) -> bool:
        try:
            if not path:
                os.lstat(self.root)
            else:
                self._at(path, _lstat)
        except FileNotFoundError:
            return False
        return True

    def touch(self, path: str) -> None:
        self._at(path, lambda fd, name: os.utime(name, dir_fd=fd, follow_symlinks=False))

    def now(self) -> float:
        # A file created now gets its times from whoever keeps the files (the
        # NFS or SFTP server, else this kernel); the create's reply carries them,
        # so fstat asks nobody again. Not on a per-task path: see Queue._skew.
        tmp_fd = self._top_fd(self._tmp_dir)
        tmp = self._new_tmp_name()
        fd = os.open(tmp, _CREATE_FLAGS, self.file_mode, dir_fd=tmp_fd)
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            os.unlink(tmp, dir_fd=tmp_fd)


@functools.lru_cache(maxsize=8)
def _user_name(uid: int) -> str:
    import pwd  # once per uid: it reads /etc/passwd (the name is for messages only)

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _open_read(dir_fd: int, name: str) -> int:
    return os.open(name, _READ_FLAGS, dir_fd=dir_fd)


def _lstat(dir_fd: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def _lexists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _remove_tree_at(parent: int, name: str) -> None:
    """Delete folder ``name`` of ``parent`` and what is in it, by descriptors, following no symlink.

    (shutil.rmtree takes a dir_fd only from Python 3.11.) Errors are ignored:
    what cannot be deleted stays.
    """
    try:
        fd = os.open(name, _LIST_FLAGS, dir_fd=parent)
    except OSError:
        return
    try:
        with os.scandir(fd) as entries:
            found = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for entry, is_dir in found:
            if is_dir:
                _remove_tree_at(fd, entry)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry, dir_fd=fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=parent)
