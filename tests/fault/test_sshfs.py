"""A queue on sshfs: one mount, then two mounts of one directory acting as two hosts.

A real sshd on 127.0.0.1 serves the directory; sshfs mounts it with strict host
key checking and without attribute or directory caches. Commits are counted by
an inotify watch on the server's own ``results/`` directory, which sees every
rename and link that any mount makes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fs_task_queue import JobStatus, Queue

from .faultlib import (
    NOTES,
    WORKER,
    CommitCounter,
    Procs,
    all_claimed,
    claimed,
    ends,
    executions,
    mark,
    queued_names,
    record,
    registered,
    run_cli,
    tally,
    wait_for,
)

# Remote "hosts": heartbeats every 0.5 s (sshfs shows whole seconds), presumed dead after 3 s unchanged.
NET = ["--heartbeat-interval", "0.5", "--dead-after", "3", "--recover-interval", "0.5", "--max-poll-interval", "0.2"]


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    remote = tmp_path / "remote"
    remote.mkdir()
    fx = tmp_path / "fx"
    fx.mkdir()
    return remote, remote / "q", fx


@dataclass
class TwoHosts:
    """One directory on the server mounted twice, as "host-a" and "host-b"; the queue made through mount A."""

    server_q: Path  # the queue as the server sees it
    fx: Path
    a: Path  # the queue through mount A
    b: Path  # the queue through mount B
    queue: Queue  # opened through mount A
    commits: CommitCounter
    procs: Procs

    def worker(self, host: str, name: str, *args: str) -> subprocess.Popen[bytes]:
        """A worker on mount ``host`` ("a" or "b") as host-<host>, started with ``NET`` then ``args``; registered."""
        path = self.a if host == "a" else self.b
        proc = self.procs.worker(path, name, *NET, *args, env={"FSQ_HOST_ID": f"host-{host}"})
        wait_for(lambda: registered(self.server_q, name), what=f"the worker on mount {host.upper()} to register")
        return proc

    def running_on_a(self, key: str, first_sleep: float) -> Any:
        """Enqueue the task ``key`` (sleeps ``first_sleep`` on its first run) and wait until it runs on mount A."""
        job = self.queue.enqueue(mark, str(self.fx), key, first_sleep=first_sleep, end=True)
        wait_for(lambda: executions(self.fx)[key] == 1, what="the task to start on mount A")
        return job


@pytest.fixture
def hosts(tmp_path: Path, mounts: Any, procs: Procs) -> Iterator[TwoHosts]:
    remote, server_q, fx = _setup(tmp_path)
    mnt_a, mnt_b = mounts(remote, "a"), mounts(remote, "b")
    queue = Queue(mnt_a / "q")
    commits = CommitCounter(server_q / "results")
    try:
        yield TwoHosts(server_q, fx, mnt_a / "q", mnt_b / "q", queue, commits, procs)
    finally:
        procs.close()  # processes first: they may still commit
        commits.close()


@pytest.mark.timeout(120)
def test_one_sshfs_mount_two_workers_500_tasks(tmp_path, mounts, procs):
    remote, server_q, fx = _setup(tmp_path)
    mnt = mounts(remote, "a")
    path = mnt / "q"
    queue = Queue(path)  # created through the mount
    assert os.stat(server_q).st_mode & 0o777 == 0o700
    commits = CommitCounter(server_q / "results")
    try:
        t0 = time.monotonic()
        keys = [f"m{i}" for i in range(500)]
        jobs = dict(zip(keys, queue.map(mark, [str(fx)] * len(keys), keys), strict=True))
        t1 = time.monotonic()
        workers = [procs.worker(path, f"sshfs{n}", "--burst", "--log-level", "WARNING", *NET) for n in range(2)]
        for proc in workers:
            assert procs.wait(proc, timeout=100) == 0, procs.log(proc)
        t2 = time.monotonic()
        print(f"sshfs: submitted 500 in {t1 - t0:.1f} s, 2 workers drained them in {t2 - t1:.1f} s")
        t = record(
            tally("sshfs, 1 mount, 2 workers", jobs, fx, commits.snapshot(), server_q / "results"),
            note=f"drained in {t2 - t1:.1f} s",
        )
        assert not t.lost and not t.executed_twice and not t.committed_twice
        assert not t.not_finished and not t.foreign_results
        assert not queued_names(server_q) and not all_claimed(server_q)

        info = run_cli("info", str(path))
        assert info.returncode == 0, info.stderr
        guarantee = next(line for line in info.stdout.splitlines() if line.startswith("guarantee:"))
        assert "fuse.sshfs" in guarantee and "shared" in guarantee, info.stdout
        print(guarantee)
    finally:
        procs.close()
        commits.close()


@pytest.mark.timeout(150)
def test_two_sshfs_mounts_as_two_hosts_1000_tasks(hosts, procs):
    server_q, fx = hosts.server_q, hosts.fx
    queue_b = Queue(hosts.b, create=False)  # the same queue, seen from the other "host"
    keys = [f"t{i}" for i in range(1000)]
    jobs = {}
    for queue, part in ((hosts.queue, keys[::2]), (queue_b, keys[1::2])):
        jobs.update(zip(part, queue.map(mark, [str(fx)] * len(part), part), strict=True))
    t1 = time.monotonic()
    # All four start at once, with recovery every 0.5 s: a worker caught between creating
    # claimed/<id>/ and its heartbeat must not be presumed dead from the other mount.
    queues = [(hosts.a, "host-a"), (hosts.b, "host-b")] * 2
    workers = [
        procs.worker(path, f"{host}-{n}", "--burst", "--log-level", "WARNING", *NET, env={"FSQ_HOST_ID": host})
        for n, (path, host) in enumerate(queues)
    ]
    for proc in workers:
        assert procs.wait(proc, timeout=120) == 0, procs.log(proc)
    drained = time.monotonic() - t1
    by_worker = Counter(job.info().worker for job in jobs.values() if job.done())
    print(f"two sshfs mounts: 4 workers drained 1000 tasks in {drained:.1f} s: {dict(by_worker)}")
    t = record(
        tally("sshfs, 2 mounts (2 hosts), 4 workers", jobs, fx, hosts.commits.snapshot(), server_q / "results"),
        note=f"drained in {drained:.1f} s; no worker died",
    )
    assert not t.lost and not t.executed_twice and not t.committed_twice
    assert not t.not_finished and not t.foreign_results
    assert not queued_names(server_q) and not all_claimed(server_q)
    for proc in workers:
        assert "is dead" not in procs.log(proc), procs.log(proc)  # nobody died: nobody presumed dead
    assert len(by_worker) == 4, f"every worker should have won claims: {dict(by_worker)}"


@pytest.mark.timeout(120)
def test_kill9_on_mount_a_recovered_from_mount_b_by_heartbeat(hosts, procs):
    server_q, fx = hosts.server_q, hosts.fx
    victim = hosts.worker("a", "a1")
    job = hosts.running_on_a("x", first_sleep=300)
    hosts.worker("b", "b1")
    time.sleep(4)  # past --dead-after while A lives: B must leave A's task alone
    assert job.info().worker == "a1"
    assert executions(fx)["x"] == 1

    t0 = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    wait_for(lambda: "a1" not in claimed(server_q), what="mount B to presume A dead")
    detect = time.monotonic() - t0
    token = job.wait(60)
    done = time.monotonic() - t0
    info = job.info()
    assert info.status == JobStatus.FINISHED and info.worker == "b1" and info.attempt == 2
    assert [h["outcome"] for h in info.history] == ["worker lost"] and info.history[0]["host"] == "host-a"
    assert token.startswith("x.") and ends(fx)["x"] == 1
    msg = f"sshfs second mount, kill -9: presumed dead after {detect:.2f} s, task done after {done:.2f} s"
    print(msg)
    NOTES.append(msg + " (heartbeat 0.5 s, --dead-after 3)")
    t = record(
        tally("sshfs kill -9 on mount A", {"x": job}, fx, hosts.commits.snapshot(), server_q / "results"),
        note=f"detect {detect:.2f} s via heartbeat; killed run re-executed",
    )
    assert not t.lost and not t.committed_twice and not t.not_finished and t.executed_twice == ["x"]


@pytest.mark.timeout(120)
def test_stopping_worker_on_mount_a_is_not_presumed_dead_from_mount_b(hosts, procs):
    """Regression: a claimer without workers/<id> was once judged by its flock even from another
    mount, where flock never excludes, so it looked dead at once and its running task ran again."""
    a1 = hosts.worker("a", "a1")
    job = hosts.running_on_a("y", first_sleep=8)
    # Mount B presumes a worker dead only after its heartbeat is unchanged for 60 s.
    b1 = hosts.worker("b", "b1", "--dead-after", "60")
    out = run_cli("stop-worker", str(hosts.a), "a1")  # a1 finishes its task, then exits
    assert out.returncode == 0, out.stderr
    assert procs.wait(a1) == 0, procs.log(a1)
    assert job.wait(60) is not None
    b1.terminate()
    assert procs.wait(b1) == 0, procs.log(b1)
    results = hosts.server_q / "results"
    t = record(
        tally("stop-worker on A, seen from B", {"y": job}, hosts.fx, hosts.commits.snapshot(), results),
        note="stopping worker keeps its task",
    )
    assert "is dead" not in procs.log(b1), procs.log(b1)
    assert executions(hosts.fx)["y"] == 1 and job.info().worker == "a1"
    assert not t.lost and not t.committed_twice


@pytest.mark.timeout(120)
def test_worker_starting_on_mount_a_is_not_presumed_dead_from_mount_b(tmp_path, hosts, procs):
    """Regression: a worker on mount A is slow to write workers/<id> (a slow network filesystem, simulated by
    delaying its first renameat2 by 3 s with strace); a worker on mount B must not presume it dead
    in that window, or it removes claimed/<id>/ and the new worker can never claim a task."""
    from sshfs_helpers import require_tool

    strace = require_tool("strace", "apt-get install -y strace")
    server_q, fx = hosts.server_q, hosts.fx
    b1 = hosts.worker("b", "b1")
    slow = ["-qq", "-o", str(tmp_path / "strace.log"), "-e", "trace=renameat2"]
    slow += ["-e", "inject=renameat2:delay_enter=3000000:when=1"]
    cmd = [strace, *slow, *WORKER, "--path", str(hosts.a), "--name", "a1", *NET]
    a1 = procs.start(cmd, env={"FSQ_HOST_ID": "host-a"}, label="a1-strace")
    wait_for(lambda: registered(server_q, "a1") or a1.poll() is not None, what="the slow worker to register")
    assert a1.poll() is None, procs.log(a1)
    b1.terminate()
    assert procs.wait(b1) == 0, procs.log(b1)
    presumed_dead = "worker a1" in procs.log(b1) and "is dead" in procs.log(b1)
    job = hosts.queue.enqueue(mark, str(fx), "z")
    own_folder = server_q / "claimed" / "a1"
    # Without its claimed/a1/ folder the worker can never win a claim: stop waiting then.
    wait_for(lambda: job.done() or not own_folder.is_dir(), what="the worker on mount A to run the task")
    record(
        tally("worker starting on A, seen from B", {"z": job}, fx, None, server_q / "results"),
        note="slow registration not presumed dead" if job.done() else "presumed dead, never claims",
    )
    assert not presumed_dead, procs.log(b1)
    assert own_folder.is_dir() and job.info().worker == "a1"


@pytest.mark.timeout(120)
def test_partition_of_mount_a_its_task_is_recovered_from_mount_b(hosts, mounts, procs):
    """SIGKILL of mount A's sshfs process cuts "host A" off the server mid-task (every call on the
    mount then fails with ENOTCONN). Mount B presumes A's worker dead and runs the task; the cut-off
    worker exits instead of hanging, and nothing it did can reach the queue: one commit."""
    server_q, fx, commits = hosts.server_q, hosts.fx, hosts.commits
    a1 = hosts.worker("a", "a1")
    job = hosts.running_on_a("p", first_sleep=8)
    hosts.worker("b", "b1")

    t0 = time.monotonic()
    mounts.handles["a"].kill()  # the partition
    seen_from_b = Queue(hosts.b, create=False).job(job.id)
    token = seen_from_b.wait(60)
    done = time.monotonic() - t0
    code = procs.wait(a1)  # it must notice and exit, not hang on the dead mount
    print(f"sshfs partition of mount A: task done from mount B after {done:.2f} s; A's worker exited {code}")
    NOTES.append(f"sshfs partition (sshfs of mount A killed): task done on mount B after {done:.2f} s")
    info = seen_from_b.info()
    assert info.worker == "b1" and info.attempt == 2 and token.startswith("p.")
    assert os.listdir(server_q / "results") == [job.id]
    t = record(
        tally("sshfs partition of mount A", {"p": seen_from_b}, fx, commits.snapshot(), server_q / "results"),
        note=f"done on B after {done:.2f} s; cut-off worker exited {code}",
    )
    assert not t.lost and not t.committed_twice and not t.not_finished and t.executed_twice == ["p"]
    assert commits.snapshot()[job.id] == 1
