"""SLURM workers submitted from a laptop through ``SSHQueue``: a real sshd on 127.0.0.1 in front of the real SLURM.

The one command a queue runs on its host is ``python -m fs_task_queue slurm
...`` there, its words quoted one by one: these tests check that it submits and
serves, that what a user typed never reaches a shell, and that its failures say
what to fix.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ssh_server import Sshd, no_connection_left_open, require_sshd, ssh_opts

from fs_task_queue import Queue
from fs_task_queue.errors import SlurmError
from fs_task_queue.plugins import SSHQueue
from fs_task_queue.slurm import cancel_workers, list_jobs, scale, submit_workers

from .conftest import SlurmCluster
from .support import wait_for
from .tasks import slurm_job_of_task

__all__ = ["no_connection_left_open"]  # autouse here too: every SSH connection closed after each test


@pytest.fixture(scope="module")
def sshd_to_slurm(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """An sshd whose sessions see the test cluster (a login node's sshd sees its site's slurm.conf)."""
    require_sshd()
    with Sshd(tmp_path_factory.mktemp("sshd-slurm"), extra=(f"SetEnv SLURM_CONF={slurm_cluster.conf}",)) as server:
        yield server


@pytest.fixture
def remote(sshd_to_slurm: Sshd, slurm: SlurmCluster, tmp_path: Path) -> Iterator[SSHQueue]:
    Queue(tmp_path / "q")
    with SSHQueue(sshd_to_slurm.url(tmp_path / "q"), **ssh_opts(sshd_to_slurm, remote_python=sys.executable)) as q:
        yield q


def test_workers_submitted_through_ssh_serve_the_queue(remote: SSHQueue, slurm: SlurmCluster) -> None:
    jobs = [remote.enqueue(slurm_job_of_task) for _ in range(4)]
    ids = submit_workers(remote, 2, time="5:00", max_idle=3)
    assert len(ids) == 2 and all(i.isdigit() for i in ids), ids
    ran_in = {job.wait(timeout=60) for job in jobs}
    assert ran_in <= set(ids) and ran_in, (ran_in, ids)
    # The workers end when idle (--max-idle went through), and so do their jobs.
    wait_for(lambda: not set(ids) & set(slurm.jobs()), what="the idle workers' jobs to end")
    assert {slurm.job_state(i) for i in ids} == {"COMPLETED"}


def test_nothing_a_user_typed_reaches_a_shell(remote: SSHQueue, slurm: SlurmCluster, tmp_path: Path) -> None:
    bait = tmp_path / "pwned"
    comment = f"$(touch {bait}); touch {bait}"
    ids = submit_workers(remote, 1, time="5:00", sbatch_args=[f"--comment={comment}"], worker_args=["--max-jobs=1"])
    shown = slurm.run("scontrol", "show", "job", ids[0])
    assert f"Comment={comment}" in shown, shown  # sbatch got it as one word, verbatim
    remote.enqueue(slurm_job_of_task).wait(timeout=60)
    assert not bait.exists()
    # A partition that is not a name is refused there, with the rule, and nothing is submitted.
    before = set(slurm.jobs("all"))
    with pytest.raises(SlurmError, match=r"partition 'x; touch .*use letters, digits"):
        submit_workers(remote, 1, time="5:00", partition=f"x; touch {bait}")
    assert set(slurm.jobs("all")) == before and not bait.exists()


def test_dry_run_shows_the_script_the_host_would_submit(remote: SSHQueue, capsys: pytest.CaptureFixture[str]) -> None:
    assert submit_workers(remote, 3, time="1:00:00", partition="debug", dry_run=True) == []
    out = capsys.readouterr().out
    assert "# 3 x: sbatch --parsable --time=1:00:00" in out and "--partition=debug" in out
    # The worker is the host's Python (remote_python), exec'd on the queue's directory there.
    assert f"exec {sys.executable} -m fs_task_queue worker --path " in out
    assert remote.storage.root in out  # type: ignore[attr-defined]


def test_scale_through_ssh_follows_the_backlog(remote: SSHQueue, slurm: SlurmCluster) -> None:
    with pytest.raises(SlurmError, match="has no SLURM pool policy"):
        scale(remote)
    jobs = [remote.enqueue(slurm_job_of_task) for _ in range(3)]
    # Held: the pool's jobs wait until released, so no worker empties the queue before scale looks.
    first = submit_workers(remote, 1, time="5:00", max_workers=2, max_idle=3, sbatch_args=["--hold"])
    result = scale(remote)
    assert len(result.submitted) == 1 and "submitted 1 of the 1 needed (pool size 2)" in result.message, result
    slurm.run("scontrol", "release", *first, *result.submitted)
    assert {job.wait(timeout=60) for job in jobs} <= {*first, *result.submitted}


def test_a_host_without_fs_task_queue_says_what_to_install(sshd_to_slurm: Sshd, tmp_path: Path) -> None:
    Queue(tmp_path / "q")
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    options = ssh_opts(sshd_to_slurm, remote_python=str(bare / "bin" / "python"))
    expected = r"No module named fs_task_queue.*install fs-task-queue there"
    with SSHQueue(sshd_to_slurm.url(tmp_path / "q"), **options) as q, pytest.raises(SlurmError, match=expected):
        submit_workers(q, 1, time="5:00")


def test_pending_jobs_seen_and_canceled_through_ssh(remote: SSHQueue, slurm: SlurmCluster) -> None:
    held = submit_workers(remote, 2, time="5:00", sbatch_args=["--hold"])
    assert {j.job_id for j in list_jobs(remote) if j.state == "pending"} == set(held)
    assert sorted(cancel_workers(remote, pending_only=True)) == sorted(held)
    wait_for(lambda: not set(held) & set(slurm.jobs()), what="the held jobs to be canceled")


def test_the_cli_submits_to_an_ssh_url_on_its_host(
    sshd_to_slurm: Sshd,
    slurm: SlurmCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fs_task_queue.cli import main

    Queue(tmp_path / "q")
    home = tmp_path / "laptop-home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "known_hosts").write_text(sshd_to_slurm.known_hosts.read_text())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PARAMIKO_SSH_KEYFILE", str(sshd_to_slurm.client_key))
    monkeypatch.setenv("PARAMIKO_SSH_ALLOW_AGENT", "false")
    monkeypatch.setenv("PARAMIKO_SSH_LOOK_FOR_KEYS", "false")
    monkeypatch.setenv("FSQ_SSH_REMOTE_PYTHON", sys.executable)
    url = sshd_to_slurm.url(tmp_path / "q")
    assert main(["slurm", "submit", url, "--time", "5:00", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"worker --path {tmp_path / 'q'} " in out, out  # the host's path, not the URL taken for a local one
    assert main(["slurm", "submit", url, "--time", "5:00", "--sbatch-arg=--hold"]) == 0
    (job_id,) = capsys.readouterr().out.split(": ")[1].split()
    assert slurm.job_state(job_id) == "PENDING"
    assert main(["slurm", "cancel", url]) == 0
    assert f"canceled 1 worker job(s): {job_id}" in capsys.readouterr().out
