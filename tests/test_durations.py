"""Learned run times: written in batches by task loops, read with a cache, never trusted blindly."""

from __future__ import annotations

import json
from pathlib import Path

from fs_task_queue import Queue, Worker
from fs_task_queue.durations import (
    MAX_FILE_BYTES,
    DurationCache,
    DurationLog,
    Estimate,
    duration_key,
    duration_path,
    learned_durations,
    read_estimate,
)


def add(x: int) -> int:
    return x + 1


def test_finished_runs_are_recorded_per_function(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    queue.map(add, range(5))
    failing = queue.enqueue(add, "not a number")  # a failed run teaches nothing
    assert Worker(queue, burst=True, isolation="none", walltime=None).run() == 6
    assert failing.get_status().value == "failed"
    key = duration_key({"fn": f"{__name__}.add"})
    assert key is not None
    estimate = read_estimate(queue.storage, key)
    assert estimate is not None and estimate.runs == 5 and len(estimate.recent) == 5
    assert estimate.high == max(estimate.recent)
    assert [e.key for e in learned_durations(queue)] == [key]


def test_a_cell_is_keyed_by_its_notebook_and_code() -> None:
    meta = {"fsq": {"kind": "cell", "notebook": "a.ipynb", "summary": "simulate(p)"}}
    assert duration_key({"fn": "functools.partial", "opt": {"metadata": meta}}) == "cell a.ipynb: simulate(p)"
    assert duration_key({"fn": "m.f", "opt": {"metadata": {"fsq": "x"}}}) == "m.f"
    assert duration_key({}) is None


def test_bad_files_are_no_estimate(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    storage = queue.storage
    good = Estimate("m.f", 2, 3.0, (1.0, 3.0), 1.0)
    for data in (
        b"not json",
        b"[1, 2]",
        b"__import__('os').system('true')",
        json.dumps({"key": "m.f", "runs": 2, "recent": [1.0, -3.0], "updated": 1.0}).encode(),
        json.dumps({"key": "m.f", "runs": True, "recent": [1.0], "updated": 1.0}).encode(),
        json.dumps({"key": "m.f", "runs": 2, "recent": [float("inf")], "updated": 1.0}).encode(),
        json.dumps({"key": "other", "runs": 2, "recent": [1.0], "updated": 1.0}).encode(),  # someone else's
        good.to_json()[:-1] + b" " * MAX_FILE_BYTES + b"}",
    ):
        storage.publish(duration_path("m.f"), data, replace=True, make_parent=True)
        assert read_estimate(storage, "m.f") is None, data[:80]
    storage.publish(duration_path("m.f"), good.to_json(), replace=True)
    assert read_estimate(storage, "m.f") == good


def test_the_cache_reads_each_function_at_most_once_an_interval(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    writer = DurationLog(queue.storage)
    writer.add("m.f", 5.0)  # the first run of a function is written at once
    cache = DurationCache(queue.storage, interval=3600)
    first = cache.estimate("m.f")
    assert first is not None and first.high == 5.0
    writer.add("m.f", 9.0)
    writer.flush()
    assert cache.estimate("m.f") == first  # cached: no read per claim
    assert DurationCache(queue.storage).estimate("m.f").high == 9.0  # type: ignore[union-attr]
    assert cache.estimate("never.ran") is None
