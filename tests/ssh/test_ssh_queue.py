"""SSHQueue end to end: a real sshd on 127.0.0.1, a real worker process on the same directory.

The queue directory is on this machine; the client reaches it only through
SSH (SFTP), the worker through the filesystem, as a laptop and a cluster would.
"""

from __future__ import annotations

import operator
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ADMIN_SCRIPT, WAIT, wait_for
from ssh_server import Sshd
from ssh_server import ssh_opts as _opts

from fs_task_queue import HostKeyError, JobStatus, Queue, QueueError, RemoteConnectionError, RemoteError, progress
from fs_task_queue.plugins import SSHQueue
from fs_task_queue.storage.sftp import SFTPStorage


def shout(text: str) -> str:
    print(f"hello {text}")
    progress(2, 2, "all done")
    return text.upper()


def fail(x: int) -> int:
    raise ValueError(f"bad value {x}")


def test_submit_run_and_read_back_over_ssh(remote: SSHQueue, worker: str) -> None:
    assert remote.storage.local_path("") is None  # really through SFTP
    job = remote.enqueue(operator.add, 1, 2)
    assert job.wait(timeout=WAIT) == 3
    loud = remote.enqueue(shout, "ssh")
    assert loud.wait(timeout=WAIT) == "SSH"
    assert loud.stdout == "hello ssh\n"
    assert loud.read_output("stdout", 6) == b"ssh\n"
    report = loud.progress
    assert report is not None and (report.done, report.total, report.message) == (2, 2, "all done")
    info = loud.info()
    assert info.status == "finished" and info.worker == worker and info.started_at is not None
    bad = remote.enqueue(fail, 7)
    with pytest.raises(ValueError, match="bad value 7") as err:
        bad.wait(timeout=WAIT)
    assert isinstance(err.value, RemoteError) and "in fail" in err.value.remote_traceback
    group = remote.map(operator.mul, range(50), range(50))
    assert group.results(timeout=WAIT) == [i * i for i in range(50)]
    states = remote.snapshot(group)
    assert {s.status for s in states.values()} == {JobStatus.FINISHED}
    assert remote.stats()["finished"] >= 52
    assert [w.id for w in remote.workers()] == [worker]
    assert remote.job(job.id).result == 3


def sleep_until(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.02)


def test_a_running_job_over_ssh_says_when_it_started(remote: SSHQueue, worker: str, tmp_path: Path) -> None:
    # SFTP v3 has no ctime: the start time comes from the worker's claim folder, with no write per claim.
    time.sleep(1.1)  # SFTP times are whole seconds: the claim falls in a later second than any earlier file
    gate = tmp_path / "gate"
    before = time.time()
    job = remote.enqueue(sleep_until, str(gate))
    wait_for(lambda: job.get_status() is JobStatus.STARTED, what="the job to start")
    info = job.info()
    gate.touch()
    assert info.worker == worker and info.started_at is not None
    assert before - 1 <= info.started_at <= time.time()
    job.wait(timeout=WAIT)


def test_executor_over_ssh(remote: SSHQueue, worker: str) -> None:
    with remote.executor() as pool:
        futures = [pool.submit(operator.add, i, 1) for i in range(10)]
        assert [f.result(timeout=WAIT) for f in futures] == list(range(1, 11))


def test_queue_url_and_cancel(sshd: Sshd, qdir: Path, local: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    _env_for_cli(sshd, monkeypatch)
    with Queue(sshd.url(qdir)) as queue:  # picked by the URL
        assert isinstance(queue.storage, SFTPStorage)
        job = queue.enqueue(operator.add, 2, 2)
        assert job.get_status() is JobStatus.QUEUED
        assert job.cancel()
        assert job.get_status() is JobStatus.CANCELED
        assert local.job(job.id).get_status() is JobStatus.CANCELED


def _env_for_cli(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's environment variables, and a HOME whose known_hosts trusts the test sshd."""
    home = sshd.dir / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh/known_hosts").write_text(sshd.known_hosts.read_text())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PARAMIKO_SSH_KEYFILE", str(sshd.client_key))
    monkeypatch.setenv("PARAMIKO_SSH_ALLOW_AGENT", "false")
    monkeypatch.setenv("PARAMIKO_SSH_LOOK_FOR_KEYS", "no")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def test_admin_cli_over_ssh(sshd: Sshd, qdir: Path, local: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    _env_for_cli(sshd, monkeypatch)
    job = local.enqueue(operator.add, 1, 1)
    url = sshd.url(qdir)

    def cli(*args: str) -> str:
        done = subprocess.run([*ADMIN_SCRIPT, *args], capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "queued: 1" in cli("info", url)
    assert job.id in cli("jobs", url)
    assert "operator.add" in cli("show", url, job.id) or "_operator.add" in cli("show", url, job.id)
    assert "canceled" in cli("cancel", url, job.id)
    assert "purged 1" in cli("purge", "--older-than", "0", url)
    bad = subprocess.run([*ADMIN_SCRIPT, "info", url + "-missing"], capture_output=True, text=True, timeout=WAIT)
    assert bad.returncode == 1 and "no queue" in bad.stderr


def test_host_key_unknown_and_changed(sshd: Sshd, qdir: Path, local: Queue, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    home = tmp_path / "home"
    home.mkdir()
    env_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)  # no ~/.ssh/known_hosts of the tester's
    try:
        with pytest.raises(HostKeyError, match=r"not in your known_hosts.*SHA256:") as err:
            SSHQueue(sshd.url(qdir), **_opts(sshd, known_hosts=str(empty)))
        assert "accept_new_host_key=True" in str(err.value)
        # The explicit opt-in trusts it and records it; the next connection needs no opt-in.
        with SSHQueue(sshd.url(qdir), **_opts(sshd, known_hosts=str(empty), accept_new_host_key=True)):
            pass
        assert f"[127.0.0.1]:{sshd.port}" in (home / ".ssh/known_hosts").read_text()
        with SSHQueue(sshd.url(qdir), **_opts(sshd, known_hosts=str(empty))):
            pass
        wrong = tmp_path / "wrong_known_hosts"
        other = tmp_path / "other_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        pub = other.with_suffix(".pub").read_text().split()
        wrong.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
        (home / ".ssh/known_hosts").unlink()
        with pytest.raises(HostKeyError, match=r"CHANGED.*ssh-keygen -R"):
            SSHQueue(sshd.url(qdir), **_opts(sshd, known_hosts=str(wrong), accept_new_host_key=True))
    finally:
        if env_home is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = env_home


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ssh://", "names no host"),
        ("ssh://host", "names no queue directory"),
        ("ssh://host:notaport/q", "bad port"),
        ("ssh://host/q?x=1", "'\\?' or '#'"),
        ("sftp://host/q", "not an ssh:// URL"),
    ],
)
def test_malformed_urls(url: str, message: str) -> None:
    with pytest.raises(QueueError, match=message):
        SSHQueue(url)


def test_unreachable_and_refused_and_unauthorized(sshd: Sshd, qdir: Path, local: Queue, tmp_path: Path) -> None:
    with pytest.raises(RemoteConnectionError, match="cannot find the SSH host"):
        SSHQueue("ssh://root@no-such-host.invalid/q", **_opts(sshd))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(RemoteConnectionError, match="refused the connection on port"):
        SSHQueue(f"ssh://root@127.0.0.1:{closed_port}/q", **_opts(sshd))
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(RemoteConnectionError, match=r"refused the login of user 'root'.*ssh-copy-id"):
        SSHQueue(sshd.url(qdir), **_opts(sshd, key_filename=str(stranger)))
    with pytest.raises(QueueError, match="does not exist"):
        SSHQueue(sshd.url(qdir), **_opts(sshd, key_filename=str(tmp_path / "nokey")))
    with pytest.raises(QueueError, match="there is no queue at"):
        SSHQueue(sshd.url(qdir.parent / "nothing here"), **_opts(sshd))
    with pytest.raises(TypeError, match="unknown option"):
        SSHQueue(sshd.url(qdir), colour="blue")


class CuttingProxy:
    """A real TCP relay to sshd that cuts its first connection after ``cut_after`` bytes.

    Counted from the client (requests lost on the way) or, with ``replies=True``,
    from the server (requests carried out, but their replies lost: the case a
    retry must not double).
    """

    def __init__(self, port: int, cut_after: int, replies: bool = False) -> None:
        self.target = port
        self.cut_after = cut_after
        self.replies = replies
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.passed = 0  # bytes of the first connection in the counted direction, up to the cut
        self.cut = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            limit = self.cut_after if self.connections == 1 else None
            up, down = (None, limit) if self.replies else (limit, None)
            threading.Thread(target=self._pump, args=(client, upstream, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, down), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    self.cut.set()
                    break
                dst.sendall(data)
                sent += len(data)
                if limit is not None:
                    self.passed = sent
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept(): shutdown does.
        # Left running, the acceptors kept later tests from being single-threaded.
        try:
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server.close()
        self._acceptor.join(10)


def _submit_through(proxy: CuttingProxy, sshd: Sshd, qdir: Path) -> tuple[list[str], int]:
    known = sshd.dir / f"known_hosts_proxy_{proxy.port}"
    known.write_text(f"[127.0.0.1]:{proxy.port} {' '.join(sshd.host_pub()[:2])}\n")
    url = f"ssh://root@127.0.0.1:{proxy.port}{qdir}"
    with SSHQueue(url, **_opts(sshd, known_hosts=str(known))) as queue:
        group = queue.map(operator.add, ["x" * 1000] * 300, [str(i) for i in range(300)])
        return [j.id for j in group], queue.storage.connects  # type: ignore[attr-defined]


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7, 0.8, 0.85])
@pytest.mark.parametrize("replies", [False, True])
def test_connection_cut_mid_submit_leaves_no_partial_and_no_duplicate(
    sshd: Sshd, tmp_path: Path, where: float, replies: bool
) -> None:
    # Measure how many bytes the submission takes each way, then cut at a fraction of that.
    # A connection also carries traffic that varies from run to run (the background
    # command that learns the remote user and Python, the helper's start): a cut
    # placed late can fall after a shorter run's end. Such a run proves nothing,
    # so measure and try again (up to 3 times) until the cut lands mid-submit.
    for attempt in range(3):
        calibrate = tmp_path / f"calibrate-{attempt}"
        Queue(calibrate)
        counter = CuttingProxy(sshd.port, 1 << 40, replies)
        try:
            _submit_through(counter, sshd, calibrate)
        finally:
            counter.close()
        qdir = tmp_path / f"q-{attempt}"
        local = Queue(qdir)
        proxy = CuttingProxy(sshd.port, int(counter.passed * where), replies)
        try:
            ids, connects = _submit_through(proxy, sshd, qdir)
        finally:
            proxy.close()
        if proxy.cut.is_set():
            break
    assert proxy.cut.is_set() and connects == 2  # the first connection really was cut mid-way
    queued = local.jobs(JobStatus.QUEUED)
    assert sorted(j.id for j in queued) == sorted(ids) and len(ids) == 300  # each once, none missing
    for job in queued[:5]:
        assert job.info().function == "_operator.add"  # whole, verified task files


def test_dropped_connection_is_made_again(remote: SSHQueue, worker: str) -> None:
    job = remote.enqueue(operator.add, 5, 5)
    storage = remote.storage
    # Kill the transport under the storage, as a network drop would.
    storage._conn._clients[-1].get_transport().close()  # type: ignore[attr-defined]
    assert job.wait(timeout=WAIT) == 10
    assert storage.connects == 2  # type: ignore[attr-defined]


def test_python_version_warning_names_both(sshd: Sshd, qdir: Path, local: Queue) -> None:
    # The remote python3 here is /usr/bin/python3 or this one; either way no mismatch of major.minor
    # is expected unless they differ, and then the warning must say so.
    import warnings

    remote_py = subprocess.run(
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
    ).stdout.strip()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SSHQueue(sshd.url(qdir), **_opts(sshd)):
            pass
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    mismatch = [w for w in caught if "Python" in str(w.message)]
    assert bool(mismatch) == (remote_py != ours)


def test_ssh_config_alias_and_proxyjump(sshd: Sshd, qdir: Path, local: Queue, tmp_path: Path) -> None:
    bastion = Sshd(tmp_path / "bastion").start()  # a second real sshd: the only way "in"
    try:
        known = tmp_path / "known_hosts"
        known.write_text(sshd.known_hosts.read_text() + bastion.known_hosts.read_text())
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host jump\n  HostName 127.0.0.1\n  Port {bastion.port}\n  User root\n"
            f"  IdentityFile {bastion.client_key}\n"
            f"Host cluster\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n  IdentityFile {sshd.client_key}\n"
            "  ProxyJump jump\n"
        )
        opts = _opts(sshd, key_filename=None, ssh_config=str(config), known_hosts=str(known))
        with SSHQueue(f"ssh://cluster{qdir}", **opts) as queue:
            job = queue.enqueue(operator.add, 20, 22)
            assert local.job(job.id).get_status() is JobStatus.QUEUED
        assert "Accepted publickey for root" in bastion.log.read_text()  # it really went through the bastion
    finally:
        bastion.stop()


@pytest.fixture
def password_user() -> Iterator[tuple[str, str, Path]]:
    """A real user with a password (sshd checks it against /etc/shadow), removed afterwards."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("password login needs a real user: run as root (CI does)")
        pytest.skip("needs root to create a user")
    name, password = "fsqtest", "p@ss:w/rd%"  # characters a URL must percent-encode
    subprocess.run(["userdel", "-r", name], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}", text=True, check=True)
        yield name, password, Path(f"/home/{name}")
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)


def test_password_in_url_logs_in_as_that_user(sshd: Sshd, password_user: tuple[str, str, Path]) -> None:
    from urllib.parse import quote

    name, password, home = password_user
    queue_dir = home / "q"
    Queue(queue_dir)
    subprocess.run(["chown", "-R", f"{name}:{name}", str(queue_dir)], check=True)
    url = f"ssh://{name}:{quote(password, safe='')}@127.0.0.1:{sshd.port}/~/q"
    with SSHQueue(url, **_opts(sshd, key_filename=None)) as queue:
        assert password not in queue.path and quote(password, safe="") not in queue.path
        job = queue.enqueue(operator.add, 1, 1)
        assert queue.storage.user().name == name  # "you" is the remote login user
    import pwd

    (task,) = [p for p in (queue_dir / "queued").rglob("*") if p.is_file()]
    assert task.name.endswith(job.id) or job.id in task.name
    assert task.stat().st_uid == pwd.getpwnam(name).pw_uid  # written by the remote login user
    with pytest.raises(RemoteConnectionError, match="refused the login"):
        SSHQueue(f"ssh://{name}:wrong@127.0.0.1:{sshd.port}/~/q", **_opts(sshd, key_filename=None))


def test_login_through_ssh_agent(
    sshd: Sshd, qdir: Path, local: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real ssh-agent holding the client key; the client is given no key file and looks for none.
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, what="ssh-agent's socket")
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(sshd.client_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with SSHQueue(sshd.url(qdir), **_opts(sshd, key_filename=None, allow_agent=True)) as queue:
            assert queue.stats()["queued"] == 0
        # Without the agent the same login is refused, and the message says the agent was tried.
        monkeypatch.delenv("SSH_AUTH_SOCK")
        with pytest.raises(RemoteConnectionError, match="ssh-agent"):
            SSHQueue(sshd.url(qdir), **_opts(sshd, key_filename=None, allow_agent=True))
    finally:
        agent.terminate()
        agent.wait()
