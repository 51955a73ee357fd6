"""Live claimers must not be presumed dead on the host where their flock is visible.

A claimer without a ``workers/<id>`` heartbeat file (a custom worker built on
``Queue.dequeue()``, or a worker finishing its last task after
``fs-task-queue stop-worker`` deleted that file) still holds its flock on
``claimed/<id>/.alive``; on the same host and mount that lock proves it alive.
"""

from __future__ import annotations

import textwrap

import pytest

from fs_task_queue import JobStatus

from .faultlib import PYTHON, ends, executions, mark, run_cli, wait_for

CUSTOM_WORKER = textwrap.dedent(
    """
    import sys
    from fs_task_queue import Queue

    queue = Queue(sys.argv[1], create=False)
    job = queue.dequeue(timeout=60, worker_id="custom")
    print("running", job.id, flush=True)
    print("result", job(), flush=True)
    """
)


@pytest.mark.timeout(90)
def test_dequeue_claimer_holding_its_lock_is_not_presumed_dead(lab):
    """Regression: Recoverer.verdict() once ignored a held flock when workers/<id> was missing, so a
    queue.dequeue() claimer was presumed dead after --dead-after and its running task ran again."""
    job = lab.queue.enqueue(mark, str(lab.fx), "d", first_sleep=6, end=True)
    custom = lab.procs.start([PYTHON, "-c", CUSTOM_WORKER, str(lab.path)], label="custom")
    wait_for(lambda: executions(lab.fx)["d"] == 1, what="the custom worker to start the task")
    lab.worker("w", "--dead-after", "1", "--recover-interval", "0.3", "--max-poll-interval", "0.2")
    assert lab.procs.wait(custom) == 0, lab.procs.log(custom)
    assert job.get_status() is JobStatus.FINISHED and ends(lab.fx)["d"] >= 1
    t = lab.tally("dequeue() claimer alive, same host", {"d": job}, note="flock held: not presumed dead")
    assert executions(lab.fx)["d"] == 1, "a claimer whose flock is held was presumed dead: its task ran twice"
    assert not t.lost and not t.committed_twice


@pytest.mark.timeout(90)
def test_recover_cli_leaves_a_stopping_workers_task_alone(lab):
    """Regression: after stop-worker deleted workers/<id>, `fs-task-queue recover` (wall clock) once
    took the task of the still-running worker at once."""
    worker = lab.registered_worker("w", "--recover-interval", "0.5", "--max-poll-interval", "0.2")
    job = lab.running("r", first_sleep=5)
    out = run_cli("stop-worker", str(lab.path), "w")
    assert out.returncode == 0, out.stderr
    out = run_cli("recover", str(lab.path))  # the worker is alive, finishing its task: nothing to recover
    assert out.returncode == 0, out.stderr
    assert lab.procs.wait(worker) == 0, lab.procs.log(worker)
    drain = lab.worker("drain", "--burst")
    assert lab.procs.wait(drain) == 0, lab.procs.log(drain)
    t = lab.tally("`recover` after stop-worker", {"r": job}, note="stopping worker keeps its task")
    assert out.stdout.startswith("recovered 0 job(s)"), out.stdout
    assert executions(lab.fx)["r"] == 1 and job.info().attempt == 1
    assert not t.lost and not t.committed_twice
