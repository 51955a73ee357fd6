"""Fixtures of the SSH suite: a real sshd on 127.0.0.1 (see tests/ssh_server.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import cloudpickle
import pytest
from ssh_server import sshd

__all__ = ["sshd"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Worker processes cannot import the test package: ship task functions by value.
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.startswith(__package__ + "."):
            cloudpickle.register_pickle_by_value(sys.modules[module.__name__])
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(120))


@pytest.fixture(autouse=True)
def no_connection_left_open() -> Iterator[None]:
    """Every SSH connection a test (or a failed open) made is closed when it ends: none leaks a thread."""
    yield
    import threading

    import paramiko

    left = [t for t in threading.enumerate() if isinstance(t, paramiko.Transport)]
    assert not left, f"{len(left)} SSH connection(s) left open (or their threads still running)"
