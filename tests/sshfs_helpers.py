"""sshfs mounts of directories served by the test sshd (tests/ssh_server.py's ``Sshd``), for tests.

Everything here is real: ``/usr/sbin/sshd`` (root key auth, StrictModes off
because the keys live under a temp dir), and ``sshfs`` mounts that check the
host key strictly against the known_hosts file ``Sshd`` writes.
Mounts disable sshfs's directory cache and the kernel's FUSE caches, so a second
mount of the same directory (another "host") sees changes at once.

Outside CI a missing tool skips the test with a reason that says how to install
it; with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import wait_for
from ssh_server import SSHD, Sshd

INSTALL_HINT = "apt-get install -y openssh-server sshfs (and /dev/fuse must exist)"


def require_ssh_tools() -> None:
    """Skip (or fail under CI=true) unless sshd, ssh-keygen, sshfs and /dev/fuse are available."""
    missing = [
        what
        for what, ok in (
            ("sshd", os.access(SSHD, os.X_OK)),
            ("ssh-keygen", shutil.which("ssh-keygen") is not None),
            ("sshfs", shutil.which("sshfs") is not None),
            ("fusermount3", shutil.which("fusermount3") is not None or shutil.which("fusermount") is not None),
            ("/dev/fuse", os.path.exists("/dev/fuse")),
        )
        if not ok
    ]
    if not missing:
        return
    message = f"missing {', '.join(missing)}: install with {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def require_tool(name: str, install: str) -> str:
    """The path of the program ``name``; skip (fail under CI=true) if it is missing."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is missing: install it with {install}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


class SshfsMount:
    """``sshfs -f`` of ``remote_dir`` (on the test sshd) at ``mountpoint``; :meth:`unmount` always ends it."""

    #: Strict host keys, no agent or user config, and no caches between the two "hosts".
    OPTIONS = (
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
        "dir_cache=no",
        "entry_timeout=0",
        "attr_timeout=0",
        "negative_timeout=0",
    )

    def __init__(self, server: Sshd, remote_dir: Path, mountpoint: Path) -> None:
        self.server = server
        self.remote_dir = remote_dir
        self.mountpoint = mountpoint
        self.log = mountpoint.parent / f"sshfs-{mountpoint.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> SshfsMount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        options = ",".join(
            (
                f"IdentityFile={self.server.client_key}",
                f"UserKnownHostsFile={self.server.known_hosts}",
                "GlobalKnownHostsFile=/dev/null",
                *self.OPTIONS,
            )
        )
        cmd = [
            "sshfs",
            "-f",
            "-F",
            "/dev/null",
            "-p",
            str(self.server.port),
            "-o",
            options,
            f"root@127.0.0.1:{self.remote_dir}",
            str(self.mountpoint),
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def mounted() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"sshfs exited {self.proc.returncode}: {self.log.read_text()}")
            return os.path.ismount(self.mountpoint)

        wait_for(mounted, 20, f"sshfs to mount {self.mountpoint}")
        return self

    def mounted(self) -> bool:
        """Whether the mount point is in the mount table (alive or not)."""
        target = os.path.realpath(self.mountpoint)
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            return any(line.split()[1].replace("\\040", " ") == target for line in mounts if line.strip())

    def kill(self) -> None:
        """Kill the sshfs process: the mount stays but every operation fails (a network partition)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def unmount(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        fusermount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
        if self.mounted():  # also a dead mount whose sshfs was killed (os.path.ismount says False)
            done = subprocess.run([fusermount, "-u", str(self.mountpoint)], capture_output=True)
            if done.returncode != 0:  # still busy: detach it lazily rather than leave it behind
                subprocess.run([fusermount, "-u", "-z", str(self.mountpoint)], capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
