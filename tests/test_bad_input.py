"""Bad input gets a clear error and loses nothing: unpicklable calls, bad paths, junk and forged files."""

from __future__ import annotations

import json
import operator
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
from helpers import WAIT, run_burst, touch_and_return

import fs_task_queue.queue
import fs_task_queue.serialize
from fs_task_queue import (
    CorruptFileError,
    JobStatus,
    NoSuchJobError,
    PythonVersionMismatchError,
    Queue,
    QueueError,
    RemoteError,
    SerializationError,
    layout,
)
from fs_task_queue.shards import is_shard_name

THIS_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


class MakesDirWhenUnpickled:
    """Unpickling this calls ``os.mkdir(path)``: proof that a payload was (or was never) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def return_unpicklable():
    return threading.Lock()


def return_booby_trap(path):
    return MakesDirWhenUnpickled(path)


def numbers():
    yield 1


def queue_files(queue: Queue, folder: str) -> list[str]:
    root = Path(queue.path) / folder
    if folder != "queued":
        return sorted(os.listdir(root))
    # queued/ holds shard folders: list what is in them (an empty shard is not a file left behind).
    out = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and is_shard_name(entry.name):
            out += sorted(os.listdir(entry))
        else:
            out.append(entry.name)
    return out


def claimed_files(queue: Queue) -> list[str]:
    root = Path(queue.path) / "claimed"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def assert_nothing_written(queue: Queue) -> None:
    assert queue_files(queue, "queued") == []
    assert queue_files(queue, "tmp") == []
    assert queue.jobs() == []


def queued_file_of(queue: Queue, job_id: str) -> Path:
    (name,) = [n for n in queue_files(queue, "queued") if n == job_id or n.endswith("." + job_id)]
    return Path(queue.path) / layout.queued_path(name)


# --------------------------------------------------------------- unpicklable calls
def test_unpicklable_positional_argument(queue):
    with pytest.raises(SerializationError) as excinfo:
        queue.enqueue(operator.add, 1, threading.Lock())
    assert isinstance(excinfo.value, TypeError)
    assert "_thread.lock" in str(excinfo.value)
    assert "positional argument 1" in str(excinfo.value)
    assert_nothing_written(queue)


def test_unpicklable_keyword_argument(queue):
    with pytest.raises(SerializationError) as excinfo:
        queue.enqueue(sorted, [3, 1], key=(i for i in range(3)))
    assert "generator" in str(excinfo.value)
    assert "'key'" in str(excinfo.value)
    assert_nothing_written(queue)


def test_open_file_argument(queue, tmp_path):
    with open(tmp_path / "out.txt", "w") as handle, pytest.raises(SerializationError) as excinfo:
        queue.enqueue(print, "x", file=handle)
    assert "TextIOWrapper" in str(excinfo.value)
    assert_nothing_written(queue)


def test_generator_argument(queue):
    with pytest.raises(SerializationError) as excinfo:
        queue.enqueue(list, numbers())
    assert "generator" in str(excinfo.value)
    assert_nothing_written(queue)


def test_unpicklable_function(queue):
    lock = threading.Lock()

    def uses_lock():
        with lock:
            return 1

    with pytest.raises(SerializationError) as excinfo:
        queue.enqueue(uses_lock)
    assert "function" in str(excinfo.value)
    assert "_thread.lock" in str(excinfo.value)
    with pytest.raises(SerializationError):
        queue.map(uses_lock, [1, 2])
    with pytest.raises(SerializationError):
        queue.enqueue_call(uses_lock, job_id="named")
    assert_nothing_written(queue)


def test_not_callable(queue):
    with pytest.raises(TypeError, match="callable"):
        queue.enqueue(42)
    assert_nothing_written(queue)


def test_map_with_an_unpicklable_item_submits_nothing(queue):
    # map() returns the jobs only if it succeeds: jobs queued before the bad item would have no handle.
    with pytest.raises(SerializationError) as excinfo:
        queue.map(str, [1, 2, threading.Lock(), 4])
    assert "_thread.lock" in str(excinfo.value)
    assert_nothing_written(queue)


def test_unpicklable_result_fails_only_that_task(queue):
    job = queue.enqueue(return_unpicklable)
    after = queue.enqueue(operator.add, 1, 2)
    run_burst(queue.path)
    assert after.wait(timeout=WAIT) == 3, "the next task still runs"
    assert job.get_status() is JobStatus.FAILED
    # The job fails with an error that is a SerializationError and a RemoteError.
    with pytest.raises(SerializationError) as excinfo:
        job.wait(timeout=WAIT)
    exc = excinfo.value
    assert isinstance(exc, RemoteError)
    assert exc.remote_type == "fs_task_queue.errors.SerializationError"
    assert "_thread.lock" in exc.remote_message
    assert "result" in exc.remote_message


# --------------------------------------------------------------------- bad options
@pytest.mark.parametrize(
    "options",
    [
        {"job_id": "a/b"},
        {"job_id": "../escape"},
        {"job_id": ""},
        {"job_id": "-starts-with-dash"},
        {"job_id": "x" * 200},
        {"job_id": "has space"},
        {"timeout": 0},
        {"timeout": -1},
        {"retries": -1},
        {"metadata": {"not json": object()}},
        {"metadata": ["a", "list"]},
        {"metadata": "text"},
    ],
    ids=repr,
)
def test_invalid_options_are_refused(queue, options):
    with pytest.raises(ValueError):
        queue.enqueue_call(operator.add, (1, 2), **options)
    assert_nothing_written(queue)


def test_duplicate_job_id_of_a_finished_job(queue):
    first = queue.enqueue_call(operator.add, (1, 2), job_id="only-once")
    run_burst(queue.path)
    with pytest.raises(FileExistsError):
        queue.enqueue_call(operator.add, (3, 4), job_id="only-once")
    assert first.result == 3
    assert queue_files(queue, "queued") == []


def test_duplicate_job_id_while_queued_runs_only_the_first(queue, tmp_path):
    # Not refused in 0.2.0 (documented), but a job still gets one outcome: the duplicate is dropped unrun.
    first = queue.enqueue_call(touch_and_return, (str(tmp_path / "first"), 1), job_id="dup")
    second = queue.enqueue_call(touch_and_return, (str(tmp_path / "second"), 2), job_id="dup")
    run_burst(queue.path)
    assert (tmp_path / "first").exists()
    assert not (tmp_path / "second").exists()
    assert first.result == 1
    assert second.result == 1
    assert queue_files(queue, "queued") == []
    assert claimed_files(queue) == []
    assert [j.id for j in queue.jobs()] == ["dup"]


# ----------------------------------------------------------------------- bad paths
def test_queue_path_is_a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("precious")
    with pytest.raises(QueueError) as excinfo:
        Queue(path)
    assert str(path) in str(excinfo.value)
    assert "file" in str(excinfo.value)
    assert path.read_text() == "precious"


def test_queue_path_is_a_non_empty_directory(tmp_path):
    path = tmp_path / "project"
    path.mkdir()
    (path / "notes.txt").write_text("precious")
    with pytest.raises(QueueError) as excinfo:
        Queue(path)
    assert "notes.txt" in str(excinfo.value)
    assert "not empty" in str(excinfo.value)
    assert os.listdir(path) == ["notes.txt"], "nothing was added to the directory"


def test_queue_in_an_empty_directory_is_created(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    queue = Queue(path)
    assert queue.enqueue(operator.add, 1, 1).get_status() is JobStatus.QUEUED


@pytest.mark.parametrize("where", ["under-a-file", "proc", "sys"])
def test_queue_path_that_cannot_be_created(tmp_path, where):
    if where == "under-a-file":
        (tmp_path / "plain-file").write_text("x")
        path = tmp_path / "plain-file" / "queue"
    else:
        path = Path(f"/{where}/fsq-test-{os.getpid()}")
    with pytest.raises(QueueError) as excinfo:
        Queue(path)
    assert str(path) in str(excinfo.value)
    assert not path.exists()


def test_create_false_on_a_missing_path(tmp_path):
    path = tmp_path / "missing"
    with pytest.raises(QueueError) as excinfo:
        Queue(path, create=False)
    assert "no queue" in str(excinfo.value)
    assert not path.exists()


def test_create_false_on_an_empty_directory(tmp_path):
    with pytest.raises(QueueError):
        Queue(tmp_path, create=False)
    assert os.listdir(tmp_path) == []


def test_queue_of_a_newer_format(qpath):
    Queue(qpath)
    fmt = qpath / "fsq-format.json"
    record = json.loads(fmt.read_text())
    record["version"] = 999
    fmt.write_text(json.dumps(record))
    with pytest.raises(QueueError, match="upgrade"):
        Queue(qpath)


def test_queue_with_a_foreign_format_file(qpath):
    Queue(qpath)
    (qpath / "fsq-format.json").write_text("not json at all")
    with pytest.raises(QueueError, match="format"):
        Queue(qpath)


def test_unknown_job_id(queue):
    queue.enqueue(operator.add, 1, 2)
    for job_id in ("nope", "20200101-000000-000000-abcdef"):
        with pytest.raises(NoSuchJobError) as excinfo:
            queue.job(job_id)
        assert isinstance(excinfo.value, KeyError)
        assert job_id in str(excinfo.value)


# ----------------------------------------------------------- junk in queued/
def test_junk_in_queued_is_quarantined_and_valid_tasks_still_run(queue, tmp_path):
    queued = Path(queue.path) / "queued"
    outside = tmp_path / "outside-target"
    outside.write_bytes(b"do not touch")
    template = queue.enqueue(operator.add, 0, 0)
    template_bytes = queued_file_of(queue, template.id).read_bytes()
    assert template.cancel()

    # Files with names no client writes...
    foreign = {
        "00-foreign.txt": b"hello, I am not a task\n",
        "01-random": os.urandom(4096),
        "02-copy-of-a-task": template_bytes,
    }
    for name, data in foreign.items():
        (queued / name).write_bytes(data)
    (queued / "03-symlink").symlink_to(outside)
    os.mkfifo(queued / "04-fifo")
    (queued / "05-directory").mkdir()
    (queued / "05-directory" / "inside").write_bytes(b"x")
    # ...a task file outside its shard, a shard-shaped file and a shard-shaped link to a folder...
    (queued / "20000101-000000-000009-aaaaa9").write_bytes(template_bytes)
    (queued / "20000101-000000-1").write_bytes(b"not a shard")
    (tmp_path / "outside-dir").mkdir()
    (tmp_path / "outside-dir" / "20000101-000000-200000-aaaaaa").write_bytes(b"do not move")
    (queued / "20000101-000000-2").symlink_to(tmp_path / "outside-dir")
    foreign_at_top = ["20000101-000000-000009-aaaaa9", "20000101-000000-1", "20000101-000000-2"]
    # ...and, in their shard, files named like tasks (older than every real one) whose content
    # is wrong, and one whose name belongs to another shard.
    shard = queued / "20000101-000000-0"
    shard.mkdir()
    wrong_shard = "20000101-000000-300000-aaaaab"
    (shard / wrong_shard).write_bytes(template_bytes)
    task_shaped = {
        "20000101-000000-000001-aaaaa1": b"",
        "20000101-000000-000002-aaaaa2": os.urandom(4096),
        "20000101-000000-000003-aaaaa3": b"FSQT1" + os.urandom(200),
        "20000101-000000-000004-aaaaa4": template_bytes,  # signed for another job id
        "20000101-000000-000005-aaaaa5.custom-id": b"not a task",
    }
    for name, data in task_shaped.items():
        (shard / name).write_bytes(data)
    os.symlink(outside, shard / "20000101-000000-000006-aaaaa6")
    os.mkfifo(shard / "20000101-000000-000007-aaaaa7")
    os.mkdir(shard / "20000101-000000-000008-aaaaa8")
    bad_names = [*foreign, "03-symlink", "04-fifo", "05-directory", *foreign_at_top, *task_shaped]
    bad_names += [wrong_shard]
    bad_names += ["20000101-000000-000006-aaaaa6", "20000101-000000-000007-aaaaa7", "20000101-000000-000008-aaaaa8"]

    valid = [queue.enqueue(operator.mul, i, 10) for i in range(5)]
    run_burst(queue.path)  # must neither crash nor hang

    assert [job.wait(timeout=WAIT) for job in valid] == [0, 10, 20, 30, 40]
    assert queue_files(queue, "queued") == [], "junk left behind would be retried forever"
    assert claimed_files(queue) == []
    assert sorted(queue_files(queue, "quarantine")) == sorted(bad_names)
    assert outside.read_bytes() == b"do not touch"
    assert (tmp_path / "outside-dir" / "20000101-000000-200000-aaaaaa").read_bytes() == b"do not move"
    assert (Path(queue.path) / "quarantine" / "03-symlink").is_symlink()
    # A task-shaped file that fails verification fails its job with a CorruptFileError message.
    moved_unread = [*foreign_at_top, wrong_shard]  # not claimed, so their jobs have no outcome
    for name in [n for n in bad_names if n.startswith("2000") and n not in moved_unread]:
        job = queue.job(name.partition(".")[2] or name)
        assert job.get_status() is JobStatus.FAILED, name
        exc = job.exception()
        assert isinstance(exc, CorruptFileError), name
        assert exc.remote_type == "fs_task_queue.errors.CorruptFileError", name


def test_truncated_task_file_fails_with_corrupt_file_error(queue, tmp_path):
    side = tmp_path / "ran"
    job = queue.enqueue(touch_and_return, str(side), 1)
    path = queued_file_of(queue, job.id)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    after = queue.enqueue(operator.add, 2, 3)

    run_burst(queue.path)

    assert after.wait(timeout=WAIT) == 5
    assert not side.exists()
    assert job.get_status() is JobStatus.FAILED
    assert path.name in queue_files(queue, "quarantine")
    with pytest.raises(CorruptFileError) as excinfo:
        job.wait(timeout=WAIT)
    assert isinstance(excinfo.value, RemoteError)
    assert excinfo.value.remote_type == "fs_task_queue.errors.CorruptFileError"
    assert "quarantine" in excinfo.value.remote_message


def test_task_signed_with_another_queues_key_is_never_unpickled(queue, tmp_path):
    # Control: in its own queue the payload does get unpickled, which makes a directory.
    control = tmp_path / "control-unpickled"
    own = queue.enqueue(str, MakesDirWhenUnpickled(str(control)))
    run_burst(queue.path)
    assert own.wait(timeout=WAIT) == "None"
    assert control.is_dir()

    sentinel = tmp_path / "forged-unpickled"
    other = Queue(tmp_path / "other-queue")
    forged = other.enqueue(str, MakesDirWhenUnpickled(str(sentinel)))
    source = queued_file_of(other, forged.id)
    (Path(queue.path) / layout.queued_shard(source.name)).mkdir(exist_ok=True)
    shutil.copy(source, Path(queue.path) / layout.queued_path(source.name))
    after = queue.enqueue(operator.add, 1, 1)

    run_burst(queue.path)

    assert not sentinel.exists(), "a task signed with another key was unpickled"
    assert after.wait(timeout=WAIT) == 2
    assert queue.job(forged.id).get_status() is JobStatus.FAILED
    assert source.name in queue_files(queue, "quarantine")


def test_result_signed_with_another_queues_key_is_never_unpickled(queue, tmp_path):
    sentinel = tmp_path / "forged-result-unpickled"
    other = Queue(tmp_path / "other-queue")
    theirs = other.enqueue_call(return_booby_trap, (str(sentinel),), job_id="victim")
    run_burst(other.path)
    mine = queue.enqueue_call(operator.add, (1, 2), job_id="victim")
    shutil.copy(Path(other.path) / "results" / "victim", Path(queue.path) / "results" / "victim")

    with pytest.raises(CorruptFileError):
        mine.wait(timeout=WAIT)
    with pytest.raises(CorruptFileError):
        Queue(queue.path).job("victim").wait(timeout=WAIT)
    assert not sentinel.exists(), "a result signed with another key was unpickled"
    # Control: the same result read through its own queue is unpickled.
    theirs.wait(timeout=WAIT)
    assert sentinel.is_dir()


def test_python_version_mismatch(qpath, tmp_path, monkeypatch):
    # Only this (client) process pretends to be Python 2.7; the worker is the real interpreter.
    for module in (fs_task_queue.serialize, fs_task_queue.queue):
        monkeypatch.setattr(module, "python_version", lambda: "2.7", raising=False)
    sentinel = tmp_path / "unpickled"
    job = Queue(qpath).enqueue(str, MakesDirWhenUnpickled(str(sentinel)))
    monkeypatch.undo()
    after = Queue(qpath).enqueue(operator.add, 1, 2)

    run_burst(qpath)

    assert after.wait(timeout=WAIT) == 3
    assert job.get_status() is JobStatus.FAILED
    assert not sentinel.exists(), "a task from another Python version was unpickled"
    with pytest.raises(PythonVersionMismatchError) as excinfo:
        job.wait(timeout=WAIT)
    exc = excinfo.value
    assert isinstance(exc, RemoteError)
    assert exc.remote_type == "fs_task_queue.errors.PythonVersionMismatchError"
    assert "2.7" in exc.remote_message
    assert THIS_PYTHON in exc.remote_message


def test_a_path_with_a_tilde_means_the_home_directory(tmp_path, monkeypatch):
    # The worker's `--path ~/q` is expanded by the shell; Queue("~/q") must name the same folder.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    queue = Queue("~/queues/x")
    assert queue.path == str(tmp_path / "home" / "queues" / "x")
    assert not (tmp_path / "~").exists()
