"""Storage on a mounted filesystem (local disk, NFS, Lustre, GPFS, sshfs...).

Each operation uses as few system calls as it can, because workers make them for
every task: a read is open/fstat/read/close and a publish is open/write/close/
rename. Files are opened with O_NOFOLLOW so a symlink planted in the queue cannot
redirect a read or a write, and with O_NONBLOCK for reads so a FIFO cannot hang a
worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat as stat_mod
from typing import Any

from fs_task_queue.storage import FileInfo

__all__ = ["LocalStorage"]

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_AT_FDCWD = -100
_FIRST_READ = 1 << 16
_RENAME_NOREPLACE = 1
_MOVE_ATTEMPTS = 4  # of a move whose target folder a claimer may remove meanwhile


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
        self._tmp = f"{self.root}/{tmp_dir}"
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.durable = durable
        # Group-shared queues need bits the umask may strip; fix them explicitly,
        # but only then, so the default path costs no extra syscall.
        self._chmod = (file_mode & 0o077) != 0
        self._noreplace = _renameat2 is not None
        self._counter = 0
        self._rand = os.urandom(4).hex()

    def share_with_group(self) -> None:
        """Create group-readable and -writable files and setgid folders from now on."""
        self.file_mode, self.dir_mode, self._chmod = 0o660, 0o2770, True

    def _abs(self, path: str) -> str:
        return f"{self.root}/{path}"

    def local_path(self, path: str) -> str | None:
        return self._abs(path)

    def read(self, path: str) -> bytes:
        fd = os.open(self._abs(path), _READ_FLAGS)
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

    def read_from(self, path: str, offset: int) -> bytes:
        fd = os.open(self._abs(path), _READ_FLAGS)
        try:
            chunks = []
            while chunk := os.pread(fd, 1 << 20, offset):
                chunks.append(chunk)
                offset += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _new_tmp_name(self) -> str:
        self._counter += 1
        # Short on purpose: Linux keeps a name of up to 32 bytes inside its
        # dentry and allocates longer ones apart, about 5 µs per file on tmpfs.
        # The pid keeps names unique across a fork that copied the counter
        # (cached: getpid is a system call, and this runs for every file).
        return f"{self._tmp}/{_pid:x}-{self._rand}-{self._counter:x}.tmp"

    def publish(self, path: str, data: bytes, *, replace: bool, make_parent: bool = False) -> None:
        tmp = self._new_tmp_name()
        fd = os.open(tmp, _CREATE_FLAGS, self.file_mode)
        try:
            try:
                written = os.write(fd, data)  # all of it, but for huge files or signals
                if written < len(data):
                    view = memoryview(data)[written:]
                    while view:
                        view = view[os.write(fd, view) :]
                if self._chmod:
                    os.fchmod(fd, self.file_mode)
                if self.durable:
                    os.fsync(fd)
            finally:
                # close() can be where NFS reports ENOSPC/EDQUOT, so its error counts.
                os.close(fd)
            target = self._abs(path)
            self._move(tmp, target, replace=replace, make_parent=make_parent)
            if self.durable:
                # A claimer may have taken the file and removed its emptied shard
                # already: the publish happened, so that is no error.
                with contextlib.suppress(FileNotFoundError):
                    self._fsync_dir(target.rpartition("/")[0])
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _move(self, src: str, dst: str, *, replace: bool, make_parent: bool) -> None:
        for attempt in range(_MOVE_ATTEMPTS):
            try:
                if replace:
                    os.rename(src, dst)
                else:
                    self._rename_noreplace(src, dst)
                return
            except FileNotFoundError:
                # ENOENT names neither side. Only a missing parent of dst is ours
                # to fix (never made, or a claimer removed an emptied shard just
                # now): make it and move the same file again.
                if not make_parent or not os.path.lexists(src):
                    raise
                if attempt == _MOVE_ATTEMPTS - 1:
                    # Not FileNotFoundError: callers read that as "someone else
                    # took the file" and could drop a file that is still here.
                    raise OSError(errno.EAGAIN, f"the folder of {dst} keeps disappearing") from None
                with contextlib.suppress(FileNotFoundError):
                    # Removed again between its mkdir and chmod: the next try makes it again.
                    self._make_dir(dst.rpartition("/")[0])

    def _rename_noreplace(self, src: str, dst: str) -> None:
        if self._noreplace and _renameat2 is not None:
            if _renameat2(_AT_FDCWD, _fs(src), _AT_FDCWD, _fs(dst), _RENAME_NOREPLACE) == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise OSError(err, os.strerror(err), dst)
            # NFS, sshfs and older kernels lack the flag: fall back to link(2),
            # which never replaces, and remember so we do not try again.
            self._noreplace = False
        try:
            os.link(src, dst)
        except FileExistsError:
            raise
        except OSError as exc:
            # On NFS a retried LINK can report failure for a link that was made;
            # the truth is whether dst is now the same file as src.
            try:
                if not os.path.samestat(os.stat(src), os.stat(dst)):
                    raise
            except FileNotFoundError:
                raise exc from None
        os.unlink(src)

    @staticmethod
    def _fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, path: str, data: bytes) -> None:
        fd = os.open(self._abs(path), _APPEND_FLAGS, self.file_mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str, *, make_parent: bool = False) -> None:
        if make_parent:
            self._move(self._abs(src), self._abs(dst), replace=True, make_parent=True)
        else:  # the claim's rename: no extra call
            os.rename(self._abs(src), self._abs(dst))

    def remove(self, path: str) -> None:
        os.unlink(self._abs(path))

    def remove_tree(self, path: str) -> None:
        import shutil  # rarely needed, slow to import

        shutil.rmtree(self._abs(path), ignore_errors=True)

    def mkdir(self, path: str) -> None:
        self._make_dir(self._abs(path))

    def _make_dir(self, target: str) -> None:
        try:
            os.mkdir(target, self.dir_mode)
        except FileExistsError:
            return
        except FileNotFoundError:
            os.makedirs(target, self.dir_mode, exist_ok=True)
        if self._chmod:
            os.chmod(target, self.dir_mode)
        if self.durable:  # the new folder's own entry must survive a power loss too
            self._fsync_dir(target.rpartition("/")[0])

    def listdir(self, path: str) -> list[str]:
        return os.listdir(self._abs(path))

    def scan(self, path: str) -> list[tuple[str, bool]]:
        # The kernel's d_type says what each entry is: no stat per name.
        with os.scandir(self._abs(path)) as entries:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]

    def remove_dir(self, path: str) -> None:
        os.rmdir(self._abs(path))

    def stat(self, path: str) -> FileInfo:
        st = os.lstat(self._abs(path))
        return FileInfo(
            size=st.st_size,
            mtime=st.st_mtime,
            ctime=st.st_ctime,
            is_file=stat_mod.S_ISREG(st.st_mode),
            is_dir=stat_mod.S_ISDIR(st.st_mode),
        )

    def exists(self, path: str) -> bool:
        try:
            os.lstat(self._abs(path))
        except FileNotFoundError:
            return False
        return True

    def touch(self, path: str) -> None:
        os.utime(self._abs(path))

    def now(self) -> float:
        # A file created now gets its times from whoever keeps the files (the
        # NFS or SFTP server, else this kernel); the create's reply carries them,
        # so fstat asks nobody again. Not on a per-task path: see Queue._skew.
        tmp = self._new_tmp_name()
        fd = os.open(tmp, _CREATE_FLAGS, self.file_mode)
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            os.unlink(tmp)
