"""The shared-memory board a task process posts its state on (read by its worker process)."""

from __future__ import annotations

import os
import time

from fs_task_queue.board import _FIELDS, COMMITTING, IDLE, RUNNING, Board


def test_posts_are_seen_through_another_mapping():
    board = Board()
    seen = Board.attach(os.dup(board.fileno()))  # as the task process maps it
    try:
        seen.running("20260101-000000-000000-abcdef", deadline=123.5)
        post = board.read()
        assert (post.state, post.name, post.deadline, post.done) == (RUNNING, "20260101-000000-000000-abcdef", 123.5, 0)
        assert post.started is not None and abs(post.started - time.time()) < 5
        seen.committing("20260101-000000-000000-abcdef")
        assert board.read().state == COMMITTING
        seen.idle(finished=True)
        post = board.read()
        assert (post.state, post.name, post.done) == (IDLE, "", 1)
        assert post.seq % 2 == 0
    finally:
        seen.close()
        board.close()


def test_a_writer_that_died_mid_post_does_not_hang_the_reader():
    board = Board()
    try:
        # The first store of a post, without the closing sequence bump.
        raw = b"20260101-000000-000000-abcdef"
        _FIELDS.pack_into(board._map, 0, 7, RUNNING, 3, 1.0, 0.0, len(raw), raw)
        t = time.monotonic()
        post = board.read()
        assert time.monotonic() - t < 1.0
        assert (post.state, post.name, post.done) == (RUNNING, raw.decode(), 3)
    finally:
        board.close()


def test_supervisor_silence_is_long_until_stamped():
    board = Board()
    try:
        never = board.supervisor_silence()  # no stamp yet: as long as the machine's uptime
        board.stamp()
        assert board.supervisor_silence() < 1.0 < never
    finally:
        board.close()
