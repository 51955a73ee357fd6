"""Fixtures of the SLURM suite: a real one-node SLURM cluster, shared by the session.

slurm-wlm from the distribution runs with ``AuthType=auth/none`` (no munge), no
systemd and no cgroups, its daemons in the foreground as the test user (see
docs/slurm.md). Outside CI a machine without it skips this suite; in CI
(``CI=true``) a missing SLURM fails: ``.ci/run`` installs it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, ship_test_modules_by_value

#: Per-test limit: a real TIMEOUT waits for slurmctld's 30 s tick plus KillWait.
TIMEOUT = 150


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Workers in SLURM jobs cannot import the test package: ship task functions by value.
    ship_test_modules_by_value(items, __package__, TIMEOUT)
    import cloudpickle

    from . import tasks

    cloudpickle.register_pickle_by_value(tasks)


def _mem_mib() -> int:
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    return max(256, total_kib // 1024 - 512)


class SlurmCluster:
    """slurmctld + slurmd on 127.0.0.1 with their state in a temporary directory."""

    KILL_WAIT = 5

    def __init__(self, cpus: int = 8) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fsq-slurm-"))
        self.cpus = cpus
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started_at = 0.0

    def _write_conf(self) -> None:
        user = getpass.getuser()
        d = self.dir
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        self.conf.write_text(
            f"""ClusterName=fsqtest
SlurmctldHost=localhost
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/none
CredType=cred/none
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={d}/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait={self.KILL_WAIT}
OverTimeLimit=0
MinJobAge=600
NodeName=node1 NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_mem_mib()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )

    def run(self, *argv: str, check: bool = True) -> str:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        self._write_conf()
        log = open(self.dir / "daemons.out", "wb")  # noqa: SIM115 - kept open while the daemons run
        self.started_at = time.time()
        for argv in (["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", "node1"]):
            self.procs.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}: see {self.dir}/daemons.out")
            if self.run("sinfo", "-h", "-o", "%t", check=False).strip() == "idle":
                return
            time.sleep(0.1)
        raise RuntimeError(f"the SLURM node did not become idle in 30 s: see {self.dir}")

    def jobs(self, *states: str) -> list[str]:
        """Ids of this user's jobs in ``states`` (default: pending, running, completing)."""
        out = self.run("squeue", "-h", "-t", ",".join(states or ("PD", "R", "CG")), "-o", "%i", check=False)
        return out.split()

    def job_state(self, job_id: str) -> str:
        """The job's state (PENDING, RUNNING, COMPLETED, TIMEOUT, ...), finished jobs included."""
        return self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False).strip()

    def wait_gone(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.2)

    def cancel_all(self) -> None:
        # slurmstepd and the job processes survive the daemons: cancel and wait first.
        self.run("scancel", "--user", getpass.getuser(), check=False)
        self.wait_gone(self.KILL_WAIT + 20)

    def stop(self) -> None:
        try:
            self.cancel_all()
            self.run("scontrol", "shutdown", check=False)
            for p in self.procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One real SLURM cluster for the whole session (its daemons start in about a second)."""
    missing = [exe for exe in ("slurmctld", "slurmd", "sbatch", "squeue") if shutil.which(exe) is None]
    if missing:
        message = f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    cluster = SlurmCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[SlurmCluster]:
    """The session's cluster, as the client commands of this test see it; its jobs end with the test.

    The test runs in its temporary directory: jobs submitted without ``--output`` write their
    ``slurm-<id>.out`` there, not in the checkout.
    """
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.chdir(tmp_path)
    try:
        yield slurm_cluster
    finally:
        slurm_cluster.cancel_all()
