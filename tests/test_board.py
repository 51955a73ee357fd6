"""The shared-memory board a task process posts its state on (read by its worker process)."""

from __future__ import annotations

import os
import time

from fs_task_queue.board import _BODY, _BODY_AT, _SEQ, COMMITTING, IDLE, RUNNING, Board


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
        board._map[0:_BODY_AT] = _SEQ.pack(7)
        board._map[_BODY_AT : _BODY_AT + _BODY.size] = _BODY.pack(RUNNING, 3, 1.0, 0.0, len(raw), raw)
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


def _hammer(board: Board, seconds: float) -> int:
    """Fork a process that writes the board as fast as it can for ``seconds``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the writer
        code = 1
        try:
            end, i = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                i += 1
                board.stamp()
                board.running(f"task-{i:09d}", None)
                board.idle(finished=True)
            code = 0
        finally:
            os._exit(code)
    return pid


def test_a_reader_racing_a_writer_never_sees_a_torn_post_or_stamp():
    # Found by this test: struct.pack_into zeroes its target before writing, so
    # the task process could read a stamp of 0 ("silent since boot") or a zero
    # sequence number with a half-written post from the worker process.
    board = Board()
    board.stamp()
    pid = _hammer(board, 1.5)
    reads = bad_posts = bad_stamps = 0
    try:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            reads += 1
            post = board.read()
            if post.state == RUNNING:
                bad_posts += not post.name.startswith("task-") or post.started is None
            else:
                bad_posts += post.state != IDLE or post.name != ""
            bad_posts += post.seq % 2
            bad_stamps += board.supervisor_silence() > 1.0
    finally:
        _, status = os.waitpid(pid, 0)
        board.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert reads > 1000
    assert (bad_posts, bad_stamps) == (0, 0), f"{bad_posts} torn posts, {bad_stamps} torn stamps in {reads} reads"
