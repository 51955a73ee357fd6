"""Submitters whose clocks disagree with the workers', and movers racing idle workers that remove shards.

A submitter's clock is shifted by passing a time source (``Queue(clock=...)``),
never by changing the machine's clock. Shards are removed by real idle worker
processes; where a race must be lost every time, a LocalStorage subclass stands
in for the racing process and removes each shard right after it is made.
"""

from __future__ import annotations

import errno
import operator
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fs_task_queue import Queue, QueueError, layout
from fs_task_queue import queue as queue_module
from fs_task_queue import shards as shards_module
from fs_task_queue.ids import new_order_key
from fs_task_queue.queue import Claimer
from fs_task_queue.shards import move_to_queued
from fs_task_queue.storage.local import LocalStorage

from . import faultlib
from .faultlib import mark, wait_for

TESTS = Path(__file__).resolve().parents[1]

# A submitter process: one task per line read ("<key> <sleep>"), answering "ok <job id>" or
# "error <type>: <message>", so the test alternates two submitters strictly and knows the real order.
SUBMITTER = r"""
import sys, time
sys.path[:0] = [sys.argv[4], sys.argv[4] + "/fault"]
import cloudpickle
import faultlib
cloudpickle.register_pickle_by_value(faultlib)
from fs_task_queue import Queue

shift = float(sys.argv[2])
queue = Queue(sys.argv[1], clock=lambda: time.time() + shift)
print("ready", flush=True)
for line in sys.stdin:
    key, sleep = line.split()
    try:
        job = queue.enqueue(faultlib.mark, sys.argv[3], key, sleep=float(sleep))
        print("ok", job.id, flush=True)
    except BaseException as exc:
        print("error", f"{type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
"""


class Submitter:
    """A real process that submits to ``path`` with its clock shifted by ``shift`` seconds."""

    def __init__(self, path: Path, shift: float, fx: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(path), str(shift), str(fx), str(TESTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, f"submitter {self.proc.pid} exited with {self.proc.wait()}"
        return line

    def submit(self, key: str, sleep: float) -> tuple[str, str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{key} {sleep}\n")
        self.proc.stdin.flush()
        status, _, rest = self._line().partition(" ")
        return status, rest

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def hold_until(fx: str, key: str, gate: str) -> str:
    """A task that keeps its worker busy until ``gate`` exists."""
    token = mark(fx, key)
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return token


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shift", [-300.0, 300.0])
def test_a_submitter_with_a_skewed_clock_queues_in_real_submission_order(lab, shift):
    """A shifted and an unshifted submitter take turns while two workers are busy and one is idle.

    Every submission must succeed, every task run once, and the backlog must
    start interleaved as it was submitted: not all of one submitter's tasks
    first (its clock 5 minutes behind) or last (5 minutes ahead).
    """
    fx, gate = str(lab.fx), str(lab.path.parent / "gate")
    for n in range(3):
        lab.worker(f"w{n}", "--log-level", "WARNING")
    blockers = {f"hold{n}": lab.queue.enqueue(hold_until, fx, f"hold{n}", gate) for n in range(2)}
    wait_for(lambda: all(faultlib.executions(fx)[k] for k in blockers), what="two workers to be busy")

    skewed, steady = Submitter(lab.path, shift, lab.fx), Submitter(lab.path, 0.0, lab.fx)
    per_submitter = 80
    order: list[str] = []  # keys in real submission order
    jobs: dict[str, Any] = {}
    errors = []
    try:
        for i in range(per_submitter):
            for who, sub in (("s", skewed), ("u", steady)):
                key = f"{who}{i}"
                status, rest = sub.submit(key, 0.1)
                if status == "ok":
                    order.append(key)
                    jobs[key] = lab.queue.job(rest)
                else:
                    errors.append(f"{key}: {rest}")
    finally:
        skewed.close()
        steady.close()
    Path(gate).touch()
    assert not errors, errors[:5]
    for job in [*jobs.values(), *blockers.values()]:
        job.wait(timeout=120)

    started = sorted(jobs, key=lambda k: jobs[k].started_at)
    first_half = started[: len(started) // 2]
    share = sum(k.startswith("s") for k in first_half) / len(first_half)
    rank = {k: n for n, k in enumerate(order)}
    early = sum(rank[k] for k in first_half) / len(first_half)
    late = sum(rank[k] for k in started[len(started) // 2 :]) / (len(started) - len(first_half))
    t = lab.tally(
        f"submitter clock {shift:+.0f} s, busy+idle workers",
        jobs,
        note=f"{share:.0%} of the first half started were the skewed submitter's",
    )
    assert not (t.lost or t.executed_twice or t.committed_twice or t.not_finished)
    # Started in submission order (give or take claimers stepping aside): both
    # submitters in the first half alike, and the first half submitted earlier.
    assert 0.35 <= share <= 0.65, (share, started)
    assert early < late, (early, late)
    # The submission times recorded are on the one (storage's) clock, not the skewed one.
    assert all(abs(jobs[k].enqueued_at - jobs[k].started_at) < 120 for k in jobs)


def old_name(base: float, i: int, job_id: str) -> str:
    """The task file name of ``job_id`` as submitted ``base + i/10`` seconds after the epoch (own shard each)."""
    t = base + i / 10
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(t))}-{int(t * 1e6) % 1_000_000:06d}-0a0b0c.{job_id}"


@pytest.mark.timeout(180)
def test_tasks_moved_back_into_old_shards_race_idle_workers_and_none_fails(lab):
    """Requeues and a shutdown's release put old-named tasks into old shards while 3 idle workers poll.

    Each move makes a shard (mkdir: the idle workers wake) and renames the task
    in; the mover is durable, so an fsync of queued/ sits between the two, the
    window in which a worker that removes empty shards at sight wins.
    """
    count = 120
    jobs = {f"m{i}": lab.queue.enqueue_call(mark, (str(lab.fx), f"m{i}"), job_id=f"m{i}") for i in range(count)}
    mover = Claimer(Queue(storage=LocalStorage(lab.path, durable=True)), "mover")
    claimed = [job._name for job in mover]
    assert len(claimed) == count
    base = time.time() - 3600  # an hour old: far older than any shard a worker keeps
    names = {}
    for i, name in enumerate(claimed):
        job_id = name.partition(".")[2]
        names[job_id] = old_name(base, i, job_id)
        os.rename(lab.path / layout.claimed_path("mover", name), lab.path / layout.claimed_path("mover", names[job_id]))
    workers = [lab.worker(f"idle{n}", "--log-level", "WARNING") for n in range(3)]
    wait_for(lambda: len(os.listdir(lab.path / "workers")) >= 4, what="the idle workers to register")
    time.sleep(0.5)  # let them list the (empty) queue and go to sleep on inotify

    storage = mover.queue.storage
    failures = []
    for job_id in list(names)[: count // 2]:  # one at a time, as requeue and retry promotion do
        try:
            move_to_queued(storage, layout.claimed_path("mover", names[job_id]), names[job_id])
        except OSError as exc:
            failures.append(f"{job_id}: {exc!r}")
        time.sleep(0.005)
    mover.close()  # the rest go back at once, as a worker's claims at shutdown
    left = os.listdir(lab.path / "claimed" / "mover") if (lab.path / "claimed" / "mover").exists() else []
    for job in jobs.values():
        job.wait(timeout=120)
    t = lab.tally("requeues into old shards vs 3 idle workers", jobs, note=f"{len(failures)} moves failed")
    assert not failures, failures[:5]
    assert not [n for n in left if not n.startswith(".")], "close() could not put claims back"
    assert not (t.lost or t.executed_twice or t.committed_twice or t.not_finished)
    assert all(w.poll() is None for w in workers)


class VanishingShards(LocalStorage):
    """Stands in for a claimer that removes every shard the moment it is made, ``times`` times."""

    def __init__(self, root: Path, times: int) -> None:
        super().__init__(root)
        self.times = times
        self.removed = 0

    def _make_dir(self, target: str) -> None:
        super()._make_dir(target)
        if self.removed < self.times and "/queued/" in target:
            self.removed += 1
            os.rmdir(target)


def test_submissions_and_moves_outlast_a_shard_that_keeps_vanishing(lab):
    thief = VanishingShards(lab.path, times=12)  # three times what a mover used to try
    queue = Queue(storage=thief)
    job = queue.enqueue(operator.add, 1, 2)
    assert thief.removed == 12 and job.get_status() == "queued"
    thief.times += 12
    time.sleep(0.11)  # the next tenth of a second: a new shard
    jobs = queue.map(operator.pos, range(5))
    assert thief.removed == 24 and [j.get_status() for j in jobs] == ["queued"] * 5

    # A claim moved back (requeue, retry promotion, recovery, release) outlasts it too.
    claimer = Claimer(queue, "bouncer")
    first = claimer.claim()
    assert first is not None
    thief.times += 12
    os.rmdir(lab.path / layout.queued_shard(first._name))  # emptied: a claimer would remove it
    move_to_queued(thief, layout.claimed_path("bouncer", first._name), first._name)
    assert thief.removed == 36 and first.get_status() == "queued"
    claimer.close()

    faultlib.record(faultlib.Tally("shard removed 12x per move", 7), note="enqueue, map, a move back: all succeed")


def test_a_shard_that_never_stays_gives_a_queue_error_not_eagain(lab, monkeypatch):
    monkeypatch.setattr(shards_module, "MOVE_PATIENCE", 0.3)
    queue = Queue(storage=VanishingShards(lab.path, times=10**9))
    for submit in (
        lambda: queue.enqueue(operator.add, 1, 2),
        lambda: queue.map(operator.pos, range(3)),
        lambda: queue.enqueue_many(operator.add, [((1, 2), {})]),
    ):
        with pytest.raises(QueueError) as err:
            submit()
        assert not isinstance(err.value, OSError)
        assert "Nothing was queued" in str(err.value) and "shard folder" in str(err.value)
    assert queue.stats()["queued"] == 0 and os.listdir(lab.path / "tmp") == []
    faultlib.record(faultlib.Tally("shard removed at every try", 3), note="QueueError naming the fix, nothing queued")


def test_other_submit_errors_are_queue_errors_too(lab):
    os.rmdir(lab.path / "tmp")  # a damaged queue: its files cannot be written
    with pytest.raises(QueueError, match="Nothing was queued"):
        lab.queue.enqueue(operator.add, 1, 2)


class ClockProbe(LocalStorage):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.probes = 0

    def now(self) -> float:
        self.probes += 1
        return super().now()


@pytest.mark.parametrize("shift", [-300.0, 300.0])
def test_order_keys_and_submit_times_are_on_the_storages_clock(lab, shift, monkeypatch):
    probe = ClockProbe(lab.path)
    queue = Queue(storage=probe, clock=lambda: time.time() + shift)
    before = time.time()
    jobs = [queue.enqueue(operator.pos, i) for i in range(50)] + queue.map(operator.pos, range(600))
    after = time.time()
    assert probe.probes == 1  # measured once, never per task
    first, last = jobs[0], jobs[-1]
    key_time = time.mktime(time.strptime(first.id[:15], "%Y%m%d-%H%M%S")) - time.timezone
    assert before - 2 <= key_time <= after + 1, (first.id, before)
    assert before - 1 <= first.enqueued_at <= last.enqueued_at <= after + 1
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)

    # Measured again after SKEW_RECHECK seconds of the monotonic clock, not before.
    monkeypatch.setattr(queue_module, "SKEW_RECHECK", 0.0)
    queue._skew_due = 0.0
    queue.enqueue(operator.pos, 1)
    assert probe.probes == 2


def test_order_keys_take_the_time_and_stay_increasing():
    t = time.time()
    keys = [new_order_key(t) for _ in range(3)] + [new_order_key(t - 60)]
    assert keys == sorted(set(keys))  # equal or earlier times still sort after the last key
    with pytest.raises(TypeError, match="clock must be a callable"):
        Queue("/nonexistent", clock=123.0)  # type: ignore[arg-type]


def test_the_storage_clock_is_a_file_time(tmp_path):
    storage = LocalStorage(tmp_path)
    (tmp_path / "tmp").mkdir()
    before = time.time()
    now = storage.now()
    assert before - 1 <= now <= time.time() + 1 and os.listdir(tmp_path / "tmp") == []
    with pytest.raises(OSError) as err:
        LocalStorage(tmp_path / "missing").now()
    assert err.value.errno == errno.ENOENT
