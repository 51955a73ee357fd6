"""Helpers of the SLURM suite's tests (not task functions: those are in tasks.py)."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import WAIT, wait_for

__all__ = ["WAIT", "job_log", "wait_for", "worker_processes"]


def worker_processes(qpath: Path) -> list[int]:
    """Processes whose command line names the queue (workers and their task processes)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(qpath) in cmdline:
            found.append(int(pid))
    return found


def job_log(tmp_path: Path, job_id: str) -> str:
    """The output file of SLURM job ``job_id`` submitted with ``--output tmp_path/slurm-%j.out``."""
    path = tmp_path / f"slurm-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""
