"""The core's behavioural tests (tests/test_api.py) run again through SSH, in both modes.

The same test bodies: ``queue`` is an SSHQueue on a queue directory of this
machine (pure SFTP, then the remote helper), and the workers the tests start
serve that directory locally, as a cluster's would. Left out are the tests that
hand ``queue.path`` to another process or open it as a local path (over SSH it
is a URL): those are about the local client itself. test_info_records_when_and_where
is left out too: it reads a job as "queued" while a worker is running, a race
the local client wins and one over SSH (several round trips) need not.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import helpers
import pytest
from ssh_server import Sshd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import test_api

from fs_task_queue import Queue
from fs_task_queue.plugins import SSHQueue

from .conftest import MODES, open_remote

cloudpickle.register_pickle_by_value(test_api)  # its task functions travel to the workers by value

SHARED = [
    "test_readme_example",
    "test_wait_blocks_until_a_worker_finishes",
    "test_wait_timeout_leaves_the_job_queued",
    "test_wait_timeout_with_a_worker_does_not_blame_workers",
    "test_every_kwarg_goes_to_the_function",
    "test_kwargs_named_like_enqueue_parameters_go_to_the_function",
    "test_enqueue_call_options_never_reach_the_function",
    "test_lambda_closure_and_partial",
    "test_jobs_and_stats_by_status",
    "test_jobs_lists_queued_jobs_oldest_first",
    "test_workers_shows_a_running_worker_and_its_job",
    "test_cancel_a_queued_job_it_never_runs",
    "test_exception",
    "test_info_of_a_failed_job_names_the_error",
    "test_stdout_progress_and_current_job_while_running",
    "test_output_of_a_silent_task_is_empty",
    "test_map_and_enqueue_many_return_results_in_order",
    "test_map_stops_at_the_shortest_iterable",
]
for _name in SHARED:
    globals()[_name] = getattr(test_api, _name)


@pytest.fixture(params=list(MODES))
def queue(request: pytest.FixtureRequest, sshd: Sshd, qdir: Path, local: Queue) -> Iterator[SSHQueue]:
    with open_remote(sshd, qdir, request.param) as remote:
        yield remote


@pytest.fixture
def worker(local: Queue, workers: helpers.Workers, queue: SSHQueue) -> str:
    workers.serve(queue, "test-worker", path=local.path)  # registered as the remote queue sees it
    return "test-worker"


@pytest.fixture(autouse=True)
def _workers_serve_the_local_directory(monkeypatch: pytest.MonkeyPatch, workers: helpers.Workers, local: Queue) -> None:
    """Workers started by the test bodies get the directory itself, not the URL the client uses."""

    def local_path(path: object) -> object:
        return local.path if str(path).startswith("ssh://") else path

    real_start = workers.start
    monkeypatch.setattr(test_api, "run_burst", lambda path, *a, **k: helpers.run_burst(local_path(path), *a, **k))
    monkeypatch.setattr(workers, "start", lambda path, *a, **k: real_start(local_path(path), *a, **k))
