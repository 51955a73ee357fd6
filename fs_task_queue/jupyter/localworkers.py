"""``%fsq workers N``: worker processes on this machine, for trying a queue from a notebook.

They are started with ``--parent-pid`` (they stop when the kernel ends, even
if it is killed) and stopped by an ``atexit`` handler when it exits normally.
Their logs go to a temporary folder, shown when one fails to start.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fs_task_queue.errors import WorkerError
from fs_task_queue.queue import Queue

__all__ = ["LocalWorkers"]

#: How long a started worker may take to register, and a stopped one to exit (seconds).
START_TIMEOUT = 30.0
STOP_GRACE = 10.0


class LocalWorkers:
    """Worker processes serving ``queue``, started by this process."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = Path(tempfile.gettempdir()) / f"fsq-workers-{os.getpid()}"
        self._serial = 0
        self._names_by_pid: dict[int, str] = {}
        atexit.register(self.stop)

    def scale(self, n: int) -> list[str]:
        """Run exactly ``n`` workers (starting or stopping some); their ids."""
        if n < 0:
            raise ValueError(f"the number of workers must be >= 0, got {n}")
        self.procs = [p for p in self.procs if p.poll() is None]
        while len(self.procs) > n:
            self._stop_one(self.procs.pop())
        started = [self._start() for _ in range(n - len(self.procs))]
        self._await_registered(started)
        return [self._name_of(p) for p in self.procs]

    def _name_of(self, proc: subprocess.Popen[bytes]) -> str:
        return self._names_by_pid[proc.pid]

    def _start(self) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"nb-{os.getpid()}-{self._serial}"
        self._serial += 1
        log = self.log_dir / f"{name}.log"
        cmd = [sys.executable, "-m", "fs_task_queue", "worker", "--path", self.queue.path, "--name", name]
        cmd += ["--parent-pid", str(os.getpid())]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        self._names_by_pid[proc.pid] = name
        return proc

    def _await_registered(self, procs: list[subprocess.Popen[bytes]]) -> None:
        wanted = {self._name_of(p): p for p in procs}
        deadline = time.monotonic() + START_TIMEOUT
        while wanted:
            registered = {w.id for w in self.queue.workers()}
            for name in [n for n in wanted if n in registered]:
                del wanted[name]
            for name, proc in list(wanted.items()):
                if proc.poll() is not None:
                    raise WorkerError(
                        f"local worker {name} exited with code {proc.returncode} before it started:\n" + self.log(name)
                    )
            if wanted and time.monotonic() > deadline:
                raise WorkerError(f"local workers {', '.join(wanted)} did not register in {START_TIMEOUT} s")
            time.sleep(0.02)

    def log(self, name: str) -> str:
        """The log of worker ``name``."""
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def _stop_one(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop every worker started here (SIGTERM; SIGKILL after the grace period)."""
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            self._stop_one(proc)

    @property
    def count(self) -> int:
        return sum(1 for p in self.procs if p.poll() is None)
