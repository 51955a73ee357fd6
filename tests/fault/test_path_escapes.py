"""No path escapes: odd ids and symlinks planted inside the queue never lead outside it.

Each attack plants real symlinks (or passes real odd names) and checks that a
folder outside the queue, holding a canary file, is left exactly as it was:
nothing written into it, nothing read, moved or deleted from it.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import pickle
import sys
import time
from pathlib import Path

import pytest

from fs_task_queue import NoSuchJobError, Queue, SymlinkInQueueError, Worker, progress
from fs_task_queue.maintenance import purge, requeue_failed, stop_worker
from fs_task_queue.queue import Claimer
from fs_task_queue.storage.local import LocalStorage

from .faultlib import Tally, names, record, run_cli

BAD_IDS = ["..", ".", "", "a/b", "../key", "x\n", "run-1\n", "-x", "\x00"]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots`` (not following symlinks) with a digest of its content or link target."""
    out: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath, name)
                if p.is_symlink():
                    out[str(p)] = "-> " + os.readlink(p)
                elif p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
                else:
                    out[str(p)] = "dir"
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the queue with a canary file that must never change."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "canary").write_text("do not touch")
    return d


def row(name: str, note: str, tasks: int = 1) -> None:
    record(Tally(name, tasks), note)


def chatty(n: int) -> int:
    print("hello from the task")
    print("to stderr", file=sys.stderr)
    progress(n, n, "done")
    return n * 2


def always_fails() -> None:
    raise RuntimeError("fails")


# ----------------------------------------------------------------- jobs/<id>
@pytest.mark.timeout(120)
def test_a_symlinked_job_folder_receives_no_output_and_purge_removes_only_the_link(lab, outside):
    before = snapshot(outside)
    job = lab.queue.enqueue_call(chatty, (21,), job_id="victim")
    (lab.path / "jobs" / "victim").symlink_to(outside, target_is_directory=True)
    w = lab.worker("w", "--burst")
    assert lab.procs.wait(w) == 0, lab.procs.log(w)
    # The task ran and its outcome was committed; only its output was refused.
    assert job.result == 42
    assert snapshot(outside) == before
    assert "is a symlink" in lab.procs.log(w)
    assert purge(lab.queue, 0) == ["victim"]
    assert not os.path.lexists(lab.path / "jobs" / "victim")
    assert snapshot(outside) == before
    row("symlinked jobs/<id> (run, purge)", "task ran, outcome kept; no output written through; link removed")


@pytest.mark.timeout(120)
def test_requeue_of_a_job_with_a_symlinked_job_folder_keeps_the_outside(lab, outside):
    job = lab.queue.enqueue_call(always_fails, job_id="bad")
    w = lab.worker("w", "--burst")
    assert lab.procs.wait(w) == 0, lab.procs.log(w)
    assert job.get_status().value == "failed"
    os.symlink(outside, lab.path / "jobs" / "bad")
    before = snapshot(outside)
    out = run_cli("requeue", str(lab.path), "bad")
    assert out.returncode == 0, out.stderr
    assert snapshot(outside) == before and not os.path.lexists(lab.path / "jobs" / "bad")


def test_cancel_of_a_job_with_a_symlinked_job_folder_keeps_the_outside(lab, outside):
    job = lab.queue.enqueue_call(operator.add, (1, 2), job_id="tocancel")
    os.symlink(outside, lab.path / "jobs" / "tocancel")
    before = snapshot(outside)
    out = run_cli("cancel", str(lab.path), "tocancel")
    assert out.returncode == 0 and "canceled" in out.stdout, out.stderr
    purge(lab.queue, 0)
    # Purged with its result (a purged job no longer exists), or still there as canceled.
    assert not os.path.exists(lab.path / "results" / "tocancel") or job.get_status().value == "canceled"
    assert snapshot(outside) == before


# ------------------------------------------------------------ queued/<shard>
@pytest.mark.timeout(120)
def test_a_symlinked_shard_is_quarantined_and_never_written_through(lab, outside):
    q = lab.queue
    job = q.enqueue_call(always_fails, job_id="again")
    w = lab.worker("w", "--burst")
    assert lab.procs.wait(w) == 0, lab.procs.log(w)
    name = names(lab.path / "failed")[0]
    shard = name[:17]
    # A file named like a task of that shard waits outside: a claimer that
    # descended into the link would move it out.
    (outside / f"{shard}00000-abcdef").write_bytes(b"not yours")
    if (lab.path / "queued" / shard).is_dir():
        (lab.path / "queued" / shard).rmdir()  # kept while recent; a claimer removes it later
    os.symlink(outside, lab.path / "queued" / shard)
    before = snapshot(outside)

    # Requeue moves the task back into its own (older) shard: not through the link.
    assert requeue_failed(q, ["again"]) == ["again"]
    assert snapshot(outside) == before
    assert (lab.path / "queued" / shard).is_dir() and not (lab.path / "queued" / shard).is_symlink()
    aside = [n for n in names(lab.path / "quarantine") if n.startswith(shard)]
    assert len(aside) == 1 and (lab.path / "quarantine" / aside[0]).is_symlink()

    # A submit into a shard planted as a symlink, and a worker meeting one.
    storage = q.storage
    os.symlink(outside, lab.path / "queued" / "20000101-000000-0")
    from fs_task_queue.shards import publish_queued

    publish_queued(storage, "20000101-000000-000001-abcdef", b"x")
    assert snapshot(outside) == before
    os.symlink(outside, lab.path / "queued" / "20000101-000000-1")
    w = lab.worker("w2", "--burst")
    assert lab.procs.wait(w) == 0, lab.procs.log(w)
    assert snapshot(outside) == before
    assert not os.path.lexists(lab.path / "queued" / "20000101-000000-1")
    assert job.get_status().value == "failed" and job.info().attempt == 1
    row("symlinked queued/<shard> (requeue, submit, claim)", "link quarantined; nothing moved through it")


def test_the_claimer_never_renames_through_a_shard_swapped_for_a_symlink(queue, outside):
    jobs = queue.map(operator.add, range(50), range(50))
    first = jobs[0]._name
    shard = first[:17]
    rest = sorted(j._name for j in jobs if j._name[:17] == shard and j._name != first)
    assert rest, "the first two tasks of a bulk submit share a shard"
    claimer = Claimer(queue, "c")
    assert claimer.claim().id == first  # its listing read the shard's other names too
    # The shard is swapped for a symlink to a folder holding a file of the next name.
    real = Path(queue.path, "queued", shard)
    os.rename(real, Path(queue.path, "elsewhere"))
    os.symlink(outside, real)
    (outside / rest[0]).write_bytes(b"bait")
    before = snapshot(outside)
    while claimer.claim() is not None:
        pass
    claimer.close()
    assert snapshot(outside) == before


# --------------------------------------------------------- claimed/<worker>
@pytest.mark.timeout(60)
def test_recovery_does_not_empty_a_symlinked_claimed_folder(lab, outside):
    for n in ("20260101-000000-000000-abcdef", ".alive", ".identity"):
        (outside / n).write_text(json.dumps({"host": "elsewhere", "boot": "x", "dev": 1}))
    os.symlink(outside, lab.path / "claimed" / "ghost")
    hb = lab.path / "workers" / "ghost"
    hb.write_text(json.dumps({"id": "ghost", "host": "elsewhere"}))
    old = time.time() - 3600
    os.utime(hb, (old, old))
    before = snapshot(outside)
    out = run_cli("recover", str(lab.path), "--dead-after", "1s")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("recovered 0 job(s)"), out.stdout
    assert snapshot(outside) == before
    assert not os.path.lexists(lab.path / "claimed" / "ghost")
    assert any((lab.path / "quarantine" / n).is_symlink() for n in names(lab.path / "quarantine"))
    assert lab.queue.jobs() == [] and lab.queue.stats()["started"] == 0
    row("symlinked claimed/<dead worker> (recover)", "link quarantined; nothing moved or deleted through it", 0)


def test_a_claimer_refuses_a_symlink_planted_under_its_name(queue, outside):
    os.symlink(outside, Path(queue.path, "claimed", "mine"))
    before = snapshot(outside)
    with pytest.raises(SymlinkInQueueError, match="claimed/mine"):
        Claimer(queue, "mine").register()
    assert snapshot(outside) == before


# ---------------------------------------------------------------- odd names
@pytest.mark.parametrize("bad", ["../key", "../../outside/canary", "w\n", "a/b", "..", "", "-w", ".hidden"])
def test_stop_worker_with_an_odd_id_touches_nothing(lab, outside, bad):
    (lab.path / "workers" / "w").write_text("{}")
    before = snapshot(lab.path, outside)
    out = run_cli("stop-worker", str(lab.path), "--", bad)
    assert out.returncode == 1 and "invalid worker id" in out.stderr, (out.stdout, out.stderr)
    assert snapshot(lab.path, outside) == before
    with pytest.raises(ValueError, match="invalid worker id"):
        stop_worker(lab.queue, bad)
    assert snapshot(lab.path, outside) == before


@pytest.mark.parametrize("command", ["show", "cancel", "requeue"])
def test_job_commands_with_odd_ids_give_a_clear_error_and_touch_nothing(lab, outside, command):
    lab.queue.enqueue_call(always_fails, job_id="x")
    before = snapshot(lab.path, outside)
    for bad in ["..", "a/b", "../key", "x\n", "../../outside/canary"]:
        out = run_cli(command, str(lab.path), "--", bad)
        assert out.returncode == 1 and "invalid job id" in out.stderr, (bad, out.stdout, out.stderr)
        assert snapshot(lab.path, outside) == before, bad
    row(f"odd job ids to `{command}` (5)", "clear error; nothing touched", 0)


@pytest.mark.parametrize("bad", BAD_IDS)
def test_the_python_api_refuses_odd_ids(queue, bad):
    before = snapshot(Path(queue.path))
    with pytest.raises(NoSuchJobError, match="invalid job id"):
        queue.job(bad)
    with pytest.raises(ValueError, match="invalid job id"):
        queue.enqueue_call(operator.add, (1, 2), job_id=bad)
    with pytest.raises(ValueError, match="invalid worker id"):
        Claimer(queue, bad)
    with pytest.raises(ValueError, match="invalid worker id"):
        Worker(queue, name=bad)
    assert snapshot(Path(queue.path)) == before


def test_names_with_a_trailing_newline_are_not_ids_or_shards():
    from fs_task_queue.ids import is_generated_id, is_task_name, is_worker_id, validate_job_id
    from fs_task_queue.shards import is_shard_name

    assert not is_generated_id("20260115-093012-123456-a1b2c3\n")
    assert not is_task_name("20260115-093012-123456-a1b2c3\n")
    assert not is_task_name("20260115-093012-123456-a1b2c3.x\n")
    assert not is_shard_name("20260115-093012-1\n")
    assert not is_worker_id("w\n") and is_worker_id("host-12-ab09")
    with pytest.raises(ValueError):
        validate_job_id("x\n")


# ------------------------------------------------------ the storage itself
def test_storage_refuses_every_second_level_symlink(tmp_path, outside):
    q = Queue(tmp_path / "q")
    s = q.storage
    before = snapshot(outside)
    for top in ("queued", "claimed", "jobs"):
        os.symlink(outside, tmp_path / "q" / top / "link")
        d = f"{top}/link"
        for op in (
            lambda d=d: s.publish(f"{d}/f", b"x", replace=True),
            lambda d=d: s.publish(f"{d}/f", b"x", replace=False, make_parent=True),
            lambda d=d: s.read(f"{d}/canary"),
            lambda d=d: s.remove(f"{d}/canary"),
            lambda d=d: s.exists(f"{d}/canary"),
            lambda d=d: s.listdir(d),
            lambda d=d: s.append(f"{d}/f", b"x"),
            lambda d=d: s.rename(f"{d}/canary", "tmp/stolen"),
        ):
            with pytest.raises(SymlinkInQueueError, match="is a symlink"):
                op()
        s.remove_tree(f"{top}/link")  # the link only
        assert not os.path.lexists(tmp_path / "q" / top / "link")
    assert snapshot(outside) == before
    with pytest.raises(ValueError):
        s.read("results/../key")


def test_symlink_error_pickles_and_is_an_oserror():
    err = SymlinkInQueueError("/q/jobs/x")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is SymlinkInQueueError and str(again) == str(err) and again.errno == err.errno
    assert isinstance(err, OSError) and "is a symlink" in str(err)


def test_a_cached_folder_removed_and_made_again_is_looked_up_afresh(tmp_path):
    q = Queue(tmp_path / "q")
    s = q.storage
    s.publish("queued/20000101-000000-0/a", b"a", replace=False, make_parent=True)
    assert s.exists("queued/20000101-000000-0/a")  # the shard's descriptor is cached now
    s.remove("queued/20000101-000000-0/a")
    os.rmdir(tmp_path / "q" / "queued" / "20000101-000000-0")
    os.mkdir(tmp_path / "q" / "queued" / "20000101-000000-0")
    (tmp_path / "q" / "queued" / "20000101-000000-0" / "b").write_bytes(b"b")
    assert s.exists("queued/20000101-000000-0/b") and s.read("queued/20000101-000000-0/b") == b"b"
    s.rename("queued/20000101-000000-0/b", "tmp/b")
    s.publish("queued/20000101-000000-0/c", b"c", replace=False, make_parent=True)
    assert sorted(os.listdir(tmp_path / "q" / "queued" / "20000101-000000-0")) == ["c"]


def test_storage_descriptors_survive_fork_and_pickle(tmp_path):
    q = Queue(tmp_path / "q")
    job = q.enqueue(operator.add, 1, 2)
    assert q.storage.exists(f"queued/{job._name[:17]}/{job._name}")  # descriptors open now
    clone = pickle.loads(pickle.dumps(q))
    assert isinstance(clone.storage, LocalStorage) and clone.job(job.id).get_status().value == "queued"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - checked through the exit code
        ok = q.storage.exists(f"queued/{job._name[:17]}/{job._name}")
        q.storage.publish("jobs/child", b"x", replace=False)
        os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert (tmp_path / "q" / "jobs" / "child").read_bytes() == b"x"
