"""Fixtures of the notebook-layer tests: a real in-process IPython shell and a queue served by real workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Workers, wait_for

from fs_task_queue import Queue

IPython = pytest.importorskip("IPython", reason="the jupyter extra is not installed: pip install -e '.[test]'")
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets.config import Config  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(90))


def new_shell() -> InteractiveShell:
    """A fresh InteractiveShell with the extension loaded (history in memory: no sqlite in $HOME)."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "fs_task_queue.jupyter")
    return ip


def close_shell(ip: InteractiveShell) -> None:
    ip.run_line_magic("unload_ext", "fs_task_queue.jupyter")
    InteractiveShell.clear_instance()


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
    proc = workers.start(qpath, "--name", "w1", "--heartbeat-interval", "0.5", "--max-poll-interval", "0.2")
    wait_for(lambda: proc.poll() is not None or any(w.id == "w1" for w in queue.workers()), what="the worker")
    assert proc.poll() is None, workers.log(proc)
    return queue


@pytest.fixture
def nb(shell: InteractiveShell, served: Queue) -> InteractiveShell:
    """The shell with ``%fsq use`` on the served queue."""
    shell.run_line_magic("fsq", f"use {served.path}")
    return shell
