"""Remote helper mode: SFTPStorage whose bulk operations go to ``fs-task-queue serve-stdio`` on the cluster.

Where the cluster has fs-task-queue installed (it has, wherever workers run),
one SSH exec channel runs ``<remote_python> -m fs_task_queue serve-stdio <root>``
(``shlex.join`` of fixed words and the queue's path: no shell string is built
from other input). Requests are newline-delimited JSON written by the calling
threads under one lock; one reader thread matches replies to requests by id and
hands pushes (new outcomes in ``results/``) to waiting watchers. A batch of
1,000 submissions, a status listing or a set of reads is then one round trip,
and a wait learns of a finished job from the push instead of at its next poll.

It is chosen automatically: the helper is started in the background at the
first connection, and used once it has said hello with the same protocol and
on-disk format version; until then, and if it cannot start (no fs-task-queue
there, another version, an account that cannot run commands), everything goes
over SFTP as before, and a log line says which is in use (:attr:`HelperStorage.mode`).
``helper=True`` requires it (an error naming the reason), ``helper=False``
never starts it. Operations it does not serve (rename, remove, touch...) stay on
SFTP; each call completes before the next starts, so their order is kept.

A helper that dies (the connection dropped) is started again with the next
connection; interrupted reads are repeated over SFTP, and an interrupted batch
publish is finished over SFTP the way a cut SFTP one is (a target already
holding its data counts as published: no duplicate, no partial).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import shlex
import threading
import weakref
from typing import Any

from fs_task_queue.errors import QueueError, SymlinkInQueueError
from fs_task_queue.serve_stdio import PROTOCOL
from fs_task_queue.storage import FileInfo
from fs_task_queue.storage.sftp import RequestCounts, SFTPStorage, _Pipe
from fs_task_queue.watch import DirWatcher

__all__ = ["HelperStorage"]

log = logging.getLogger("fs_task_queue.ssh")

#: Tasks per publish request: several requests stream while the helper works on the first.
_PUBLISH_CHUNK = 128


class _Gone(Exception):
    """The helper's channel closed (the connection dropped, or the helper exited)."""


class _Call:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: dict[str, Any] | None = None


def _decode_error(error: dict[str, Any]) -> Exception:
    kind = error.get("type")
    if kind == "ValueError":
        return ValueError(error.get("message", "bad request"))
    filename = error.get("filename")
    if kind == "SymlinkInQueueError" and filename:
        return SymlinkInQueueError(filename)
    # OSError(errno, ...) builds the matching subclass (FileNotFoundError for ENOENT...).
    return OSError(error.get("errno") or 0, error.get("strerror") or "error", filename)


class _Helper:
    """One running helper: its channel, the requests waiting for replies, and the reader thread."""

    def __init__(self, channel: Any, on_push: Any, counts: RequestCounts) -> None:
        self.channel = channel
        #: Shared with the storage's SFTP counts: requests sent, waits for replies.
        self.counts = counts
        self._on_push = on_push
        self._lock = threading.Lock()
        self._next = 0
        self._pending: dict[int, _Call] = {}
        self.dead: BaseException | None = None
        self._file = channel.makefile("rb")
        self.hello: dict[str, Any] = {}

    def read_hello(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise _Gone("it exited before saying hello")
        try:
            hello = json.loads(line)
        except ValueError:
            raise _Gone(f"it said {line[:200]!r}, not a helper's hello") from None
        if not isinstance(hello, dict) or hello.get("hello") != "fs-task-queue-helper":
            raise _Gone(f"it said {line[:200]!r}, not a helper's hello")
        self.hello = hello
        return hello

    def start_reading(self) -> None:
        threading.Thread(target=self._read, name="fsq-ssh-helper", daemon=True).start()

    def _read(self) -> None:
        reason: BaseException = _Gone("the helper closed its output")
        try:
            for line in self._file:
                message = json.loads(line)
                if "push" in message:
                    self._on_push(message)
                    continue
                call = self._pending.pop(message.get("id"), None)
                if call is not None:
                    call.reply = message
                    call.event.set()
        except Exception as exc:  # the channel broke: every waiting caller is told
            reason = exc
        self.dead = reason
        for call in list(self._pending.values()):
            call.event.set()
        self._pending.clear()

    def send(self, op: str, **args: Any) -> _Call:
        call = _Call()
        with self._lock:
            if self.dead is not None:
                raise _Gone(str(self.dead))
            self._next += 1
            self._pending[self._next] = call
            line = json.dumps({"id": self._next, "op": op, **args}, separators=(",", ":")).encode() + b"\n"
            self.counts.requests += 1
            try:
                self.channel.sendall(line)
            except Exception as exc:
                self._pending.pop(self._next, None)
                raise _Gone(str(exc)) from None
        return call

    def result(self, call: _Call) -> Any:
        if not call.event.is_set():
            self.counts.round_trips += 1
        call.event.wait()
        reply = call.reply
        if reply is None:
            raise _Gone(str(self.dead))
        if "error" in reply:
            raise _decode_error(reply["error"])
        return reply.get("ok")

    def call(self, op: str, **args: Any) -> Any:
        return self.result(self.send(op, **args))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()


def _info(record: dict[str, Any]) -> FileInfo:
    return FileInfo(**record)


class HelperStorage(SFTPStorage):
    """SFTPStorage that hands bulk reads, listings and publishes to a helper process on the remote host."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._helper: _Helper | None = None
        self._helper_lock = threading.Lock()
        self._started_for = 0  # the connection (its number) a helper was last started on
        self._settled = threading.Event()
        self._why_not: str | None = None
        self._watchers: weakref.WeakSet[DirWatcher] = weakref.WeakSet()

    def __getstate__(self) -> dict[str, Any]:
        return super().__getstate__()

    # -------------------------------------------------------------- the helper
    @property
    def mode(self) -> str:
        """``"helper"`` when the remote helper serves the bulk operations, else ``"sftp"``."""
        self._ensure_helper()
        self._settled.wait()
        return "helper" if self._live() is not None else "sftp"

    @property
    def why_not_helper(self) -> str | None:
        """Why the helper is not in use (None when it is, or has not been tried)."""
        return self._why_not

    def _live(self) -> _Helper | None:
        helper = self._helper
        return helper if helper is not None and helper.dead is None else None

    def _ensure_helper(self) -> None:
        """Start the helper (in the background) on the current connection, once per connection."""
        if self.options.helper is False:
            self._why_not = "helper=False"
            self._settled.set()
            return
        if self._root is None:
            _ = self.root  # connects
        with self._helper_lock:
            connects = self._conn.connects
            if self._started_for == connects:
                return
            self._started_for = connects
            self._settled.clear()
        thread = threading.Thread(target=self._start, name="fsq-ssh-helper-start", daemon=True)
        thread.start()
        if self.options.helper:
            self._settled.wait()
            if self._live() is None:
                raise QueueError(
                    f"the remote helper (helper=True) cannot serve {self.location}: {self._why_not}. Install the"
                    " same fs-task-queue there (pip install fs-task-queue, or point remote_python= at the"
                    " interpreter that has it), or leave helper unset to fall back to pure SFTP"
                )

    def _start(self) -> None:
        helper: _Helper | None = None
        try:
            clients = self._conn._clients
            if not clients:
                raise _Gone("not connected")
            transport = clients[-1].get_transport()
            channel = transport.open_session(timeout=self.options.timeout)
            command = shlex.join([self._python, "-m", "fs_task_queue", "serve-stdio", self.root])
            channel.exec_command(command)
            helper = _Helper(channel, self._pushed, self.counts)
            channel.settimeout(self.options.timeout)
            try:
                hello = helper.read_hello()
            except (_Gone, OSError) as exc:
                err = b""
                with contextlib.suppress(Exception):
                    channel.status_event.wait(self.options.timeout)  # exited: its stderr is all there
                    while channel.recv_stderr_ready():
                        err += channel.recv_stderr(4096)
                detail = err.decode("utf-8", "replace").strip().splitlines()
                raise _Gone(f"{self._python} -m fs_task_queue failed there ({detail[-1] if detail else exc})") from None
            channel.settimeout(None)
            self._check_hello(hello)
            helper.start_reading()
            self._helper = helper
            self._why_not = None
            log.info(
                "%s: using the remote helper (fs-task-queue %s, Python %s, pid %s)",
                self.location,
                hello.get("version"),
                hello.get("python"),
                hello.get("pid"),
            )
        except Exception as exc:
            if helper is not None:
                helper.close()
            self._why_not = str(exc)
            log.log(
                logging.WARNING if self.options.helper else logging.INFO,
                "%s: using pure SFTP: the remote helper is not available (%s)",
                self.location,
                exc,
            )
        finally:
            self._settled.set()

    def _check_hello(self, hello: dict[str, Any]) -> None:
        from fs_task_queue._version import __version__
        from fs_task_queue.queue import FORMAT_VERSION

        if "error" in hello:
            raise _Gone(f"the helper says: {hello['error']}")
        if hello.get("protocol") != PROTOCOL or hello.get("format") != FORMAT_VERSION:
            raise _Gone(
                f"its fs-task-queue is version {hello.get('version')} (helper protocol {hello.get('protocol')},"
                f" queue format {hello.get('format')}), this one is {__version__} (protocol {PROTOCOL}, format"
                f" {FORMAT_VERSION}): install the same version on both sides to use it"
            )

    def _pushed(self, message: dict[str, Any]) -> None:
        if message.get("push") == "results":
            for watcher in list(self._watchers):
                watcher.interrupt()

    def _use(self) -> _Helper | None:
        """The helper if it is serving now (never waits for one being started, unless it is required)."""
        self._ensure_helper()
        return self._live()

    def _lost(self, exc: BaseException) -> None:
        log.warning("%s: the remote helper went away (%s); going on over SFTP", self.location, exc)
        self._why_not = f"it went away ({exc})"
        with self._conn.lock:
            self._conn.drop()  # the connection is likely gone too: the next call makes it again

    def close(self) -> None:
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.close()
        self._started_for = 0
        super().close()

    # -------------------------------------------------------------- served operations
    def watcher(self, directory: str, *, nested: bool = False) -> DirWatcher:
        # Polls as over SFTP, and wakes at once when the helper pushes a new outcome.
        watcher = DirWatcher([None], min_interval=0.01, max_interval=1.0)
        self._watchers.add(watcher)
        return watcher

    def read_many(self, paths: list[str]) -> dict[str, bytes | OSError]:
        helper = self._use()
        if helper is not None and paths:
            try:
                got = helper.call("read_many", paths=list(dict.fromkeys(paths)))
                out: dict[str, bytes | OSError] = {}
                for path, entry in got.items():
                    if "error" in entry:
                        error = _decode_error(entry["error"])
                        if not isinstance(error, OSError):
                            raise error
                        out[path] = error
                    else:
                        out[path] = base64.b64decode(entry["data"])
                return out
            except _Gone as exc:
                self._lost(exc)
        return super().read_many(paths)

    def read_from(self, path: str, offset: int) -> bytes:
        helper = self._use()
        if helper is not None:
            try:
                return base64.b64decode(helper.call("read_from", path=path, offset=offset))
            except _Gone as exc:
                self._lost(exc)
        return super().read_from(path, offset)

    def stat_many(self, paths: list[str]) -> list[FileInfo | None]:
        helper = self._use()
        if helper is not None:
            try:
                return [None if r is None else _info(r) for r in helper.call("stat_many", paths=paths)]
            except _Gone as exc:
                self._lost(exc)
        return super().stat_many(paths)

    def scan(self, path: str) -> list[tuple[str, bool]]:
        helper = self._use()
        if helper is not None:
            try:
                return [(str(name), bool(is_dir)) for name, is_dir in helper.call("scan", path=path)]
            except _Gone as exc:
                self._lost(exc)
        return super().scan(path)

    def publish(self, path: str, data: bytes, *, replace: bool, make_parent: bool = False, sync: bool = False) -> None:
        helper = self._use()
        if helper is not None:
            try:
                helper.call(
                    "publish",
                    path=path,
                    data=base64.b64encode(data).decode("ascii"),
                    replace=replace,
                    make_parent=make_parent,
                    sync=sync,
                )
                return
            except _Gone as exc:
                self._lost(exc)
                errors = self._finish_over_sftp([(path, data)], replace, make_parent)
                if errors[0] is not None:
                    raise errors[0] from None
                return
        super().publish(path, data, replace=replace, make_parent=make_parent, sync=sync)

    def publish_many(
        self, items: list[tuple[str, bytes]], *, replace: bool = False, make_parent: bool = False
    ) -> list[OSError | None]:
        helper = self._use()
        if helper is None or not items:
            return super().publish_many(items, replace=replace, make_parent=make_parent)
        chunks = [items[at : at + _PUBLISH_CHUNK] for at in range(0, len(items), _PUBLISH_CHUNK)]
        try:
            # Every request is sent before the first reply is awaited: one round trip for all.
            calls = [
                helper.send(
                    "publish_many",
                    items=[(p, base64.b64encode(d).decode("ascii")) for p, d in chunk],
                    replace=replace,
                    make_parent=make_parent,
                )
                for chunk in chunks
            ]
            out: list[OSError | None] = []
            for call in calls:
                for error in helper.result(call):
                    decoded = None if error is None else _decode_error(error)
                    out.append(decoded if decoded is None or isinstance(decoded, OSError) else OSError(str(decoded)))
            return out
        except _Gone as exc:
            self._lost(exc)
            return self._finish_over_sftp(items, replace, make_parent)

    def _finish_over_sftp(
        self, items: list[tuple[str, bytes]], replace: bool, make_parent: bool
    ) -> list[OSError | None]:
        """Publish over SFTP what a broken helper may have published in part: as a resumed SFTP batch."""
        out: list[OSError | None] = []
        for at in range(0, len(items), 512):
            batch = items[at : at + 512]
            op = functools.partial(self._resumed_batch, items=batch, replace=replace, make_parent=make_parent)
            out += self._io(op)
        return out

    def _resumed_batch(
        self, pipe: _Pipe, items: list[tuple[str, bytes]], replace: bool, make_parent: bool
    ) -> list[OSError | None]:
        return self._publish_batch(pipe, items, replace, make_parent, resumed=True)
