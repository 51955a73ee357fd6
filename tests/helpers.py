"""Shared helpers for the test suite: starting real workers, waiting, and task functions.

Task functions defined here (and in the test modules) are pickled *by value*
(see conftest.py), because worker processes cannot import the test modules.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The three ways to start a worker: the module CLI, the admin CLI's subcommand, the console script.
WORKER_MODULE = [sys.executable, "-m", "fs_task_queue", "worker"]
BIN = Path(sys.executable).parent
WORKER_SCRIPT = [str(BIN / "fs-task-queue-worker")]
ADMIN_SCRIPT = [str(BIN / "fs-task-queue")]

#: Generous: waits end as soon as the condition holds, so this only bounds a failure.
WAIT = 60.0


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def worker_cmd(path: str | os.PathLike[str], *args: str, command: list[str] | None = None) -> list[str]:
    return [*(command or WORKER_MODULE), "--path", os.fspath(path), *args]


def run_burst(
    path: str | os.PathLike[str], *args: str, command: list[str] | None = None, timeout: float = WAIT
) -> subprocess.CompletedProcess[str]:
    """Run one ``--burst`` worker to completion (killed if it outlives ``timeout``); it must exit 0."""
    proc = subprocess.run(
        worker_cmd(path, "--burst", *args, command=command),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"burst worker exited {proc.returncode}:\n{proc.stderr}"
    return proc


class Workers:
    """Worker processes started by one test; :meth:`close` always stops them (SIGTERM, then kill)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.queues: list[Path] = []

    def start(
        self, path: str | os.PathLike[str], *args: str, command: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"worker-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                worker_cmd(path, *args, command=command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.log_dir,
            )
        self.procs.append(proc)
        self.logs.append(log)
        self.queues.append(Path(path))
        return proc

    def serve(self, queue: Any, name: str, path: str | os.PathLike[str] | None = None) -> subprocess.Popen[bytes]:
        """One long-running worker ``name`` on ``path`` (default: ``queue.path``), returned once ``queue`` lists it.

        ``queue`` may be another view of the same queue (an SSHQueue): then its listing is what is waited for.
        """
        args = ("--name", name, "--heartbeat-interval", "0.5", "--max-poll-interval", "0.2")
        proc = self.start(queue.path if path is None else path, *args)
        wait_for(
            lambda: proc.poll() is not None or any(w.id == name for w in queue.workers()),
            what=f"the worker {name} to register",
        )
        assert proc.poll() is None, self.log(proc)
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[self.procs.index(proc)].read_text(errors="replace")

    def wait(self, proc: subprocess.Popen[bytes], timeout: float = WAIT) -> int:
        """Wait for ``proc`` to exit by itself; fail (the fixture kills it) if it does not."""
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {proc.pid} did not exit within {timeout} s:\n{self.log(proc)}") from None

    def wait_all(self, procs: list[subprocess.Popen[bytes]], timeout: float = WAIT) -> None:
        """Wait for ``procs`` to exit by themselves; each must exit 0 (the log of any other is shown)."""
        codes = [self.wait(proc, timeout) for proc in procs]
        bad = [f"worker {p.pid} exited {code}:\n{self.log(p)}" for p, code in zip(procs, codes, strict=True) if code]
        assert not bad, "\n".join(bad)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        # An idle worker notices SIGTERM only at its next poll (seconds); deleting
        # its heartbeat file, the documented way to stop a worker, wakes it at once.
        for proc, path in zip(self.procs, self.queues, strict=True):
            if proc.poll() is None:
                remove_heartbeat(path, proc.pid)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def remove_heartbeat(queue_path: Path, pid: int) -> None:
    """Delete the ``workers/<id>`` file(s) of the worker process ``pid``."""
    folder = queue_path / "workers"
    for entry in folder.glob("*") if folder.is_dir() else ():
        try:
            if json.loads(entry.read_bytes()).get("pid") == pid:
                entry.unlink()
        except (OSError, ValueError, AttributeError):
            continue


# ----------------------------------------------------------------- task functions
def wait_for_file(path: str, timeout: float = WAIT) -> None:
    """Inside a task: block until ``path`` exists."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def create_exclusive(path: str) -> None:
    """Create ``path``; fail if it exists (so a task that runs twice is caught)."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def touch_and_return(path: str, value: Any = None) -> Any:
    create_exclusive(path)
    return value


def divide(a: float, b: float) -> float:
    return a / b


class CountingStorage:
    """A real storage (``inner``) that counts the operations made through it: what a remote storage pays for.

    ``read_many`` counts as a read of each file it is given; with ``batch_as_one`` as one operation (one
    request over the wire).
    """

    def __init__(self, inner: Any, batch_as_one: bool = False) -> None:
        self.inner = inner
        self.location = inner.location
        self.batch_as_one = batch_as_one
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name == "local_path":
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            batch = name == "read_many" and not self.batch_as_one
            self.calls[name] += len(args[0]) if batch else 1
            return attr(*args, **kwargs)

        return counted

    def take(self) -> Counter[str]:
        """The operations counted since the last look, by name; the count starts again."""
        calls, self.calls = self.calls, Counter()
        return calls

    def ops(self) -> int:
        """How many operations since the last look; the count starts again."""
        return sum(self.take().values())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any] | None, grace: float = 10.0) -> None:
    """SIGTERM ``proc``, then SIGKILL it if it has not exited after ``grace`` seconds; reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ship_test_modules_by_value(items: list[Any], package: str, timeout: float) -> None:
    """For ``pytest_collection_modifyitems``: worker processes cannot import the test package, so its modules'
    functions are pickled by value; tests without their own timeout marker get ``timeout`` seconds."""
    import cloudpickle
    import pytest

    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.startswith(package + "."):
            cloudpickle.register_pickle_by_value(sys.modules[module.__name__])
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(timeout))
