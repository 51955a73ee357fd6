"""``python -m fs_task_queue serve-stdio PATH``: the remote end of SSHQueue's helper mode.

``SSHQueue`` starts this on the cluster over one SSH exec channel (the argv is
``shlex.join`` of fixed words and the queue's path, never a shell string built
from other input). It speaks newline-delimited JSON on stdin/stdout:

- first it writes a hello: ``{"hello": "fs-task-queue-helper", "protocol": N,
  "version": "...", "format": N, "python": "3.11", "pid": N}``; the client
  refuses a helper of another protocol or on-disk format version;
- each request ``{"id": N, "op": NAME, ...arguments}`` gets one reply
  ``{"id": N, "ok": RESULT}`` or ``{"id": N, "error": {...}}`` (an ``OSError``'s
  errno, text and file name, or a ``ValueError``), in request order; bytes travel
  as base64;
- a watcher pushes ``{"push": "results", "names": [...]}`` when outcomes appear in
  ``results/`` (inotify where the filesystem gives it, else a listing on a short
  backoff), so a waiting client learns of a finished job within about half a
  round trip instead of at its next poll.

The operations are those of :class:`~fs_task_queue.storage.local.LocalStorage`
that a client makes in bulk (reads, looks, listings, publishes); everything is
done through LocalStorage, with its symlink and atomicity guarantees. It ends
when its stdin closes: when the SSH connection drops, sshd closes the channel.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import IO, Any

from fs_task_queue import layout
from fs_task_queue._version import __version__
from fs_task_queue.errors import SymlinkInQueueError
from fs_task_queue.serialize import python_version
from fs_task_queue.storage.local import LocalStorage

__all__ = ["PROTOCOL", "serve"]

#: The request language's version: a client and a helper must speak the same one.
PROTOCOL = 1


def _format_version() -> int:
    from fs_task_queue.queue import FORMAT_VERSION

    return FORMAT_VERSION


def encode_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, OSError):
        return {
            "type": "SymlinkInQueueError" if isinstance(exc, SymlinkInQueueError) else "OSError",
            "errno": exc.errno,
            "strerror": exc.strerror or str(exc),
            "filename": exc.filename if isinstance(exc.filename, str) else None,
        }
    return {"type": "ValueError", "message": str(exc)}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Server:
    def __init__(self, storage: LocalStorage, out: IO[bytes]) -> None:
        self.storage = storage
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()

    # -- operations: each returns what goes into "ok"
    def op_read_many(self, paths: list[str]) -> dict[str, Any]:
        return {
            path: {"error": encode_error(got)} if isinstance(got, OSError) else {"data": _b64(got)}
            for path, got in self.storage.read_many(paths).items()
        }

    def op_read_from(self, path: str, offset: int) -> str:
        return _b64(self.storage.read_from(path, offset))

    def op_stat_many(self, paths: list[str]) -> list[dict[str, Any] | None]:
        return [None if info is None else asdict(info) for info in self.storage.stat_many(paths)]

    def op_scan(self, path: str) -> list[tuple[str, bool]]:
        return self.storage.scan(path)

    def op_publish(self, path: str, data: str, replace: bool, make_parent: bool, sync: bool) -> None:
        self.storage.publish(path, base64.b64decode(data), replace=replace, make_parent=make_parent, sync=sync)

    def op_publish_many(self, items: list[tuple[str, str]], replace: bool, make_parent: bool) -> list[Any]:
        decoded = [(path, base64.b64decode(data)) for path, data in items]
        errors = self.storage.publish_many(decoded, replace=replace, make_parent=make_parent)
        return [None if error is None else encode_error(error) for error in errors]

    def handle(self, line: bytes) -> None:
        number = None
        try:
            request = json.loads(line)
            number = request.pop("id")
            op: Callable[..., Any] = getattr(self, "op_" + str(request.pop("op")))
            result = op(**request)
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            self.send({"id": number, "error": encode_error(exc)})
            return
        self.send({"id": number, "ok": result})

    def watch_results(self, stop: threading.Event) -> None:
        """Push the names that appear in ``results/`` until ``stop`` is set."""
        storage = self.storage

        def listing() -> set[str]:
            try:
                return set(storage.listdir(layout.RESULTS))
            except OSError:
                return set()

        watcher = storage.watcher(layout.RESULTS)
        watcher.min_interval = 0.005  # without notifications (NFS): a local listing is cheap
        seen = listing()
        while not stop.is_set():
            changed = watcher.wait(0.5)
            if changed is None:
                names = listing()
                new, seen = names - seen, names
            else:
                new = {n for n in changed if n and not n.startswith(".")}
                seen |= new
            if new:
                watcher.reset()
                self.send({"push": "results", "names": sorted(new)})


def serve(path: str, stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> int:
    """Serve the queue at ``path`` on stdin/stdout until stdin closes; the exit code."""
    inp = stdin or sys.stdin.buffer
    out = stdout or sys.stdout.buffer
    storage = LocalStorage(path)
    server = _Server(storage, out)
    hello: dict[str, Any] = {
        "hello": "fs-task-queue-helper",
        "protocol": PROTOCOL,
        "version": __version__,
        "format": _format_version(),
        "python": python_version(),
        "pid": os.getpid(),
    }
    if not os.path.isdir(path):
        hello["error"] = f"{path} is not a directory"
    server.send(hello)
    if "error" in hello:
        return 1
    stop = threading.Event()
    threading.Thread(target=server.watch_results, args=(stop,), name="fsq-helper-watch", daemon=True).start()
    try:
        for line in inp:
            if line.strip():
                server.handle(line)
    except (BrokenPipeError, ConnectionError):
        pass  # the client went away: nothing to answer
    finally:
        stop.set()
        storage.close()
    return 0
