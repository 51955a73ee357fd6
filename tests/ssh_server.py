"""A throwaway OpenSSH server on 127.0.0.1 for SSHQueue tests, and the options to reach it.

Real ``/usr/sbin/sshd`` (recipe in the shared real-parts guide): a generated
ed25519 host key, a client key authorized for root, password login allowed
(for a real user made by a test), StrictModes off because the keys live in a
temp dir. Clients check the host key strictly against a known_hosts file
written here, and never read the tester's ~/.ssh/config, keys or agent.

Outside CI a missing sshd skips with the command that installs it; with
``CI=true`` it fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, stop_process

SSHD = "/usr/sbin/sshd"


def require_sshd() -> None:
    if os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen"):
        return
    message = "sshd or ssh-keygen is missing: install with apt-get install -y openssh-server"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


class Sshd:
    """``sshd -D`` on 127.0.0.1; :meth:`stop` always ends it."""

    def __init__(self, workdir: Path, extra: tuple[str, ...] = ()) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.authkeys = self.dir / "authkeys"
        self.log = self.dir / "sshd.log"
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def host_pub(self) -> list[str]:
        return self.host_key.with_suffix(".pub").read_text().split()

    def start(self) -> Sshd:
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.authkeys.mkdir(mode=0o755, exist_ok=True)
        (self.authkeys / "root").write_text(self.client_key.with_suffix(".pub").read_text())
        self.port = self.port or free_port()
        pub = self.host_pub()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authkeys}/%u",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication yes",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "Subsystem sftp internal-sftp",
                    "AllowTcpForwarding yes",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    *self.extra,
                    "",
                ]
            )
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("sshd did not accept connections within 20 s") from None
                time.sleep(0.01)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)

    def __enter__(self) -> Sshd:
        """Started; stopped at the block's end, or at once if it does not start in time."""
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def options(self, **changes: object):  # type: ignore[no-untyped-def]
        """SSHOptions that log in as root with the client key and check the host key strictly."""
        from fs_task_queue.storage.sftp import SSHOptions

        base = {
            "key_filename": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "ssh_config": None,
            "allow_agent": False,
            "look_for_keys": False,
        }
        base.update(changes)
        return SSHOptions(**base)  # type: ignore[arg-type]

    def url(self, path: str | os.PathLike[str], user: str = "root") -> str:
        from urllib.parse import quote

        return f"ssh://{user}@127.0.0.1:{self.port}{quote(os.fspath(path))}"


def ssh_opts(sshd: Sshd, **changes: object) -> dict[str, object]:
    """:meth:`Sshd.options` as keyword arguments of SSHQueue."""
    return dict(vars(sshd.options(**changes)))


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    require_sshd()
    with Sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(autouse=True)
def no_connection_left_open() -> Iterator[None]:
    """Every SSH connection a test (or a failed open) made is closed when it ends: none leaks a thread.

    Autouse where imported (a conftest or a test module that talks SSH).
    """
    yield
    import threading

    import paramiko

    left = [t for t in threading.enumerate() if isinstance(t, paramiko.Transport)]
    assert not left, f"{len(left)} SSH connection(s) left open (or their threads still running)"
