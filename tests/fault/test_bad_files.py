"""Files a worker must survive: a client killed mid-write, and junk or hostile files in queued/."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from fs_task_queue import CorruptFileError, JobStatus, Queue
from fs_task_queue.ids import new_order_key
from fs_task_queue.serialize import TASK_MAGIC, seal

from .faultlib import (
    PYTHON,
    WORKER,
    CommitCounter,
    all_claimed,
    executions,
    mark,
    names,
    queued_file,
    queued_names,
    registered,
    run_cli,
    wait_for,
)

BIG_CLIENT = textwrap.dedent(
    """
    import sys
    from fs_task_queue import Queue

    queue = Queue(sys.argv[1], create=False)
    queue.enqueue(len, b"x" * (200 << 20))
    print("submitted", flush=True)
    """
)


@pytest.mark.timeout(120)
def test_client_killed_mid_write_leaves_nothing_in_queued(lab):
    tmp_dir, queued = lab.path / "tmp", lab.path / "queued"
    worker = lab.worker("w", "--recover-interval", "0.5", "--max-poll-interval", "0.2")
    wait_for(lambda: registered(lab.path, "w"), what="the worker to register")
    # Every name that ever appears at the top of queued/: a task's shard folder is made only
    # after the task's file is written, so a published task would show up here.
    appeared = CommitCounter(queued)
    try:
        for _attempt in range(3):
            client = lab.procs.start([PYTHON, "-c", BIG_CLIENT, str(lab.path)], label="big-client")
            leftover = None
            mine = f"{client.pid:x}-"  # temporary names start with the writer's pid in hex
            while client.poll() is None:  # kill it the moment its task's temporary file has data
                # (not at the empty file of its clock probe: see Storage.now)
                found = [n for n in names(tmp_dir) if n.startswith(mine) and _size(tmp_dir / n)]
                if found:
                    os.kill(client.pid, signal.SIGKILL)
                    leftover = tmp_dir / found[0]
                    break
            client.wait()
            try:
                size = leftover.stat().st_size if leftover is not None else None
            except FileNotFoundError:  # renamed into queued/ before the kill landed
                size = None
            if size is not None and size < 200 << 20:
                break  # killed while writing
            # It got through (or past the write) before the kill: clean up and try again.
            shutil.rmtree(queued)
            queued.mkdir(mode=0o700)
            for name in names(tmp_dir):
                os.unlink(tmp_dir / name)
            appeared.counts.clear()
        else:
            pytest.fail("could not kill the client while it wrote (it was always too fast)")
        print(f"client killed mid-write: {leftover.name} holds {size} of more than {200 << 20} bytes")
        assert client.returncode == -signal.SIGKILL
        assert appeared.snapshot() == {} and names(queued) == []  # nothing partial was ever visible, not even a shard
        assert names(tmp_dir) == [leftover.name]

        job = lab.queue.enqueue(mark, str(lab.fx), "after")
        assert job.wait(60).startswith("after.")
        assert worker.poll() is None
        assert names(tmp_dir) == [leftover.name]  # too young for the worker's own hourly sweep

        out = run_cli("sweep", str(lab.path), "--older-than", "0s")
        assert out.returncode == 0 and "removed 1 stale temporary file" in out.stdout, (out.stdout, out.stderr)
        assert names(tmp_dir) == []
        t = lab.tally("client SIGKILLed mid-write (200 MB)", {"after": job}, note="partial file only in tmp/")
        assert not t.lost and not t.executed_twice and not t.committed_twice
    finally:
        appeared.close()


class RunsCommand:
    """Unpickling this runs a shell command (what an attacker would put in a task file)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


class WritesFile:
    """Unpickling this creates a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.rename(tmp, path)


@pytest.mark.timeout(120)
def test_bad_files_in_queued_are_quarantined(lab, tmp_path):
    queue, queued, fx = lab.queue, lab.path / "queued", str(lab.fx)
    pwned = tmp_path / "pwned"
    bad: dict[str, str] = {}  # job id -> what is wrong with its file

    def fresh(kind: str) -> Path:
        name = new_order_key()
        bad[name] = kind
        return queued_file(lab.path, name)

    def real(kind: str, key: str) -> tuple[Path, bytes]:
        job = queue.enqueue(mark, fx, key)
        bad[job.id] = kind
        path = queued_file(lab.path, job.id)
        return path, path.read_bytes()

    _write(fresh("empty"), b"")
    path, data = real("truncated", "trunc")
    _write(path, data[: len(data) // 2])
    _write(fresh("random bytes"), os.urandom(4096))
    path, data = real("format FSQT9", "v9")
    _write(path, b"FSQT9" + data[5:])
    path, data = real("unsigned", "unsigned")
    _write(path, data[:5] + bytes(32) + data[37:])
    path, data = real("tampered", "tampered")
    _write(path, data[:-1] + bytes([data[-1] ^ 1]))
    os.mkfifo(fresh("fifo"))
    path, data = real("symlink out of the queue", "via-symlink")
    outside = tmp_path / "outside-task"
    os.rename(path, outside)
    os.symlink(outside, path)
    os.mkdir(fresh("directory"))
    # Hostile payloads that would act when unpickled, with no valid signature.
    for kind, obj in (
        ("pickle: os.system", RunsCommand(f"touch {pwned}")),
        ("pickle: open(w)", WritesFile(str(pwned))),
    ):
        payload = pickle.dumps(obj)
        header = {"id": "x", "py": "3.11", "fn": "evil", "at": time.time(), "opt": {}, "fl": len(payload)}
        path = fresh(f"{kind}, no signature")
        _write(path, payload)
        path = fresh(f"{kind}, forged signature")
        _write(path, TASK_MAGIC + os.urandom(32) + seal(TASK_MAGIC, bytes(32), path.name, header, payload)[37:])
        path = fresh(f"{kind}, signed with another key")
        _write(path, seal(TASK_MAGIC, os.urandom(32), path.name, header, payload))
    _write(queued / "notes.txt", b"not a task name")

    good = {f"g{i}": queue.enqueue(mark, fx, f"g{i}") for i in range(5)}
    assert len(queued_names(lab.path)) == len(bad) + len(good) + 1

    worker = lab.worker("w", "--burst")
    assert lab.procs.wait(worker, timeout=90) == 0, lab.procs.log(worker)  # neither crashed nor hung
    log = lab.procs.log(worker)
    assert "Traceback" not in log, log

    assert not pwned.exists(), "a forged task file was unpickled"
    assert executions(lab.fx)["via-symlink"] == 0, "the worker followed a symlink out of the queue"
    for key in ("trunc", "v9", "unsigned", "tampered"):
        assert executions(lab.fx)[key] == 0
    for job_id, kind in bad.items():
        job = queue.job(job_id)
        assert job.get_status() is JobStatus.FAILED, kind
        with pytest.raises(CorruptFileError):
            job.wait(0)
    quarantined = set(names(lab.path / "quarantine"))
    assert quarantined == {*bad, "notes.txt"}, quarantined ^ {*bad, "notes.txt"}
    assert queued_names(lab.path) == [] and all_claimed(lab.path) == []
    print(f"{len(bad)} bad task files quarantined: {sorted(set(bad.values()))}")
    t = lab.tally(f"bad files in queued/ ({len(bad) + 1})", good, note="all quarantined, good tasks done, no unpickle")
    assert not t.lost and not t.executed_twice and not t.committed_twice and not t.not_finished


@pytest.mark.timeout(60)
def test_task_file_moved_from_another_queue_is_refused(tmp_path):
    """A task signed with one queue's key fails its signature check in another queue."""
    one, two = Queue(tmp_path / "one"), Queue(tmp_path / "two")
    job = one.enqueue(len, "abc")
    os.rename(queued_file(tmp_path / "one", job.id), queued_file(tmp_path / "two", job.id))
    done = subprocess.run(
        [*WORKER, "--path", str(tmp_path / "two"), "--burst"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    with pytest.raises(CorruptFileError, match="signature"):
        two.job(job.id).wait(0)
    assert names(tmp_path / "two" / "quarantine") == [job.id]


def _bad_results(lab) -> dict[str, tuple[object, bytes]]:
    """Queued jobs, each given a result file that fails verification: kind -> (job, bytes written)."""
    other = lab.queue.enqueue(len, "x")
    other.cancel()  # a valid result file of another job, to copy
    foreign = (lab.path / "results" / other.id).read_bytes()
    out = {}
    for kind in ("empty", "foreign", "tampered", "other job's"):
        job = lab.queue.enqueue(mark, str(lab.fx), kind.replace(" ", "_").replace("'", ""))
        data = {
            "empty": b"",
            "foreign": os.urandom(300),
            "tampered": foreign[:-1] + bytes([foreign[-1] ^ 1]),
            "other job's": foreign,
        }[kind]
        _write(lab.path / "results" / job.id, data)
        out[kind] = (job, data)
    return out


@pytest.mark.timeout(90)
def test_bad_result_file_does_not_stop_its_task(lab):
    bad = _bad_results(lab)
    worker = lab.worker("w", "--burst")
    assert lab.procs.wait(worker) == 0, lab.procs.log(worker)
    for kind, (job, data) in bad.items():
        assert job.get_status() is JobStatus.FINISHED, kind  # the task ran: the file was nobody's outcome
        assert (lab.path / "quarantine" / f"{job.id}.result").read_bytes() == data, kind
    jobs = {kind.replace(" ", "_").replace("'", ""): job for kind, (job, _) in bad.items()}
    t = lab.tally(
        f"bad result file of a queued job ({len(bad)})",
        jobs,
        note="quarantined; ran once (committed>1: the planted file)",
    )
    assert not t.lost and not t.executed_twice and not t.not_finished


@pytest.mark.timeout(90)
def test_jobs_info_and_purge_with_bad_result_files(lab):
    good = [lab.queue.enqueue(len, "abc") for _ in range(3)]
    worker = lab.worker("w", "--burst")
    assert lab.procs.wait(worker) == 0, lab.procs.log(worker)
    bad_id = good[1].id
    _write(lab.path / "results" / bad_id, b"")  # say, emptied by a crash of the file server

    out = run_cli("jobs", str(lab.path))
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout  # the others are still listed after the bad one
    assert [line.split()[1] for line in lines] == ["finished", "unreadable", "finished"], out.stdout
    assert "empty" in lines[1] and "purge" in lines[1]
    assert lab.queue.stats()["unreadable"] == 1 and lab.queue.stats()["finished"] == 2
    out = run_cli("info", str(lab.path))
    assert out.returncode == 0 and "unreadable results: 1" in out.stdout, (out.stdout, out.stderr)
    out = run_cli("show", str(lab.path), bad_id)
    assert out.returncode == 0 and "status    unreadable" in out.stdout and "empty" in out.stdout, out.stderr

    out = run_cli("purge", str(lab.path), "--older-than", "0s", "--status", "canceled")
    assert out.returncode == 0, out.stderr
    assert (
        f"removed 1 result file(s) that failed verification (empty, foreign or tampered with): {bad_id}" in out.stdout
    )
    assert run_cli("jobs", str(lab.path)).returncode == 0
    assert lab.queue.job(good[0].id).get_status() is JobStatus.FINISHED


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
