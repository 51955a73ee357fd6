"""SSHQueue over a slow link: a throwaway sshd behind a user-space delay proxy.

Usage::

    python benchmarks/ssh.py                      # 0 and 20 ms added round trip
    python benchmarks/ssh.py --rtt 0 --rtt 50 --tasks 200 --runs 10

A real OpenSSH ``sshd`` on 127.0.0.1 (started as the test suite starts one,
``tests/ssh_server.py``) serves the queue directory; the client reaches it
through :class:`DelayProxy`, which holds every chunk ``rtt / 2`` in each
direction (this kernel has no ``sch_netem``). A real worker process serves the
queue locally, as the cluster's workers would. For each added round trip it
measures:

- connect: ``SSHQueue(url)`` (TCP, SSH handshake, login, SFTP, the queue's
  format, key and trust check), median of 5;
- 1,000 submissions: ``queue.map`` of no-op tasks;
- status poll of 1,000 jobs: ``queue.snapshot(group)`` while all are queued,
  then after all finished (the first snapshot reads each outcome; a repeated
  one is served from the cache of finished jobs);
- enqueue + wait of one no-op task with an idle worker, p50/p95;
- round trips per submitted task (in a batch, and alone);
- the widget poller's cost with 100 live jobs (50 running with a progress
  report, 50 queued): SFTP requests and round trips per tick of
  ``queue.snapshot`` (the live views poll through it once a second).

SFTP requests and round trips are counted by the storage itself
(``SFTPStorage.counts``). It measures, it does not assert.
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fs_task_queue import Queue, layout
from fs_task_queue.plugins import SSHQueue

#: Never let a forgotten proxy outlive the benchmark.
PROXY_MAX_SECONDS = 1800.0


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that delivers each chunk ``delay`` seconds after it arrived, both ways.

    Every chunk is stamped when read and written out when its time comes, so
    the link keeps its bandwidth and only gains latency (``2 * delay`` per
    round trip). Listens on and connects to 127.0.0.1 only; :meth:`close` (or
    ``max_seconds``) ends it and every connection through it.
    """

    def __init__(self, target_port: int, delay: float, max_seconds: float = PROXY_MAX_SECONDS) -> None:
        self.target_port = target_port
        self.delay = delay
        self._deadline = time.monotonic() + max_seconds
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, name="delay-proxy", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed.is_set() and time.monotonic() < self._deadline:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._socks += [client, server]
            self._pipe(client, server)
            self._pipe(server, client)
        self.close()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        chunks: deque[tuple[float, bytes]] = deque()
        ready = threading.Condition()

        def read() -> None:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                with ready:
                    chunks.append((time.monotonic() + self.delay, data))
                    ready.notify()
                if not data:
                    return

        def write() -> None:
            while True:
                with ready:
                    while not chunks:
                        ready.wait()
                    due, data = chunks.popleft()
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                if not data:
                    with_suppressed(lambda: dst.shutdown(socket.SHUT_WR))
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        if threading.current_thread() is not self._acceptor:
            # A listener closed under a blocked accept() listens until that returns.
            self._acceptor.join()
        with_suppressed(self._listener.close)
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            with_suppressed(functools.partial(sock.shutdown, socket.SHUT_RDWR))
            with_suppressed(sock.close)


def with_suppressed(action: Callable[[], object]) -> None:
    try:
        action()
    except OSError:
        pass


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def _worker(path: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fs_task_queue", "worker", "--path", str(path), "--max-poll-interval", "0.2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _until(predicate: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def measure(sshd: Any, rtt_ms: float, tasks: int, runs: int, work: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The figures at one added round trip (``options``: extra SSHQueue options, e.g. the mode)."""
    qdir = work / f"queue-{rtt_ms:g}-{len(list(work.iterdir()))}"  # a fresh queue for each run
    local = Queue(qdir)
    proxy = DelayProxy(sshd.port, rtt_ms / 2000)
    ssh_opts = {**vars(sshd.options()), **options}
    url = f"ssh://root@127.0.0.1:{proxy.port}{qdir}"
    # The proxy's port is not the known_hosts entry's: name the host key for it.
    pub = sshd.host_pub()
    known = work / f"known_hosts-{proxy.port}"
    known.write_text(f"[127.0.0.1]:{proxy.port} {pub[0]} {pub[1]}\n")
    ssh_opts["known_hosts"] = str(known)
    out: dict[str, Any] = {"rtt_ms": rtt_ms}
    try:
        connects = []
        for _ in range(5):
            start = time.perf_counter()
            queue = SSHQueue(url, **ssh_opts)
            connects.append(time.perf_counter() - start)
            queue.close()
        out["connect"] = statistics.median(connects)
        queue = SSHQueue(url, **ssh_opts)
        # Helper mode is chosen in the background while the queue opens: wait until it is.
        out["mode"] = getattr(queue.storage, "mode", "sftp")
        if out["mode"] != ("sftp" if options.get("helper") is False else "helper"):
            raise SystemExit(f"wanted {options}, got {out['mode']}: {getattr(queue.storage, 'why_not_helper', '')}")
        counts = queue.storage.counts
        try:
            before = counts.round_trips
            start = time.perf_counter()
            group = queue.map(operator.pos, range(tasks))
            out["submit"] = time.perf_counter() - start
            out["rt_per_task_batch"] = (counts.round_trips - before) / tasks
            start = time.perf_counter()
            states = queue.snapshot(group)
            out["poll_queued"] = time.perf_counter() - start
            assert len(states) == tasks
            with _worker(qdir, work / "worker.log"):
                _until(lambda: len(local._result_ids()) >= tasks)
                # A fresh client: nothing cached, every outcome read once.
                fresh = SSHQueue(url, **ssh_opts)
                ids = [job.id for job in group]
                try:
                    start = time.perf_counter()
                    fresh.snapshot(ids)
                    out["poll_finished_first"] = time.perf_counter() - start
                    start = time.perf_counter()
                    fresh.snapshot(ids)
                    out["poll_finished_again"] = time.perf_counter() - start
                finally:
                    fresh.close()
                _until(lambda: bool(local.workers()))
                queue.enqueue(operator.pos, 0).wait(timeout=60)  # warm: the results/ watch, the worker's
                waits = []
                before = counts.round_trips
                for i in range(runs):
                    time.sleep(0.3)  # idle worker, idle client
                    start = time.perf_counter()
                    assert queue.enqueue(operator.pos, i).wait(timeout=60) == i
                    waits.append(time.perf_counter() - start)
                out["wait_p50"], out["wait_p95"] = _pct(waits, 0.5), _pct(waits, 0.95)
                out["rt_per_wait"] = (counts.round_trips - before) / runs
                before = counts.round_trips
                for i in range(runs):
                    queue.enqueue(operator.pos, i)
                out["rt_per_task_alone"] = (counts.round_trips - before) / runs
            out.update(_noticed(queue, local, runs))
            out.update(_poller(queue, local, runs=3))
        finally:
            queue.close()
    finally:
        proxy.close()
    return out


def _noticed(queue: Queue, local: Queue, runs: int) -> dict[str, float]:
    """How long after a job's outcome is committed (on the cluster side) a waiting client returns."""
    delays = []
    for i in range(runs):
        job = queue.enqueue(operator.pos, i)
        returned: list[float] = []

        def wait(job: Any = job, returned: list[float] = returned) -> None:
            job.wait(60)
            returned.append(time.perf_counter())

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)  # the client has been waiting a while (a poll would have backed off)
        while True:  # older tasks first (left by the runs above)
            claimed = local.dequeue(timeout=10, worker_id="bench-runner")
            claimed()  # runs it here and commits the outcome
            committed = time.perf_counter()
            if claimed.id == job.id:
                break
        waiter.join(60)
        delays.append(returned[0] - committed)
    if local._claimer is not None:
        local._claimer.close()
        local._claimer = None
    return {"noticed_p50": _pct(delays, 0.5), "noticed_p95": _pct(delays, 0.95)}


def _poller(queue: Queue, local: Queue, runs: int) -> dict[str, float]:
    """What one tick of the live views costs with 100 live jobs: 50 running (with progress), 50 queued."""
    live = queue.map(operator.pos, range(100))
    worker_id = "bench-claimer"
    for _ in range(50):
        job = local.dequeue(timeout=10, worker_id=worker_id)
        record = {"done": 1, "total": 2, "message": "half", "at": time.time()}
        local.storage.publish(
            layout.job_file(job.id, "progress"), json.dumps(record).encode(), replace=True, make_parent=True
        )
    counts = queue.storage.counts  # type: ignore[attr-defined]
    queue.snapshot(live)  # the first tick learns the worker folders
    requests, trips, took = [], [], []
    for _ in range(runs):
        r0, t0 = counts.requests, counts.round_trips
        start = time.perf_counter()
        states = queue.snapshot(live)
        took.append(time.perf_counter() - start)
        requests.append(counts.requests - r0)
        trips.append(counts.round_trips - t0)
    started = sum(1 for s in states.values() if s.status.value == "started")
    assert started == 50, started
    if local._claimer is not None:
        local._claimer.close()
        local._claimer = None
    return {
        "poll_requests": statistics.median(requests),
        "poll_round_trips": statistics.median(trips),
        "poll_tick": statistics.median(took),
    }


ROWS = [
    ("connect", "connect + login + open queue (s)", "{:.3f}"),
    ("submit", "submit {tasks} tasks, map (s)", "{:.3f}"),
    ("poll_queued", "status of {tasks} queued jobs (s)", "{:.3f}"),
    ("poll_finished_first", "status of {tasks} finished jobs, first (s)", "{:.3f}"),
    ("poll_finished_again", "status of {tasks} finished jobs, again (s)", "{:.3f}"),
    ("wait_p50", "enqueue + wait, idle worker p50 (s)", "{:.3f}"),
    ("wait_p95", "enqueue + wait, idle worker p95 (s)", "{:.3f}"),
    ("noticed_p50", "finished job noticed by a waiter p50 (s)", "{:.3f}"),
    ("noticed_p95", "finished job noticed by a waiter p95 (s)", "{:.3f}"),
    ("rt_per_task_batch", "round trips per task (map)", "{:.4f}"),
    ("rt_per_task_alone", "round trips per task (enqueue)", "{:.2f}"),
    ("rt_per_wait", "round trips per enqueue + wait", "{:.1f}"),
    ("poll_requests", "poller: SFTP requests per tick, 100 live", "{:g}"),
    ("poll_round_trips", "poller: round trips per tick, 100 live", "{:g}"),
    ("poll_tick", "poller: one tick, 100 live (s)", "{:.3f}"),
]


def table(results: list[dict[str, Any]], tasks: int) -> str:
    head = ["", *(f"{r['mode']} +{r['rtt_ms']:g} ms" for r in results)]
    lines = [head]
    for key, label, fmt in ROWS:
        lines.append([label.format(tasks=f"{tasks:,}"), *(fmt.format(r[key]) if key in r else "-" for r in results)])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = []
    for n, row in enumerate(lines):
        cells = zip(row, widths, strict=True)
        text.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(cells)))
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt", type=float, action="append", help="added round trip in ms (repeatable)")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30, help="enqueue + wait repetitions")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--mode", action="append", choices=["sftp", "helper"], help="pure SFTP and/or the remote helper (default: both)"
    )
    args = parser.parse_args(argv)
    from ssh_server import Sshd, require_sshd  # type: ignore[import-not-found]

    os.environ.setdefault("FSQ_BENCH", "1")
    results = []
    with tempfile.TemporaryDirectory(prefix="fsq-ssh-bench-") as tmp:
        work = Path(tmp)
        try:
            require_sshd()
        except BaseException as exc:  # pytest's skip outside a test
            raise SystemExit(str(exc)) from None
        sshd = Sshd(work / "sshd").start()
        try:
            for mode in args.mode or ["sftp", "helper"]:
                # The helper runs as the workers would: this interpreter, which has fs-task-queue.
                options = {"helper": False} if mode == "sftp" else {"remote_python": sys.executable}
                for rtt in args.rtt or [0.0, 20.0]:
                    results.append(measure(sshd, rtt, args.tasks, args.runs, work, options))
        finally:
            sshd.stop()
    print(table(results, args.tasks))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
