"""Fixtures of the notebook-layer tests: a real in-process IPython shell and a queue served by real workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from helpers import Workers

from fs_task_queue import Queue

if os.environ.get("CI"):
    import IPython  # CI installs the test extra: a missing IPython fails, never skips
else:
    IPython = pytest.importorskip("IPython", reason="the jupyter extra is not installed: pip install -e '.[test]'")
from fsq_shell import close_shell, new_shell
from IPython.core.interactiveshell import InteractiveShell

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and Path(module.__file__ or "").parent == HERE:
            # Worker processes cannot import the test modules: ship their functions by value.
            cloudpickle.register_pickle_by_value(module)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(90))


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("FSQ_NOTEBOOK", "test-nb")
    ip = new_shell()
    try:
        yield ip
    finally:
        close_shell(ip)


@pytest.fixture
def served(qpath: Path, workers: Workers) -> Queue:
    """A queue with one idle worker registered."""
    queue = Queue(qpath)
    workers.serve(queue, "w1")
    return queue


@pytest.fixture
def nb(shell: InteractiveShell, served: Queue) -> InteractiveShell:
    """The shell with ``%fsq use`` on the served queue."""
    shell.run_line_magic("fsq", f"use {served.path}")
    return shell
