"""The SLURM fixture itself: a job runs and reports its environment."""

from __future__ import annotations

import time
from pathlib import Path

from .conftest import SlurmCluster


def test_a_job_runs(slurm: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job_id = slurm.run("sbatch", "--parsable", f"--output={out}", "--wrap", "echo job $SLURM_JOB_ID").strip()
    deadline = time.monotonic() + 30
    while slurm.job_state(job_id) != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out.read_text().strip() == f"job {job_id}"
