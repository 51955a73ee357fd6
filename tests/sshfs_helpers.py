"""A throwaway OpenSSH server on 127.0.0.1 and sshfs mounts of its directories, for tests.

Everything here is real: ``/usr/sbin/sshd`` with a generated host key (root key
auth, StrictModes off because the keys live under a temp dir), and ``sshfs``
mounts that check the host key strictly against a known_hosts file written here.
Mounts disable sshfs's directory cache and the kernel's FUSE caches, so a second
mount of the same directory (another "host") sees changes at once.

Outside CI a missing tool skips the test with a reason that says how to install
it; with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import stop_process

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class SSHServer:
    """``sshd -D`` on 127.0.0.1 with root key auth; :meth:`stop` always ends it."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.log = self.dir / "sshd.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SSHServer:
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        authkeys = self.dir / "authkeys"
        authkeys.mkdir(mode=0o755, exist_ok=True)
        (authkeys / "root").write_text(self.client_key.with_suffix(".pub").read_text())
        self.port = _free_port()
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authkeys}/%u",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "Subsystem sftp internal-sftp",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "",
                ]
            )
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

        def accepting() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        _wait(accepting, 20, "sshd to accept connections")
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)


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

    def __init__(self, server: SSHServer, remote_dir: Path, mountpoint: Path) -> None:
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

        _wait(mounted, 20, f"sshfs to mount {self.mountpoint}")
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
