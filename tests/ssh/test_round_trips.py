"""Round trips (counted by the storage) of the three operations issue #14 sets latency targets for, over pure SFTP.

At 20 ms a round trip, these counts are what keeps opening a queue under
0.25 s, 1,000 submissions under 0.5 s and a status poll of 1,000 jobs under
0.15 s (benchmarks/ssh.py measures the times; a test must not).
"""

from __future__ import annotations

import operator
from pathlib import Path

from ssh_server import Sshd, ssh_opts

from fs_task_queue import JobStatus, Queue, layout
from fs_task_queue.plugins import SSHQueue


def _open(sshd: Sshd, qdir: Path) -> SSHQueue:
    return SSHQueue(sshd.url(qdir), **ssh_opts(sshd, helper=False))


def test_opening_a_queue_is_three_round_trips_after_login(sshd: Sshd, qdir: Path, local: Queue) -> None:
    queue = _open(sshd, qdir)
    try:
        # One flight: the root, the trust check's looks and who we are; one to open
        # the format file and key, one to read them. (One call after another: 7+.)
        assert queue.storage.counts.round_trips == 3  # type: ignore[attr-defined]
        # What the opening flight fetched is served once: later calls ask the server.
        before = queue.storage.counts.round_trips  # type: ignore[attr-defined]
        assert queue.storage.read(layout.FORMAT_FILE) == local.storage.read(layout.FORMAT_FILE)
        assert queue.storage.counts.round_trips > before  # type: ignore[attr-defined]
    finally:
        queue.close()


def test_a_foreign_key_is_still_refused_when_opened_in_one_flight(sshd: Sshd, qdir: Path, local: Queue) -> None:
    # The trust check now uses the uid learned from a folder made in tmp/: it must still see a key readable by others.
    (qdir / "key").chmod(0o644)
    try:
        _open(sshd, qdir).close()
    except Exception as exc:
        assert "key" in str(exc)
    else:
        raise AssertionError("a key readable by others was trusted")


def test_map_of_1000_is_a_few_round_trips(sshd: Sshd, qdir: Path, local: Queue) -> None:
    queue = _open(sshd, qdir)
    try:
        counts = queue.storage.counts  # type: ignore[attr-defined]
        before = counts.round_trips
        group = queue.map(operator.pos, range(1000))
        assert len(group) == 1000 and local.stats()["queued"] == 1000
        # One batch (open, write, rename) and the clock probe (2): not 3 per 256 tasks (12+).
        assert counts.round_trips - before <= 6
    finally:
        queue.close()


def test_status_poll_of_1000_queued_is_a_few_round_trips(sshd: Sshd, qdir: Path, local: Queue) -> None:
    queue = _open(sshd, qdir)
    try:
        group = queue.map(operator.pos, range(1000))
        counts = queue.storage.counts  # type: ignore[attr-defined]
        before = counts.round_trips
        states = queue.snapshot(group)
        assert {s.status for s in states.values()} == {JobStatus.QUEUED} and len(states) == 1000
        assert counts.round_trips - before <= 6  # two listings (a folder look, open, read; closes ride along)
        before = counts.round_trips
        queue.snapshot(group)
        assert counts.round_trips - before <= 4  # folders known: open and read each (was 6)
    finally:
        queue.close()
