"""A failing task: the client gets the worker's exception, catchable by its own type, with the remote traceback."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import threading

import cloudpickle
import pytest
from helpers import WAIT, run_burst

import fs_task_queue
from fs_task_queue import (
    CorruptFileError,
    FSQError,
    InsecureQueueError,
    JobCanceledError,
    JobError,
    JobStatus,
    JobTimeoutError,
    NoSuchJobError,
    PythonVersionMismatchError,
    QueueError,
    RemoteError,
    SerializationError,
    WaitTimeoutError,
    WorkerLostError,
)

PACKAGE_DIR = os.path.dirname(fs_task_queue.__file__)


def divide(a, b):
    return a / b  # the remote traceback must point here


class TaskFailed(Exception):
    def __init__(self, code, why):
        super().__init__(code, why)
        self.code = code


class NeedsThreeArgs(Exception):
    def __init__(self, a, b, c):
        super().__init__(a, b, c)
        self.total = a + b + c


class HoldsALock(Exception):
    pass


def raise_task_failed():
    raise TaskFailed(7, "nope")


def raise_needs_three():
    raise NeedsThreeArgs(1, 2, 3)


def raise_unpicklable():
    raise HoldsALock(threading.Lock())


def open_missing(path):
    with open(path):
        pass


def raise_base(exc):
    raise exc


def test_failing_task_raises_the_remote_exception(queue):
    job = queue.enqueue(divide, 1, 0)
    run_burst(queue.path)
    assert job.get_status() is JobStatus.FAILED
    assert job.is_failed

    with pytest.raises(ZeroDivisionError) as excinfo:
        job.wait(timeout=WAIT)
    exc = excinfo.value
    assert isinstance(exc, RemoteError)
    assert isinstance(exc, JobError) and isinstance(exc, FSQError)
    assert exc.remote_type == "ZeroDivisionError"
    assert exc.remote_message == "division by zero"
    assert exc.job_id == job.id
    assert isinstance(exc.__cause__, ZeroDivisionError), "the original exception is attached"

    tb = exc.remote_traceback
    assert tb.startswith("Traceback (most recent call last):")
    assert f"line {divide.__code__.co_firstlineno + 1}, in divide" in tb
    assert tb.rstrip().endswith("ZeroDivisionError: division by zero")
    assert PACKAGE_DIR not in tb, "the worker's own frames are hidden"

    text = str(exc)
    assert "ZeroDivisionError: division by zero" in text
    assert job.id in text
    assert "in divide" in text

    lines = exc._render_traceback_()
    assert all(isinstance(line, str) for line in lines)
    assert job.id in lines[0]
    assert lines[1:] == tb.rstrip().splitlines()

    # Every way of asking gives the same error.
    with pytest.raises(ZeroDivisionError):
        _ = job.result
    assert isinstance(job.exception(), ZeroDivisionError)
    try:
        job.wait(timeout=WAIT)
    except ZeroDivisionError as caught:
        assert caught.remote_type == "ZeroDivisionError"
    else:
        raise AssertionError("no exception")


def test_remote_error_pickles_round_trip(queue, tmp_path):
    job = queue.enqueue(divide, 1, 0)
    run_burst(queue.path)
    exc = job.exception()
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = pickle.loads(dumps(exc))
        assert type(back) is type(exc)
        assert isinstance(back, ZeroDivisionError) and isinstance(back, RemoteError)
        assert (back.remote_type, back.remote_message, back.remote_traceback, back.job_id) == (
            exc.remote_type,
            exc.remote_message,
            exc.remote_traceback,
            exc.job_id,
        )
        assert str(back) == str(exc)

    # ...and into a fresh process that never saw the error class.
    code = (
        "import pickle, sys\n"
        "exc = pickle.load(sys.stdin.buffer)\n"
        "print(isinstance(exc, ZeroDivisionError), type(exc).__name__, exc.remote_type, exc.job_id)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(exc), capture_output=True, timeout=WAIT, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split() == ["True", type(exc).__name__, "ZeroDivisionError", job.id]


LIBRARY_ERRORS = [
    (QueueError("not a queue"), ValueError),
    (InsecureQueueError("others can write"), QueueError),
    (NoSuchJobError("no job 'x'"), KeyError),
    (SerializationError("cannot pickle"), TypeError),
    (CorruptFileError("truncated"), ValueError),
    (PythonVersionMismatchError("2.7 vs 3.11"), RuntimeError),
    (WaitTimeoutError("still queued"), TimeoutError),
    (JobCanceledError("canceled", "job-1"), JobError),
    (JobTimeoutError("too slow", "job-2"), TimeoutError),
    (WorkerLostError("lost", "job-3"), JobError),
    (RemoteError("ValueError", "bad value", "Traceback ...", "job-4"), JobError),
]


@pytest.mark.parametrize(("exc", "builtin"), LIBRARY_ERRORS, ids=lambda v: type(v).__name__)
def test_library_errors_pickle_and_derive_from_builtins(exc, builtin):
    assert isinstance(exc, FSQError)
    assert isinstance(exc, builtin)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert back.args == exc.args
    assert str(back) == str(exc)
    assert vars(back) == vars(exc)


def test_no_such_job_error_reads_as_a_sentence():
    assert str(NoSuchJobError("no job 'x' in the queue")) == "no job 'x' in the queue"


def test_remote_custom_exception_is_catchable_by_its_class(queue):
    job = queue.enqueue(raise_task_failed)
    run_burst(queue.path)
    with pytest.raises(TaskFailed) as excinfo:
        job.wait(timeout=WAIT)
    assert excinfo.value.remote_type.endswith("TaskFailed")
    assert "in raise_task_failed" in excinfo.value.remote_traceback


def test_remote_custom_exception_keeps_its_attributes(queue):
    # `except TaskFailed as e: e.code` must see the worker's value, not the remote message.
    job = queue.enqueue(raise_task_failed)
    run_burst(queue.path)
    with pytest.raises(TaskFailed) as excinfo:
        job.wait(timeout=WAIT)
    assert excinfo.value.code == 7


def test_remote_exception_with_a_three_argument_constructor_is_catchable(queue):
    job = queue.enqueue(raise_needs_three)
    run_burst(queue.path)
    with pytest.raises(NeedsThreeArgs) as excinfo:
        job.wait(timeout=WAIT)
    assert excinfo.value.remote_type.endswith("NeedsThreeArgs")


def test_remote_oserror_keeps_errno_and_filename(queue, tmp_path):
    missing = str(tmp_path / "missing.txt")
    job = queue.enqueue(open_missing, missing)
    run_burst(queue.path)
    with pytest.raises(FileNotFoundError) as excinfo:
        job.wait(timeout=WAIT)
    assert excinfo.value.remote_type == "FileNotFoundError"
    assert excinfo.value.errno == errno.ENOENT
    assert excinfo.value.filename == missing


def test_unpicklable_exception_is_still_reported(queue):
    job = queue.enqueue(raise_unpicklable)
    after = queue.enqueue(divide, 6, 3)
    run_burst(queue.path)
    with pytest.raises(RemoteError) as excinfo:
        job.wait(timeout=WAIT)
    exc = excinfo.value
    assert exc.remote_type.endswith("HoldsALock")
    assert "lock" in exc.remote_message
    assert "in raise_unpicklable" in exc.remote_traceback
    assert after.wait(timeout=WAIT) == 2


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()], ids=["SystemExit", "KeyboardInterrupt"])
def test_base_exception_fails_only_that_task(queue, exc):
    job = queue.enqueue(raise_base, exc)
    after = queue.enqueue(divide, 1, 4)
    run_burst(queue.path)
    with pytest.raises(RemoteError) as excinfo:
        job.wait(timeout=WAIT)
    assert excinfo.value.remote_type == type(exc).__name__
    assert after.wait(timeout=WAIT) == 0.25
