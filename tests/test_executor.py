"""QueueExecutor: a concurrent.futures.Executor whose work runs on the queue's workers."""

from __future__ import annotations

import asyncio
import operator
import subprocess
import sys
from concurrent.futures import CancelledError, Executor, as_completed, wait
from concurrent.futures import TimeoutError as FuturesTimeoutError

import pytest
from helpers import WAIT, divide, run_burst, touch_and_return, wait_for, wait_for_file

from fs_task_queue import JobCanceledError, JobFuture, JobStatus, QueueExecutor, RemoteError


def echo(*args, **kwargs):
    return args, kwargs


def test_submit_map_and_as_completed(queue, worker):
    with queue.executor() as ex:
        assert isinstance(ex, QueueExecutor) and isinstance(ex, Executor)
        fut = ex.submit(pow, 2, 10)
        assert isinstance(fut, JobFuture)
        assert fut.result(timeout=WAIT) == 1024
        assert fut.job.get_status() is JobStatus.FINISHED

        assert list(ex.map(operator.mul, range(12), range(12), timeout=WAIT)) == [i * i for i in range(12)]

        futures = {ex.submit(operator.add, i, i): i for i in range(12)}
        seen = {futures[f]: f.result() for f in as_completed(futures, timeout=WAIT)}
        assert seen == {i: 2 * i for i in range(12)}

        # Keyword arguments (even ones named like options) go to the function.
        assert ex.submit(echo, 1, timeout=3, fn=4).result(timeout=WAIT) == ((1,), {"timeout": 3, "fn": 4})


def test_future_exception_propagates(queue, worker):
    with queue.executor() as ex:
        fut = ex.submit(divide, 1, 0)
        with pytest.raises(ZeroDivisionError):
            fut.result(timeout=WAIT)
        exc = fut.exception(timeout=WAIT)
        assert isinstance(exc, RemoteError) and isinstance(exc, ZeroDivisionError)
        assert exc.job_id == fut.job.id
        assert "in divide" in exc.remote_traceback
        # The executor keeps working after a failure.
        assert ex.submit(divide, 9, 3).result(timeout=WAIT) == 3


def test_executor_options_apply_to_each_job(queue, worker):
    with queue.executor(metadata={"via": "executor"}) as ex:
        futures = [ex.submit(operator.neg, i) for i in range(3)]
        assert [f.result(timeout=WAIT) for f in futures] == [0, -1, -2]
    assert [f.job.metadata for f in futures] == [{"via": "executor"}] * 3


def assert_canceled_future(fut) -> None:
    """The future of a job canceled in the queue is done, and reports the cancel."""
    assert fut.done()
    assert fut.job.get_status() is JobStatus.CANCELED
    if not fut.cancelled():  # see test_future_cancel_is_reliable
        assert isinstance(fut.exception(timeout=WAIT), JobCanceledError)


def test_future_cancel_of_a_queued_job(queue, tmp_path):
    side = tmp_path / "ran"
    ex = queue.executor()
    try:
        fut = ex.submit(touch_and_return, str(side), 1)
        keep = ex.submit(operator.add, 1, 2)
        fut.cancel()
        assert_canceled_future(fut)
        with pytest.raises((CancelledError, JobCanceledError)):
            fut.result(timeout=WAIT)

        run_burst(queue.path)

        assert keep.result(timeout=WAIT) == 3
        assert keep.cancel() is False, "a finished future cannot be canceled"
        assert not keep.cancelled()
        assert not side.exists(), "the canceled job ran"
        assert fut.job.get_status() is JobStatus.CANCELED
    finally:
        ex.shutdown(wait=True)


def test_future_cancel_is_reliable(queue):
    # future.cancel() of a queued job must return True and leave the future cancelled, every time:
    # not only when it wins a race against the executor's watcher thread.
    ex = queue.executor()
    try:
        outcomes = []
        for i in range(30):
            fut = ex.submit(operator.add, i, i)
            outcomes.append((fut.cancel(), fut.cancelled()))
        assert outcomes == [(True, True)] * 30
    finally:
        ex.shutdown(wait=True)


def test_shutdown_waits_for_submitted_jobs(queue, workers):
    ex = queue.executor()
    futures = [ex.submit(operator.mul, i, 2) for i in range(5)]
    proc = workers.start(queue.path, "--burst")
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 2, 4, 6, 8]
    workers.wait_all([proc])
    with pytest.raises(RuntimeError):
        ex.submit(operator.add, 1, 1)


def test_shutdown_cancel_futures(queue, tmp_path):
    side = tmp_path / "ran"
    ex = queue.executor()
    futures = [ex.submit(touch_and_return, f"{side}-{i}", i) for i in range(3)]
    ex.shutdown(wait=True, cancel_futures=True)
    for fut in futures:
        assert_canceled_future(fut)
    run_burst(queue.path)
    assert list(tmp_path.glob("ran-*")) == []


def test_run_in_executor(queue, worker):
    async def main():
        loop = asyncio.get_running_loop()
        with queue.executor() as ex:
            return await asyncio.wait_for(
                asyncio.gather(loop.run_in_executor(ex, pow, 3, 3), loop.run_in_executor(ex, divide, 1, 4)),
                timeout=WAIT,
            )

    assert asyncio.run(main()) == [27, 0.25]


def test_map_in_chunks_runs_n_calls_per_task_in_order(queue, worker):
    with queue.executor() as ex:
        before = len(queue.jobs())
        results = ex.map(operator.mul, range(10), range(10), timeout=WAIT, chunksize=3)
        assert list(results) == [i * i for i in range(10)]
        assert len(queue.jobs()) - before == 4  # 3 + 3 + 3 + 1 calls

        # A failing call raises when its result is reached, after the ones before it.
        got = []
        with pytest.raises(ZeroDivisionError):
            for value in ex.map(divide, [4, 9, 8, 1], [2, 3, 0, 1], timeout=WAIT, chunksize=2):
                got.append(value)
        assert got == [2, 3]

        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            ex.map(abs, [1], chunksize=0)


def test_map_submits_every_call_at_once(queue):
    # No worker yet: every call is queued before the first result is asked for.
    ex = queue.executor()
    results = ex.map(operator.neg, range(5))
    assert queue.stats()["queued"] == 5
    run_burst(queue.path)
    assert list(results) == [0, -1, -2, -3, -4]
    ex.shutdown()


def gated(path: str) -> bool:
    wait_for_file(path)
    return True


@pytest.mark.parametrize("how", ["future", "job", "cli", "map"])
def test_a_canceled_future_wakes_wait_and_as_completed(queue, how):
    # concurrent.futures.wait() and as_completed() learn of a cancel only through
    # set_running_or_notify_cancel(); without it they wait forever.
    ex = queue.executor()
    try:
        if how == "map":
            results = ex.map(operator.add, [1, 2], [3, 4], timeout=0.2)
            futures = list(ex._pending.values())
            with pytest.raises(FuturesTimeoutError):
                next(results)  # no worker: leaving map early cancels the calls it submitted
        else:
            futures = [ex.submit(operator.add, 1, 2)]
            job = futures[0].job
            if how == "future":
                assert futures[0].cancel()
            elif how == "job":
                assert job.cancel()
            else:
                cli = [sys.executable, "-m", "fs_task_queue", "cancel", str(queue.path), job.id]
                subprocess.run(cli, check=True, capture_output=True, timeout=WAIT)
        done, not_done = wait(futures, timeout=WAIT)
        assert done == set(futures) and not not_done
        assert set(as_completed(futures, timeout=WAIT)) == set(futures)
        assert all(f.cancelled() for f in futures)
    finally:
        ex.shutdown(wait=True)


def test_future_running_while_the_job_runs(queue, worker, tmp_path):
    gate = tmp_path / "gate"
    with queue.executor() as ex:
        fut = ex.submit(gated, str(gate))
        wait_for(fut.running, what="the future to say it runs")
        gate.touch()
        assert fut.result(timeout=WAIT) is True
        assert not fut.running()


def test_executor_refuses_a_job_id_for_every_submission(queue):
    with pytest.raises(ValueError, match="job_id"):
        queue.executor(job_id="same-for-all")
