"""Fixtures of the fault-injection suite: a queue with counters, real processes, a real sshd.

Every fixture stops what it starts (processes: SIGTERM then SIGKILL of their
process group, then wait; mounts: unmounted; counters: closed). The fault
table collected by the tests is printed at the end of the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from fs_task_queue import Queue

from . import faultlib
from .faultlib import CommitCounter, Procs, Tally, executions, mark, record, registered, tally, wait_for

# Worker processes cannot import the test package: ship task functions by value.
cloudpickle.register_pickle_by_value(faultlib)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.startswith(__package__ + "."):
            cloudpickle.register_pickle_by_value(module)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not faultlib.ROWS:
        return
    terminalreporter.section("fault table (Jepsen-style counts after draining each queue)")
    for line in faultlib.format_table().splitlines():
        terminalreporter.write_line(line)
    if faultlib.NOTES:
        terminalreporter.write_line("")
        for note in faultlib.NOTES:
            terminalreporter.write_line(note)


@dataclass
class Lab:
    """One queue under test, its side-effect folder, its commit counter and its processes."""

    path: Path
    queue: Queue
    fx: Path
    commits: CommitCounter
    procs: Procs

    def worker(self, name: str, *args: str, env: dict[str, str] | None = None) -> Any:
        return self.procs.worker(self.path, name, *args, env=env)

    def registered_worker(self, name: str, *args: str, env: dict[str, str] | None = None) -> Any:
        """:meth:`worker`, returned once it has registered (its ``workers/<name>`` record exists)."""
        proc = self.worker(name, *args, env=env)
        wait_for(lambda: registered(self.path, name), what=f"the worker {name} to register")
        return proc

    def running(self, key: str, **kwargs: Any) -> Any:
        """Enqueue ``mark(fx, key, end=True, **kwargs)`` and return its job once the task has started."""
        job = self.queue.enqueue(mark, str(self.fx), key, end=True, **kwargs)
        wait_for(lambda: executions(self.fx)[key] == 1, what=f"the task {key} to start")
        return job

    def tally(self, name: str, jobs: dict[str, Any], note: str = "") -> Tally:
        """Count (and record in the fault table) lost / re-executed / re-committed jobs."""
        result = tally(name, jobs, self.fx, self.commits.snapshot(), self.path / "results")
        result.note = note
        return record(result)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with closing(Procs(tmp_path / "logs")) as p:
        yield p


@pytest.fixture
def lab_path(tmp_path: Path) -> Path:
    """Where ``lab``'s queue lives; a module overrides it to put the queue elsewhere (test_disk_full: a tmpfs)."""
    return tmp_path / "q"


@pytest.fixture
def lab(tmp_path: Path, lab_path: Path, procs: Procs) -> Iterator[Lab]:
    path = lab_path
    queue = Queue(path)
    fx = tmp_path / "fx"
    fx.mkdir()
    commits = CommitCounter(path / "results")
    try:
        yield Lab(path, queue, fx, commits, procs)
    finally:
        procs.close()  # processes first: they may still commit
        commits.close()


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ssh_server import Sshd
    from sshfs_helpers import require_ssh_tools

    require_ssh_tools()
    with Sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def mounts(tmp_path: Path, ssh_server: Any) -> Iterator[Any]:
    """``mounts(remote_dir, name)`` mounts ``remote_dir`` with sshfs; all are unmounted after the test."""
    from sshfs_helpers import SshfsMount

    made: list[SshfsMount] = []

    def mount(remote_dir: Path, name: str) -> Path:
        m = SshfsMount(ssh_server, remote_dir, tmp_path / "mnt" / name)
        made.append(m)
        mount.handles[name] = m  # type: ignore[attr-defined]
        m.mount()
        return m.mountpoint

    mount.handles = {}  # type: ignore[attr-defined]
    try:
        yield mount
    finally:
        for m in reversed(made):
            m.unmount()
