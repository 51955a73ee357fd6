"""notebooks/ssh.ipynb runs under nbclient against the test sshd, as a laptop's notebook would.

The kernel gets a home directory of its own holding what the notebook tells a
user to set up: ``~/.ssh/config`` with a Host alias (HostName, Port, User,
IdentityFile) and ``~/.ssh/known_hosts``. The URL comes in ``FSQ_SSH_URL``. A
real worker serves the queue directory; the notebook runs in both modes (the
helper where the remote interpreter has fs-task-queue, given by
``FSQ_SSH_REMOTE_PYTHON``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import quote

import nbformat
import pytest
from helpers import Workers, wait_for
from nbclient import NotebookClient
from ssh_server import Sshd

from fs_task_queue import Queue

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "ssh.ipynb"


def _outputs(nb: nbformat.NotebookNode) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", ""))
            text.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["sftp", "helper"])
def test_the_ssh_notebook_runs(
    mode: str, sshd: Sshd, qdir: Path, local: Queue, workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert NOTEBOOK.exists()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "committed with outputs"
    home = tmp_path / "laptop-home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    (ssh_dir / "config").write_text(
        f"Host testcluster\n    HostName 127.0.0.1\n    Port {sshd.port}\n    User root\n"
        f"    IdentityFile {sshd.client_key}\n"
    )
    (ssh_dir / "known_hosts").write_text(sshd.known_hosts.read_text())
    proc = workers.start(local.path, "--name", "nb-worker", "--max-poll-interval", "0.2")
    wait_for(lambda: proc.poll() is not None or any(w.id == "nb-worker" for w in local.workers()), what="worker")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("IPYTHONDIR", str(home / ".ipython"))
    monkeypatch.setenv("FSQ_SSH_URL", f"ssh://testcluster{quote(str(qdir))}")  # the space and quotes encoded
    monkeypatch.setenv("PARAMIKO_SSH_ALLOW_AGENT", "false")
    monkeypatch.setenv("PARAMIKO_SSH_LOOK_FOR_KEYS", "false")
    if mode == "helper":
        monkeypatch.setenv("FSQ_SSH_REMOTE_PYTHON", sys.executable)
    else:
        monkeypatch.setenv("FSQ_SSH_REMOTE_PYTHON", f"{sys.base_prefix}/bin/python3")  # no fs-task-queue there
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = _outputs(nb)
    assert f"mode: {mode}" in text
    assert "42" in text and "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in text and "{'finished'}" in text
    assert "499500" in text  # the %%fsq cell's variable came back
    assert os.path.isdir(qdir)
