"""Fixtures of the SSH suite: a real sshd on 127.0.0.1 (see tests/ssh_server.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Workers, ship_test_modules_by_value
from ssh_server import Sshd, no_connection_left_open, ssh_opts, sshd

from fs_task_queue import Queue
from fs_task_queue.plugins import SSHQueue

__all__ = ["no_connection_left_open", "sshd"]


@pytest.fixture
def qdir(tmp_path: Path) -> Path:
    return tmp_path / "cluster queue 'q'"  # spaces and quotes travel as names, never through a shell


@pytest.fixture
def local(qdir: Path) -> Queue:
    return Queue(qdir)  # what the cluster side made


#: How each mode is asked for. The helper runs with this interpreter, which has
#: fs-task-queue installed (the sshd's python3 has not): as on a cluster whose
#: workers' environment is not the login shell's default.
MODES = {"sftp": {"helper": False}, "helper": {"helper": True, "remote_python": sys.executable}}


def open_remote(sshd: Sshd, qdir: Path, mode: str) -> SSHQueue:
    queue = SSHQueue(sshd.url(qdir), **ssh_opts(sshd, **MODES[mode]))
    assert queue.storage.mode == mode  # type: ignore[attr-defined]
    return queue


@pytest.fixture(params=list(MODES))
def remote(request: pytest.FixtureRequest, sshd: Sshd, qdir: Path, local: Queue) -> Iterator[SSHQueue]:
    """The queue through SSH, in each mode: pure SFTP, and the remote helper."""
    with open_remote(sshd, qdir, request.param) as queue:
        yield queue


@pytest.fixture
def remote_sftp(sshd: Sshd, qdir: Path, local: Queue) -> Iterator[SSHQueue]:
    with open_remote(sshd, qdir, "sftp") as queue:
        yield queue


@pytest.fixture
def worker(local: Queue, workers: Workers) -> str:
    workers.serve(local, "cluster-worker")
    return "cluster-worker"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Worker processes cannot import the test package: ship task functions by value.
    ship_test_modules_by_value(items, __package__, 120)
