"""Task functions of the SLURM suite, shared by its test modules.

Workers in SLURM jobs cannot import the test package: conftest registers this
module to be pickled by value, so a task's function travels with the task.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def slurm_job_of_task() -> str:
    """The SLURM job the task ran in."""
    return os.environ.get("SLURM_JOB_ID", "")


def note_run(runs: str) -> str:
    """Append the SLURM job that runs it to the file ``runs``; that job."""
    with open(runs, "a") as f:
        f.write(f"{slurm_job_of_task()}\n")
    return slurm_job_of_task()


def hold_until(path: str, runs: str | None = None) -> str:
    """Run until ``path`` exists (noting the run in ``runs`` first, if given); the job it ran in."""
    if runs is not None:
        note_run(runs)
    while not os.path.exists(path):
        time.sleep(0.05)
    return slurm_job_of_task()


def first_run_hangs(marker: str) -> str:
    """The first run never ends by itself (it records that it started); later runs return at once."""
    runs = Path(marker)
    with open(runs, "a") as f:
        f.write(f"{slurm_job_of_task()}\n")
    if len(runs.read_text().split()) == 1:
        time.sleep(600)
    return "done"
