"""queued/ in shards: a claim reads only the oldest shards, emptied shards go, movers remake them."""

from __future__ import annotations

import errno
import operator
import os
import time
from pathlib import Path

import pytest
from helpers import run_burst

from fs_task_queue import Queue, layout
from fs_task_queue import shards as shards_module
from fs_task_queue.queue import Claimer
from fs_task_queue.shards import KEEP_RECENT, move_to_queued
from fs_task_queue.storage.local import _SUB_CACHE, LocalStorage
from fs_task_queue.watch import DirWatcher

GROUP = 600  # more than a claimer's batch of 512 names


class CountingStorage(LocalStorage):
    """LocalStorage that counts the names its listings return (instrumentation, not a fake)."""

    listed = 0

    def listdir(self, path: str) -> list[str]:
        names = super().listdir(path)
        self.listed += len(names)
        return names


def shards(queue: Queue) -> list[str]:
    return sorted(os.listdir(Path(queue.path) / "queued"))


def submit_groups(queue: Queue, groups: int) -> list[str]:
    ids = []
    for _ in range(groups):
        ids += [job.id for job in queue.map(operator.add, range(GROUP), range(GROUP))]
        time.sleep(0.15)  # the next group starts in a later tenth of a second: another shard
    return ids


def test_a_claim_lists_the_oldest_shards_not_the_whole_queue(tmp_path):
    queue = Queue(tmp_path / "q")
    ids = submit_groups(queue, 4)
    assert len(shards(queue)) >= 4
    storage = CountingStorage(queue.path)
    claimer = Claimer(Queue(storage=storage), "counted")
    claimer.register()

    first = claimer.claim()
    assert first is not None and first.id == ids[0]
    # The top of queued/ (a few shard names) and the oldest shard(s) up to 512 names:
    # at most two groups' worth, never all of them.
    assert storage.listed <= 2 * GROUP + len(shards(queue)), storage.listed
    assert storage.listed < len(ids)

    claimed = [first.id] + [job.id for job in iter(claimer.claim, None)]
    assert claimed == ids  # submission order across shards, each task once
    # Emptied shards are removed as the claimer goes, but the newest one while it is recent.
    assert len(shards(queue)) <= 1

    claimer.close()  # puts every claimed task back: into shards made again
    assert queue.stats()["queued"] == len(ids)
    assert [job.id for job in queue.jobs("queued")] == ids
    assert [job.get_status() for job in (queue.job(ids[0]), queue.job(ids[-1]))] == ["queued", "queued"]


def test_a_drained_queue_keeps_no_old_shards(queue):
    submit_groups(queue, 2)
    time.sleep(KEEP_RECENT + 0.2)  # all shards are old now, the newest too
    run_burst(queue.path)
    assert shards(queue) == []
    assert queue.stats()["finished"] == 2 * GROUP


def test_a_task_moved_into_a_removed_shard_remakes_it(queue):
    storage = queue.storage
    job = queue.enqueue(operator.add, 1, 2)
    shard = layout.queued_shard(job.id)
    claimed = "claimed/mover/" + job.id
    storage.mkdir("claimed/mover")
    storage.rename(layout.queued_path(job.id), claimed)
    storage.remove_dir(shard)  # what a claimer does to an emptied shard

    move_to_queued(storage, claimed, job.id)
    assert job.get_status() == "queued" and storage.listdir(shard) == [job.id]
    with pytest.raises(FileNotFoundError):  # the source is gone: not papered over
        move_to_queued(storage, claimed, job.id)

    storage.remove(layout.queued_path(job.id))
    storage.remove_dir(shard)
    storage.publish(layout.queued_path(job.id), b"data", replace=False, make_parent=True)
    assert storage.read(layout.queued_path(job.id)) == b"data"
    with pytest.raises(FileNotFoundError):  # without make_parent a missing folder is an error
        storage.publish("no-such-folder/file", b"data", replace=False)


class ShardThief(LocalStorage):
    """Removes every folder it makes at once: a claimer that wins the rmdir race every time."""

    def _make_dir(self, target: str) -> None:
        super()._make_dir(target)
        os.rmdir(target)


def test_a_move_whose_folder_keeps_vanishing_fails_without_losing_the_file(queue):
    storage = ShardThief(queue.path)
    storage.publish("tmp/kept", b"task", replace=False)
    with pytest.raises(OSError) as err:
        storage.rename("tmp/kept", "queued/20000101-000000-0/kept", make_parent=True)
    # Not FileNotFoundError, which callers take for "another process moved it".
    assert err.value.errno == errno.EAGAIN and not isinstance(err.value, FileNotFoundError)
    assert storage.read("tmp/kept") == b"task"


class ChmodRace(LocalStorage):
    """The first folder it makes is removed between its mkdir and chmod (a claimer's rmdir)."""

    raced = False

    def _make_dir(self, target: str) -> None:
        if not self.raced:
            self.raced = True
            os.mkdir(target)
            os.rmdir(target)
            os.chmod(target, 0o2770)  # what the shared mode does next: FileNotFoundError
        super()._make_dir(target)


def test_a_shard_removed_between_mkdir_and_chmod_is_made_again(queue):
    storage = ChmodRace(queue.path, file_mode=0o660, dir_mode=0o2770)
    storage.publish("tmp/moved", b"task", replace=False)
    storage.rename("tmp/moved", "queued/20000101-000000-0/moved", make_parent=True)
    assert storage.raced and storage.read("queued/20000101-000000-0/moved") == b"task"


def test_close_keeps_a_claim_it_cannot_move_back_for_recovery(queue, monkeypatch):
    monkeypatch.setattr(shards_module, "MOVE_PATIENCE", 0.2)  # movers now outwait a thief this long
    job = queue.enqueue(operator.add, 1, 2)
    claimer = Claimer(Queue(storage=ShardThief(queue.path)), "closer")
    assert claimer.claim().id == job.id
    os.rmdir(Path(queue.path) / layout.queued_shard(job.id))  # emptied: a claimer would remove it
    claimer.close()  # every move back fails (EAGAIN): the task must stay where it is
    assert (Path(queue.path) / layout.claimed_path("closer", job.id)).is_file()
    run_burst(queue.path)  # its recovery finds the free lock and re-queues the task, then runs it
    assert job.wait(timeout=60) == 3


def test_nested_watcher_wakes_for_files_moved_into_subfolders(tmp_path):
    root = tmp_path / "queued"
    (root / "old").mkdir(parents=True)
    # A poll interval far longer than the waits: only a notification can end them in time.
    with DirWatcher([str(root)], nested=True, local_safety_interval=60.0) as watcher:
        assert watcher.uses_inotify
        for folder in ("old", "new"):
            if folder == "new":
                (root / "new").mkdir()
                assert watcher.wait(10.0) == {"new"}
            source = tmp_path / f"task-{folder}"
            source.write_bytes(b"x")
            os.rename(source, root / folder / "task")
            assert watcher.wait(10.0) == {"task"}, folder


def test_nested_watcher_watches_folders_made_while_its_events_overflowed(tmp_path):
    root = tmp_path / "queued"
    (root / "busy").mkdir(parents=True)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    with DirWatcher([str(root)], nested=True, local_safety_interval=60.0) as watcher:
        for i in range(limit + 100):  # nobody reads them: the event queue overflows
            (root / "busy" / f"f{i}").touch()
        (root / "late").mkdir()  # its creation event is lost
        assert watcher.wait(10.0) is not None  # the overflow is noticed and every folder watched again
        watcher.changes_now()
        source = tmp_path / "task"
        source.write_bytes(b"x")
        os.rename(source, root / "late" / "task")
        assert watcher.wait(10.0) == {"task"}


def test_moves_into_shards_racing_claimers_that_remove_them_lose_nothing(tmp_path):
    """Two claimers drain while a third keeps putting its claims back into their (old) shards."""
    import threading

    queue = Queue(tmp_path / "q")
    ids = set()
    for _ in range(4):  # four shards, all old by the time they are emptied
        ids |= {job.id for job in queue.map(operator.add, range(300), range(300))}
        time.sleep(0.12)
    time.sleep(KEEP_RECENT)
    taken: dict[str, list[str]] = {"a": [], "b": []}
    stop = threading.Event()

    def drain(name: str) -> None:
        claimer = Claimer(Queue(tmp_path / "q"), name)
        while not stop.is_set():
            job = claimer.claim()
            if job is not None:
                taken[name].append(job.id)
        claimer._lock.release()  # keep the claims where they are (close() would put them back)

    def bounce() -> None:
        claimer = Claimer(Queue(tmp_path / "q"), "bouncer")
        storage = claimer.queue.storage
        for _ in range(600):
            job = claimer.claim()
            if job is not None:
                move_to_queued(storage, layout.claimed_path("bouncer", job._name), job._name)

    threads = [threading.Thread(target=drain, args=(n,)) for n in taken]
    bouncer = threading.Thread(target=bounce)
    for t in [*threads, bouncer]:
        t.start()
    bouncer.join()
    deadline = time.monotonic() + 60
    while sum(map(len, taken.values())) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    claimed = taken["a"] + taken["b"]
    assert sorted(claimed) == sorted(ids)  # each task claimed once by the drainers, none lost
    root = Path(queue.path)
    files = [p.name for p in (root / "claimed").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert sorted(files) == sorted(ids) and queue.stats()["queued"] == 0


def test_a_recovery_pass_that_cannot_move_a_task_does_not_stop_the_worker(queue, caplog):
    from fs_task_queue import Worker

    class Failing:
        def run_once(self) -> list[str]:
            raise OSError(errno.EAGAIN, "the folder of queued/x/y keeps disappearing")

    worker = Worker(queue, name="chores", recover_interval=7.0)
    with caplog.at_level("WARNING", logger="fs_task_queue.worker"):
        wait = worker._chores(Failing(), beat=False)  # type: ignore[arg-type]
    assert 0 < wait <= 7.0  # the next pass is scheduled as usual
    assert "recovery pass stopped" in caplog.text and "keeps disappearing" in caplog.text


class RacingStorage(LocalStorage):
    """LocalStorage whose claim renames lose to an imaginary claimer for the first ``losses`` tasks.

    A real file operation happens first (the task is moved aside, as another
    claimer's rename would), so the losing rename fails the way it does in a race.
    """

    def __init__(self, root: str, losses: int) -> None:
        super().__init__(root)
        self.losses = losses
        self.attempts = 0
        self.stolen: list[str] = []

    def rename(self, src: str, dst: str, *, make_parent: bool = False) -> None:
        if src.startswith("queued/") and dst.startswith("claimed/"):
            self.attempts += 1
            if self.losses > 0:
                self.losses -= 1
                name = src.rpartition("/")[2]
                super().rename(src, f"tmp/stolen-{name}")
                self.stolen.append(name)
        super().rename(src, dst, make_parent=make_parent)


def test_a_claimer_that_loses_a_race_skips_ahead_and_later_finds_what_it_skipped(tmp_path, monkeypatch):
    queue = Queue(tmp_path / "q")
    ids = [job.id for job in queue.map(operator.pos, range(200))]
    monkeypatch.setattr(shards_module.random, "randrange", lambda n: 10)  # skip 10 names
    storage = RacingStorage(queue.path, losses=1)
    claimer = Claimer(Queue(storage=storage), "racer")
    claimed = [job.id for job in claimer]
    claimer.close()
    assert len(storage.stolen) == 1 and ids[0] not in claimed
    # It skipped the next 10 names without trying them: one failed rename in all ...
    assert storage.attempts == len(claimed) + 1
    assert claimed[:5] == ids[11:16]
    # ... and claimed every task nobody else took, the skipped ones after listing again.
    assert sorted(claimed) == ids[1:]
    assert claimed[-10:] == ids[1:11]


def test_two_claimers_in_lockstep_rarely_collide(tmp_path):
    queue = Queue(tmp_path / "q")
    queue.map(operator.pos, range(2000))
    counting = [RacingStorage(queue.path, losses=0) for _ in range(2)]
    claimers = [Claimer(Queue(storage=s), f"c{i}") for i, s in enumerate(counting)]
    won = [0, 0]
    # Alternate claims, as two workers on two cores do: both read the same names.
    while True:
        got = [c.claim() for c in claimers]
        for i, job in enumerate(got):
            won[i] += job is not None
        if not any(got):
            break
    for c in claimers:
        c.close()
    attempts = sum(s.attempts for s in counting)
    assert sum(won) == 2000
    # Without stepping aside every other rename fails (about 4000 attempts for 2000 tasks).
    assert attempts < 2000 * 1.2, attempts


def test_a_move_out_of_a_long_cached_folder_into_a_new_one(tmp_path):
    # The storage keeps descriptors of a few second-level folders. A move holds
    # its source folder's while it opens the target's: with the cache full, the
    # source's must not be the one closed to make room (the move failed with EBADF).
    storage = Queue(tmp_path / "q").storage
    storage.mkdir("claimed/w")
    storage.publish("claimed/w/t", b"task", replace=False)
    for i in range(_SUB_CACHE - 1):  # the cache is full, claimed/w its first entry
        storage.mkdir(f"jobs/j{i}")
        assert not storage.exists(f"jobs/j{i}/stdout")
    assert storage.exists("claimed/w/t")  # used again: it must not be the next to go
    storage.rename("claimed/w/t", "queued/20260101-000000-0/t", make_parent=True)
    assert storage.read("queued/20260101-000000-0/t") == b"task"
