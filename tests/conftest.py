"""Fixtures: a fresh queue per test and real worker processes that are always stopped."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import cloudpickle
import helpers
import pytest
from helpers import Workers

from fs_task_queue import Queue

#: Per-test limit unless a test sets its own ``@pytest.mark.timeout``.
DEFAULT_TIMEOUT = 90

# Worker processes cannot import the test modules: ship their functions by value.
cloudpickle.register_pickle_by_value(helpers)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Only the modules of this folder; sub-suites (tests/fault/...) have their own conftest.
    for item in items:
        if item.path.parent != HERE:
            continue
        module = getattr(item, "module", None)
        if module is not None:
            cloudpickle.register_pickle_by_value(module)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.fixture
def qpath(tmp_path: Path) -> Path:
    """Where the test's queue lives (not created yet)."""
    return tmp_path / "queue"


@pytest.fixture
def queue(qpath: Path) -> Queue:
    return Queue(qpath)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Start worker processes with ``workers.start(path, *args)``; all are stopped after the test."""
    with closing(Workers(tmp_path / "worker-logs")) as procs:
        yield procs


@pytest.fixture
def worker(queue: Queue, workers: Workers) -> str:
    """One long-running worker on ``queue``, registered before the test starts; returns its id."""
    workers.serve(queue, "test-worker")
    return "test-worker"


@pytest.fixture(scope="session")
def other_user() -> Iterator[tuple[str, int, int]]:
    """A real second Unix user ``fsqother``: (name, uid, gid). Needs root (CI runs as root).

    Made with ``useradd`` unless it exists already (an earlier run that was
    killed, or a parallel session), and removed at the end only if made here.
    """
    name = "fsqother"
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the ownership tests need root to create a second user (CI runs as root)")
        pytest.skip("needs root to create a second user")
    made = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        run = subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], capture_output=True, text=True)
        made = run.returncode == 0
        if run.returncode not in (0, 9):  # 9: made meanwhile by someone else
            pytest.fail(f"useradd {name} failed: {run.stderr.strip()}")
    user = pwd.getpwnam(name)
    try:
        yield name, user.pw_uid, user.pw_gid
    finally:
        if made:
            subprocess.run(["userdel", name], check=False, capture_output=True)
