"""notebooks/slurm.ipynb runs under nbclient against the real SLURM, and ``%fsq workers --slurm`` in a real shell."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from chromium import screenshot_html
from nbclient import NotebookClient

from fs_task_queue import Queue

from .conftest import SlurmCluster
from .support import wait_for

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "slurm.ipynb"


def _text(cell: nbformat.NotebookNode) -> str:
    out = []
    for o in cell.get("outputs", []):
        out.append(o.get("text", ""))
        out.append(str(o.get("data", {}).get("text/plain", "")))
        out.append(str(o.get("data", {}).get("text/html", "")))
    return "\n".join(out)


@pytest.mark.timeout(240)
def test_the_slurm_notebook_runs(slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    qpath = tmp_path / "q"
    monkeypatch.setenv("FSQ_SLURM_QUEUE", str(qpath))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    by_source = {c.source.splitlines()[0]: _text(c) for c in code}
    # --dry-run: the script, nothing submitted.
    dry = by_source["%fsq workers --slurm 2 --time 00:10:00 --partition debug --dry-run"]
    assert "exec " in dry and "--partition=debug" in dry and "nothing submitted" in dry, dry
    submitted = by_source["%fsq workers --slurm 2 --time 00:10:00 --max-idle 60"]
    assert "submitted 2 SLURM worker job(s)" in submitted, submitted
    first_ids = _ids(submitted)
    ran = by_source['print(f"ran in SLURM job {slurm_job} on {node}")']
    assert any(f"ran in SLURM job {i} " in ran for i in first_ids), (ran, first_ids)
    assert "[1, 1, 2, 6, 24, 120, 720, 5040, 40320, 362880]" in by_source["import math"]
    pool = by_source["%fsq workers --slurm 1 --time 00:10:00 --max 3 --max-idle 60"]
    assert "the queue's pool is at most 3 worker jobs" in pool, pool
    assert "[0, 1, 4, 9, 16, 25]" in by_source["print(square)"]
    info = by_source["%fsq info"]
    # The dashboard's workers table has the SLURM column: job id, partition, time left.
    assert ">SLURM job</th>" in info and re.search(r"\d+ \(debug\), (\d+ min )?[\d.]+ s left", info), info
    html = next(o["data"]["text/html"] for c in code if c.source == "%fsq info" for o in c.outputs if "data" in o)
    print("screenshot:", screenshot_html(html, "slurm-queue-dashboard.png"))
    assert (
        "canceled" in by_source["%fsq workers --slurm 0"]
        or "no SLURM worker jobs" in by_source["%fsq workers --slurm 0"]
    )
    # Everything the notebook submitted ran in the test cluster's jobs.
    workers = Queue(qpath).workers()
    assert all(w.slurm_job_id for w in workers), workers


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not os.environ.get("CI"):
        pytest.importorskip("IPython", reason="the jupyter extra is not installed: pip install -e '.[test]'")
    from fsq_shell import close_shell, new_shell

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    ip = new_shell()
    try:
        yield ip
    finally:
        close_shell(ip)


def _ids(said: str) -> list[str]:
    """The job ids in what ``%fsq workers --slurm`` or the pool printed."""
    found = re.search(r": (\d+(?: \d+)*)(?:;| \(|$)", said, re.MULTILINE)
    assert found, said
    return found.group(1).split()


def test_fsq_workers_slurm_submits_and_a_pool_follows_the_cells(
    shell: Any, slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from IPython.core.error import UsageError

    queue = Queue(tmp_path / "q")
    before = slurm.jobs("all")
    shell.run_line_magic("fsq", f"use {queue.path}")
    # SLURM options without --slurm, --slurm without --time: said, nothing submitted.
    with pytest.raises(UsageError, match="--time: SLURM options, for `%fsq workers --slurm N"):
        shell.run_line_magic("fsq", "workers 2 --time 1:00")
    with pytest.raises(UsageError, match="--slurm needs --time"):
        shell.run_line_magic("fsq", "workers --slurm 2")
    with pytest.raises(UsageError, match="time 'soon' is not a SLURM time"):
        shell.run_line_magic("fsq", "workers --slurm 1 --time soon")
    assert slurm.jobs("all") == before
    capsys.readouterr()
    # A pool of 2 set from the notebook (1 job now), then a cell group of 4 waits: the cell submits 1 more.
    shell.run_line_magic("fsq", "workers --slurm 1 --time 5:00 --max 2 --max-idle 5")
    first = capsys.readouterr().out
    assert "submitted 1 SLURM worker job(s)" in first, first
    shell.run_cell("%%fsq --map i=range(4) --no-wait --name g\nimport os\njob = os.environ['SLURM_JOB_ID']")
    said = capsys.readouterr().out
    assert "the SLURM pool submitted 1 worker job(s)" in said, said
    group = shell.user_ns["g"]
    wait_for(lambda: all(j.get_status().is_done for j in group), what="the cell group")
    shell.run_line_magic("fsq", "pull g")
    ran_in = set(shell.user_ns["job"])
    submitted = {*_ids(first), *_ids(said)}
    assert len(submitted) == 2 and ran_in <= submitted, (ran_in, submitted)
    # --slurm 0 cancels the queue's worker jobs (a held one here, and whichever still run).
    shell.run_line_magic("fsq", "workers --slurm 1 --time 5:00 --sbatch-arg=--hold")
    (held,) = _ids(capsys.readouterr().out)
    shell.run_line_magic("fsq", "workers --slurm 0")
    canceled = capsys.readouterr().out
    assert "canceled" in canceled and held in _ids(canceled), canceled
    wait_for(lambda: held not in slurm.jobs(), what="the held job to be canceled")
