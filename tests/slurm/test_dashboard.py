"""The queue dashboard (`%fsq info`, `display(queue)`) shows the SLURM jobs of a queue: pending, then running."""

from __future__ import annotations

import re
from pathlib import Path

from chromium import screenshot_html

from fs_task_queue import Queue
from fs_task_queue.reprs import queue_html
from fs_task_queue.slurm import submit_workers

from .conftest import SlurmCluster
from .support import wait_for


def test_dashboard_shows_pending_then_running_slurm_jobs(slurm: SlurmCluster, tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    assert "No worker is registered" in queue_html(queue)
    out = str(tmp_path / "slurm-%j.out")
    held = submit_workers(queue, 2, time="10:00", partition="debug", output=out, sbatch_args=["--hold"])
    html = queue_html(queue)
    # Pending: named with partition and age, and no advice to start a worker by hand.
    assert "SLURM jobs pending</b> 2:" in html, html
    for job_id in held:
        assert re.search(rf"{job_id} \(debug, submitted [\d.]+ s ago\)", html), html
    assert "No worker is registered" not in html
    print("screenshot:", screenshot_html(html, "slurm-dashboard-pending.png"))
    slurm.run("scontrol", "release", *held)
    wait_for(lambda: len(queue.workers()) == 2, what="both workers to register")
    html = queue_html(queue)
    assert "SLURM jobs pending" not in html, html
    assert all(re.search(rf">{j} \(debug\), \d+ min [\d]+ s left<", html) for j in held), html
    print("screenshot:", screenshot_html(html, "slurm-dashboard-running.png"))
