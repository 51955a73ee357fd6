"""Measure fs-task-queue on a local disk against a featureless floor; print and record the table.

Usage::

    python benchmarks/run.py              # full run (a few minutes on 2 cores); writes docs/performance.md
    python benchmarks/run.py --quick      # small sizes, for checking the script itself
    python benchmarks/run.py --no-write   # print only

Everything runs with default settings on a temporary directory under ``--dir``
(default /tmp) with no-op tasks (``operator.pos``, importable everywhere, so a
worker unpickles it by reference and the task costs nothing itself). Workers are
real processes started the way users start them (``python -m fs_task_queue
worker``). Each figure is also measured for the "floor" (``benchmarks/floor.py``):
the bare write-rename/rename-claim protocol with no features, run the same way,
so the ratio says what the features cost on this machine rather than how fast the
machine is. Filesystem syscalls are counted with strace (see ``syscalls.py``).

This is not part of the test suite: it measures, it does not assert. Targets that
are missed are reported as such and the exit status stays 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import operator
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Run from a checkout without installing: the package is next to this folder.
sys.path.insert(1, str(REPO))

import floor  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)
import syscalls  # noqa: E402

from fs_task_queue import Queue  # noqa: E402
from fs_task_queue._version import __version__  # noqa: E402
from fs_task_queue.fsinfo import filesystem_type  # noqa: E402
from fs_task_queue.layout import SHARD_LEN, queued_path  # noqa: E402
from fs_task_queue.queue import Claimer  # noqa: E402

FLOOR_PY = str(HERE / "floor.py")
#: Tasks per alternating enqueue timing chunk (see bench_enqueue).
ENQUEUE_CHUNK = 500
CLIENT_PY = str(HERE / "client.py")


# --------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does; ``--quick`` shrinks everything."""

    enqueue_n: int = 5000  # tasks per enqueue timing
    drain_n: int = 5000  # tasks pre-queued per drain timing
    reps: int = 3  # repetitions of the drain and claim timings; the median is reported
    enqueue_reps: int = 5  # enqueue timings are short, so more of them
    latency_samples: int = 200
    latency_warmup: int = 5
    claim_small: int = 1000
    claim_large: int = 50_000
    claim_count: int = 1000  # claims timed per queue size
    strace_n: int = 2000  # tasks per traced run
    idle_seconds: float = 30.0


QUICK = Sizes(
    enqueue_n=500,
    drain_n=500,
    reps=1,
    enqueue_reps=1,
    latency_samples=30,
    claim_small=1000,
    claim_large=5000,
    claim_count=200,
    strace_n=200,
    idle_seconds=6.0,
)


_T0 = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, so a slow phase can be told from a hung one."""
    print(f"[{time.perf_counter() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------- processes
class Procs:
    """The processes this benchmark started, so they are all stopped (by id) on the way out.

    Each runs in its own session: on an error, killing its process group also
    ends what it started (the worker under strace, a worker's isolation child),
    and nothing else.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self._live: dict[subprocess.Popen[bytes], IO[bytes]] = {}
        self._n = 0

    def start(self, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        self._n += 1
        # stderr goes to a file (a pipe nobody reads could fill up and block the worker).
        err = open(self.root / f"stderr-{self._n}.txt", "wb")  # noqa: SIM115  (closed in finish/kill_all)
        proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=err, env=self.env, start_new_session=True)
        self._live[proc] = err
        return proc

    def finish(self, proc: subprocess.Popen[bytes], timeout: float = 600.0) -> None:
        """Wait for ``proc``; raise with its stderr if it failed."""
        err = self._live.pop(proc)
        err.close()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"{proc.args!r} did not finish within {timeout} s") from None
        if code not in (0, -signal.SIGTERM):
            text = Path(err.name).read_text(errors="replace")
            raise RuntimeError(f"{proc.args!r} exited with {code}:\n{text[-3000:]}")

    def stop(self, proc: subprocess.Popen[bytes], pid: int | None = None) -> None:
        """SIGTERM ``pid`` (default: the process itself; for a traced worker, the worker, not strace) and wait."""
        try:
            os.kill(pid or proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.finish(proc, timeout=60)

    def kill_all(self) -> None:
        for proc, err in self._live.items():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            err.close()
        self._live.clear()


def worker_cmd(path: Path, *, burst: bool) -> list[str]:
    cmd = [sys.executable, "-m", "fs_task_queue", "worker", "--path", str(path), "--log-level", "WARNING"]
    return [*cmd, "--burst"] if burst else cmd


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def registered_worker_pid(path: Path) -> int | None:
    """The pid in the first heartbeat file of ``workers/`` (None until a worker registered)."""
    for name in os.listdir(path / "workers"):
        if not name.startswith("."):
            try:
                return int(json.loads((path / "workers" / name).read_bytes())["pid"])
            except (OSError, ValueError, KeyError):
                return None
    return None


def count(path: Path) -> int:
    return sum(1 for n in os.listdir(path) if not n.startswith("."))


def queued_files(path: Path) -> list[str]:
    """The task files in the shard folders of a library queue's ``queued/``, oldest first."""
    top = path / "queued"
    return sorted(n for shard in os.listdir(top) for n in os.listdir(top / shard) if not n.startswith("."))


# -------------------------------------------------------------------- queues
class Templates:
    """Real task files, made once with ``queue.map`` and copied into fresh queues.

    Submitting 50,000 tasks takes a while; copying a queue directory (same signing
    key, so the copies are valid tasks) is several times faster, and every timed
    run starts from the same state: a fresh directory holding only queued tasks.
    """

    def __init__(self, root: Path, n: int) -> None:
        self.path = root / "template"
        queue = Queue(self.path)
        queue.map(operator.pos, range(n))
        self.names = queued_files(self.path)
        if len(self.names) != n:
            raise RuntimeError(f"template queue holds {len(self.names)} tasks, not {n}")
        self.payload = (self.path / queued_path(self.names[0])).read_bytes()
        self._copies = 0

    def clone(self, root: Path, k: int) -> Path:
        """A new queue directory with the first ``k`` template tasks queued and nothing else."""
        self._copies += 1
        dest = root / f"q{self._copies}"
        keep = set(self.names[:k])
        shards = {name[:SHARD_LEN] for name in keep}
        src = str(self.path)

        def ignore(folder: str, names: list[str]) -> set[str]:
            if folder == src:
                return set()  # key, format file, and every sub-folder
            if folder == f"{src}/queued":
                return {n for n in names if n not in shards}
            if folder.startswith(f"{src}/queued/"):
                return {n for n in names if n not in keep}
            return set(names)  # other sub-folders are copied empty

        # shutil.copy keeps permission bits: the worker refuses a readable key.
        shutil.copytree(self.path, dest, ignore=ignore, copy_function=shutil.copy)
        return dest


def floor_root(root: Path, tag: str, n: int, payload: bytes) -> Path:
    path = root / f"floor-{tag}"
    floor.make_root(str(path))
    floor.enqueue(str(path), n, payload)
    (path / "payload").write_bytes(payload)
    return path


# -------------------------------------------------------------- measurements
def median(values: list[float]) -> float:
    return statistics.median(values)


def paired(lib: list[float], base: list[float]) -> float:
    """The median of lib/floor over runs that ran back to back.

    The disk of a shared machine can change speed threefold within minutes;
    a ratio of two medians could pair a run from a fast spell with one from a
    slow spell, a ratio within each pair cannot.
    """
    return median([a / b for a, b in zip(lib, base, strict=True)])


def settle() -> None:
    """Flush dirty pages first, so writeback of the set-up does not land inside the next timing."""
    os.sync()


def bench_enqueue(root: Path, sizes: Sizes, payload: bytes) -> dict[str, float]:
    """Tasks/s of an enqueue() loop, of map(), and of the floor's write-rename loop, each into a fresh queue.

    The three are timed in alternating chunks of ``ENQUEUE_CHUNK`` tasks, each
    after a sync: a disk that is slow for a few seconds (a shared machine, the
    journal flushing someone else's files) then slows all three alike instead of
    deciding the ratio.
    """
    n = sizes.enqueue_n
    loop, bulk, base = [], [], []
    for rep in range(sizes.enqueue_reps):
        lib_loop, lib_map = Queue(root / f"enq-loop-{rep}"), Queue(root / f"enq-map-{rep}")
        path = str(root / f"enq-floor-{rep}")
        floor.make_root(path)
        # First calls pay for lazy imports and caches: not timed.
        lib_loop.enqueue(operator.pos, -1)
        lib_map.map(operator.pos, [-1])
        floor.enqueue(path, 1, payload)
        spent = [0.0, 0.0, 0.0]
        for start in range(0, n, ENQUEUE_CHUNK):
            items = range(start, min(n, start + ENQUEUE_CHUNK))
            settle()
            t = time.perf_counter()
            for i in items:
                lib_loop.enqueue(operator.pos, i)
            spent[0] += time.perf_counter() - t
            settle()
            t = time.perf_counter()
            lib_map.map(operator.pos, items)
            spent[1] += time.perf_counter() - t
            settle()
            t = time.perf_counter()
            floor.enqueue(path, len(items), payload, start=1 + start)
            spent[2] += time.perf_counter() - t
        loop.append(n / spent[0])
        bulk.append(n / spent[1])
        base.append(n / spent[2])
        log(f"enqueue rep {rep + 1}: loop {loop[-1]:.0f}/s, map {bulk[-1]:.0f}/s, floor {base[-1]:.0f}/s")
    return {
        "loop": median(loop),
        "map": median(bulk),
        "floor": median(base),
        "loop_ratio": paired(loop, base),
        "map_ratio": paired(bulk, base),
    }


def bench_drain(root: Path, sizes: Sizes, procs: Procs, tpl: Templates, workers: int) -> tuple[float, float, float]:
    """Tasks/s of ``workers`` burst workers draining N tasks (start to last exit), the floor's, the paired ratio."""
    n = sizes.drain_n
    lib, base = [], []
    for rep in range(sizes.reps):
        path = tpl.clone(root, n)
        settle()
        t = time.perf_counter()
        started = [procs.start(worker_cmd(path, burst=True)) for _ in range(workers)]
        for proc in started:
            procs.finish(proc)
        lib.append(n / (time.perf_counter() - t))
        if count(path / "results") != n or queued_files(path):
            raise RuntimeError(f"drain left {len(queued_files(path))} queued, {count(path / 'results')} results")

        fpath = floor_root(root, f"drain{workers}-{rep}", n, tpl.payload)
        settle()
        t = time.perf_counter()
        started = [procs.start([sys.executable, FLOOR_PY, "drain", str(fpath), f"w{i}"]) for i in range(workers)]
        for proc in started:
            procs.finish(proc)
        base.append(n / (time.perf_counter() - t))
        if count(fpath / "results") != n:
            raise RuntimeError(f"floor drain made {count(fpath / 'results')} results, not {n}")
        # Nothing is deleted until the end: on ext4 without a journal (this VM's disk) a new
        # inode is not taken from those freed in the last 5-10 s, and skipping them made
        # every run that followed a deletion up to twice as slow.
        log(f"drain x{workers} rep {rep + 1}: {lib[-1]:.0f}/s, floor {base[-1]:.0f}/s ({lib[-1] / base[-1]:.0%})")
    return median(lib), median(base), paired(lib, base)


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def bench_latency(root: Path, sizes: Sizes, procs: Procs, tpl: Templates) -> dict[str, float]:
    """Enqueue-to-result-seen (ms) with one idle worker, for the library and the floor."""
    out: dict[str, float] = {}
    path = tpl.clone(root, 0)
    worker = procs.start(worker_cmd(path, burst=False))
    wait_until(lambda: registered_worker_pid(path) is not None, "the worker to register")
    queue = Queue(path)
    # First-use costs (lazy imports, caches, a lazily started isolation child) are not latency.
    for i in range(sizes.latency_warmup):
        queue.enqueue(operator.pos, i).wait(timeout=60)
    time.sleep(1.0)  # let the worker go idle (asleep on inotify)
    lat = []
    for i in range(sizes.latency_samples):
        t = time.perf_counter()
        job = queue.enqueue(operator.pos, i)
        job.wait(timeout=60)
        lat.append(time.perf_counter() - t)
        time.sleep(0.01)  # back to idle before the next one
    procs.stop(worker)
    out["p50"], out["p95"] = median(lat) * 1e3, percentile(lat, 95) * 1e3

    fpath = floor_root(root, "latency", 0, tpl.payload)
    server = procs.start([sys.executable, FLOOR_PY, "serve", str(fpath), "w0"])
    wait_until(lambda: (fpath / "ready.w0").exists(), "the floor worker to start")
    watch = floor.Inotify([str(fpath / "results")])  # kept for the whole run, like a long-lived client
    for i in range(sizes.latency_warmup):
        floor.wait_for(str(fpath), floor.enqueue(str(fpath), 1, tpl.payload, start=i)[0], watch)
    time.sleep(1.0)
    lat = []
    for i in range(sizes.latency_samples):
        t = time.perf_counter()
        name = floor.enqueue(str(fpath), 1, tpl.payload, start=1000 + i)[0]
        floor.wait_for(str(fpath), name, watch)
        lat.append(time.perf_counter() - t)
        time.sleep(0.01)
    os.close(watch.fd)
    procs.stop(server)
    out["floor_p50"], out["floor_p95"] = median(lat) * 1e3, percentile(lat, 95) * 1e3
    log(f"latency p50 {out['p50']:.2f} ms p95 {out['p95']:.2f} ms; floor {out['floor_p50']:.2f}/{out['floor_p95']:.2f}")
    return out


def _claim_lib(path: Path, claims: int) -> tuple[float, float]:
    queue = Queue(path)
    claimer = Claimer(queue, "bench")
    # Registering (claimed folder, liveness lock, identity file) happens once per
    # worker and is not a listing: keep it out of "the first claim".
    register = getattr(claimer, "register", None)
    if register is not None:
        register()
    t = time.perf_counter()
    if claimer.claim() is None:
        raise RuntimeError("nothing to claim")
    first = time.perf_counter() - t
    for _ in range(claims - 1):
        claimer.claim()
    mean = (time.perf_counter() - t) / claims
    claimer.close()  # puts every claimed task back in queued/
    return first, mean


def _claim_floor(path: Path, claims: int) -> tuple[float, float]:
    queued, claimed = path / "queued", path / "floor-claims"
    claimed.mkdir(exist_ok=True)
    t = time.perf_counter()
    names = sorted(os.listdir(queued))
    os.rename(f"{queued}/{names[0]}", f"{claimed}/{names[0]}")
    first = time.perf_counter() - t
    for name in names[1:claims]:
        os.rename(f"{queued}/{name}", f"{claimed}/{name}")
    mean = (time.perf_counter() - t) / claims
    for name in names[:claims]:
        os.rename(f"{claimed}/{name}", f"{queued}/{name}")
    claimed.rmdir()
    return first, mean


def bench_claim(root: Path, sizes: Sizes, tpl: Templates) -> dict[int, dict[str, float]]:
    """First-claim and mean-claim time with a small and a large queue, in-process (and floor)."""
    out: dict[int, dict[str, float]] = {}
    for size in (sizes.claim_small, sizes.claim_large):
        # The large queue is the template itself (copying 50,000 files costs more than it tells).
        path = tpl.path if size == len(tpl.names) else tpl.clone(root, size)
        # The floor keeps every task in one flat folder, as the minimal protocol would.
        fpath = floor_root(root, f"claim{size}", size, tpl.payload)
        runs: dict[str, list[float]] = {"first": [], "mean": [], "floor_first": [], "floor_mean": []}
        for _ in range(sizes.reps):
            first, mean = _claim_lib(path, sizes.claim_count)
            runs["first"].append(first)
            runs["mean"].append(mean)
            first, mean = _claim_floor(fpath, sizes.claim_count)
            runs["floor_first"].append(first)
            runs["floor_mean"].append(mean)
            if len(queued_files(path)) != size or count(fpath / "queued") != size:
                raise RuntimeError(f"claim benchmark left {len(queued_files(path))} tasks queued, not {size}")
        out[size] = {k: median(v) for k, v in runs.items()}
        r = out[size]
        # What a claim costs once the listing is paid: the mean of claims 2..count.
        n = sizes.claim_count
        r["after_first"] = (r["mean"] * n - r["first"]) / (n - 1)
        r["floor_after_first"] = (r["floor_mean"] * n - r["floor_first"]) / (n - 1)
        log(
            f"claim @{size}: first {r['first'] * 1e3:.2f} ms, mean {r['mean'] * 1e6:.1f} us;"
            f" floor {r['floor_first'] * 1e3:.2f} ms, {r['floor_mean'] * 1e6:.1f} us"
        )
    return out


@dataclass
class PerTask:
    """Filesystem syscalls per task, from a traced run minus a traced baseline run."""

    per_task: float
    raw_per_task: float  # including pipe/socket/inotify calls, as strace -c would count
    delta: syscalls.Trace
    tasks: int


def _traced(procs: Procs, root: Path, tag: str, cmd: list[str]) -> syscalls.Trace:
    out = str(root / f"trace-{tag}.txt")
    procs.finish(procs.start([*syscalls.strace_prefix(out), *cmd]))
    trace = syscalls.parse(out)
    os.unlink(out)
    return trace


def _per_task(run: syscalls.Trace, base: syscalls.Trace, tasks: int) -> PerTask:
    delta = run.minus(base)
    return PerTask(delta.fs_total / tasks, delta.raw_total / tasks, delta, tasks)


def bench_syscalls(root: Path, sizes: Sizes, procs: Procs, tpl: Templates) -> dict[str, PerTask]:
    """Worker- and client-side filesystem syscalls per task, for the library and the floor."""
    n = sizes.strace_n
    out: dict[str, PerTask] = {}

    # Worker: a burst worker draining n tasks, minus one draining 0 tasks (its
    # start-up). Also against a 1-task run: anything done once, at the first task
    # (a lazily started isolation child, lazy imports), is a per-worker cost that
    # a 0-task baseline would charge to the tasks; if the two figures differ, that
    # is why.
    runs = {k: _traced(procs, root, f"worker-{k}", worker_cmd(tpl.clone(root, k), burst=True)) for k in (n, 1, 0)}
    out["worker"] = _per_task(runs[n], runs[0], n)
    out["worker_vs_one"] = _per_task(runs[n], runs[1], n - 1)
    log(f"worker: {out['worker'].per_task:.2f} fs syscalls/task ({out['worker_vs_one'].per_task:.2f} vs 1-task run)")

    fruns = {}
    for k in (n, 1):
        fpath = floor_root(root, f"strace-worker-{k}", k, tpl.payload)
        fruns[k] = _traced(procs, root, f"floor-worker-{k}", [sys.executable, FLOOR_PY, "drain", str(fpath), "w0"])
    out["floor_worker"] = _per_task(fruns[n], fruns[1], n - 1)

    # Client: submit n then wait for all n results, minus the same script with 0
    # tasks (imports and opening the queue); a worker runs outside strace.
    path = tpl.clone(root, 0)
    worker = procs.start(worker_cmd(path, burst=False))
    wait_until(lambda: registered_worker_pid(path) is not None, "the worker to register")
    crun = _traced(procs, root, "client-n", [sys.executable, CLIENT_PY, str(path), str(n)])
    cbase = _traced(procs, root, "client-0", [sys.executable, CLIENT_PY, str(path), "0"])
    procs.stop(worker)
    out["client"] = _per_task(crun, cbase, n)

    fpath = floor_root(root, "strace-client", 0, tpl.payload)
    server = procs.start([sys.executable, FLOOR_PY, "serve", str(fpath), "w0"])
    wait_until(lambda: (fpath / "ready.w0").exists(), "the floor worker to start")
    frun = _traced(procs, root, "floor-client-n", [sys.executable, FLOOR_PY, "client", str(fpath), str(n)])
    fbase = _traced(procs, root, "floor-client-0", [sys.executable, FLOOR_PY, "client", str(fpath), "0"])
    procs.stop(server)
    out["floor_client"] = _per_task(frun, fbase, n)
    log(
        f"client: {out['client'].per_task:.2f} fs syscalls/task; floor worker {out['floor_worker'].per_task:.2f},"
        f" floor client {out['floor_client'].per_task:.2f}"
    )
    return out


def bench_idle(root: Path, sizes: Sizes, procs: Procs, tpl: Templates) -> dict[str, Any]:
    """Filesystem syscalls per second of an idle worker (and of the floor's idle worker), side by side."""
    path = tpl.clone(root, 0)
    fpath = floor_root(root, "idle", 0, tpl.payload)
    lib_out, floor_out = str(root / "trace-idle.txt"), str(root / "trace-floor-idle.txt")
    # Traced from the start (no attaching to a running process, which ptrace
    # policies may forbid); only calls inside the idle window are counted.
    lib = procs.start([*syscalls.strace_prefix(lib_out, timestamps=True), *worker_cmd(path, burst=False)])
    base = procs.start(
        [*syscalls.strace_prefix(floor_out, timestamps=True), sys.executable, FLOOR_PY, "serve", str(fpath), "w0"]
    )
    wait_until(lambda: registered_worker_pid(path) is not None, "the traced worker to register")
    wait_until(lambda: (fpath / "ready.w0").exists(), "the traced floor worker to start")
    time.sleep(2.0)  # past start-up: the first recovery pass, sweep and listing are done
    t_from = time.time()
    time.sleep(sizes.idle_seconds)
    t_to = time.time()
    procs.stop(lib, registered_worker_pid(path))  # SIGTERM the worker, not strace
    procs.stop(base, int((fpath / "ready.w0").read_text()))
    window = t_to - t_from
    trace = syscalls.parse(lib_out, t_from, t_to)
    ftrace = syscalls.parse(floor_out, t_from, t_to)
    log(f"idle: {trace.fs_total / window:.2f} fs syscalls/s over {window:.1f} s; floor {ftrace.fs_total / window:.2f}")
    return {"rate": trace.fs_total / window, "floor": ftrace.fs_total / window, "trace": trace, "window": window}


# ---------------------------------------------------------------------- table
@dataclass
class Row:
    metric: str
    value: float | None
    unit: str  # "/s", "ms", "us", "calls", "x"
    floor: float | None = None
    higher_is_better: bool = False
    target: str = "-"
    met: bool | None = None
    paired: float | None = None  # median of per-run ratios, where runs were paired

    @property
    def ratio(self) -> float | None:
        if self.paired is not None:
            return self.paired
        if self.value is None or not self.floor:
            return None
        return self.value / self.floor


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "/s":
        return f"{value:,.0f} /s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "us":
        return f"{value:,.1f} µs"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ops/s":
        return f"{value:.2f} /s"
    return f"{value:.2f}"


def fmt_ratio(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return "-"
    # Throughputs read as "this fraction of the floor", costs as "this many times the floor".
    return f"{ratio * 100:.0f} %" if row.higher_is_better else f"{ratio:.2f}x"


def cells(row: Row) -> list[str]:
    met = "-" if row.met is None else ("yes" if row.met else "NO")
    return [row.metric, fmt_value(row.value, row.unit), fmt_value(row.floor, row.unit), fmt_ratio(row), row.target, met]


HEADER = ["metric", "value", "floor", "ratio", "target", "met?"]


def text_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def md_table(rows: list[list[str]], header: list[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def breakdown(counts: dict[str, syscalls.Trace], divisors: Mapping[str, float]) -> tuple[list[str], list[list[str]]]:
    """Per-syscall rows (one column per trace), filesystem calls first, then the others."""
    names = list(counts)
    header = ["syscall", *names]
    rows: list[list[str]] = []
    for kind in ("fs", "other"):
        keys = sorted(set().union(*(getattr(t, kind).keys() for t in counts.values())))
        for key in keys:
            values = [getattr(counts[n], kind)[key] / divisors[n] for n in names]
            if all(abs(v) < 0.005 for v in values):
                continue
            label = key if kind == "fs" else f"{key} (pipe/socket/inotify, not counted)"
            row = [label]
            for n, v in zip(names, values, strict=True):
                errs = [
                    f"{c / divisors[n]:.2f} {e.split()[1]}"
                    for e, c in counts[n].errors.items()
                    if kind == "fs" and e.split()[0] == key and abs(c / divisors[n]) >= 0.005
                ]
                row.append(f"{v:.2f}" + (f" ({', '.join(errs)})" if errs else ""))
            rows.append(row)
    rows.append(["total filesystem", *(f"{counts[n].fs_total / divisors[n]:.2f}" for n in names)])
    return header, rows


# ----------------------------------------------------------------- machine
def machine(root: Path) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "filesystem": f"{filesystem_type(root)} ({root.parent})",
        "python": platform.python_version(),
        "fs-task-queue": f"{__version__} (git {commit})",
        "strace": _strace_version(),
    }


def _strace_version() -> str:
    if not syscalls.have_strace():
        return "missing"
    out = subprocess.run(["strace", "-V"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def load() -> str:
    """Load average, and the share of time tasks stalled on I/O (Linux PSI), to judge how busy the machine was."""
    text = " ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        some = Path("/proc/pressure/io").read_text().split("\n")[0].split()
        text += f", I/O stalled {some[2].split('=')[1]} % (last 60 s)"
    except (OSError, IndexError):
        pass
    return text


# --------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the queue")
    parser.add_argument("--dir", default="/tmp", help="where to make the temporary queues (default: /tmp)")
    parser.add_argument("--output", default=str(REPO / "docs" / "performance.md"), help="markdown file to write")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()

    root = Path(tempfile.mkdtemp(prefix="fsq-bench-", dir=args.dir))
    procs = Procs(root)
    info = machine(root)
    load_before = load()
    log(f"working in {root} ({info['filesystem']}); load average {load_before}")
    try:
        tpl = Templates(root, max(sizes.claim_large, sizes.drain_n, sizes.strace_n))
        log(f"template queue: {len(tpl.names)} tasks")
        claim = bench_claim(root, sizes, tpl)
        enq = bench_enqueue(root, sizes, tpl.payload)
        drain = {w: bench_drain(root, sizes, procs, tpl, w) for w in (1, 2)}
        lat = bench_latency(root, sizes, procs, tpl)
        traced = syscalls.have_strace()
        if traced:
            sc = bench_syscalls(root, sizes, procs, tpl)
            idle = bench_idle(root, sizes, procs, tpl)
        else:
            log("strace not found: syscall counts skipped (apt-get install strace)")
    finally:
        procs.kill_all()
        shutil.rmtree(root, ignore_errors=True)
    load_after = load()

    small, large = claim[sizes.claim_small], claim[sizes.claim_large]
    ks, kl = f"{sizes.claim_small // 1000}k", f"{sizes.claim_large // 1000}k"
    growth = large["mean"] / small["mean"]
    floor_growth = large["floor_mean"] / small["floor_mean"]
    rows = [
        Row(
            "enqueue(), loop",
            enq["loop"],
            "/s",
            enq["floor"],
            True,
            ">= 50 % of floor",
            enq["loop_ratio"] >= 0.5,
            enq["loop_ratio"],
        ),
        Row(
            "map(), bulk",
            enq["map"],
            "/s",
            enq["floor"],
            True,
            ">= 50 % of floor",
            enq["map_ratio"] >= 0.5,
            enq["map_ratio"],
        ),
    ]
    for w in (1, 2):
        value, base, ratio = drain[w]
        label = f"drain, {w} worker{'s' if w > 1 else ''}"
        rows.append(Row(label, value, "/s", base, True, ">= 40 % of floor", ratio >= 0.4, ratio))
    rows += [
        Row("idle latency p50", lat["p50"], "ms", lat["floor_p50"]),
        Row("idle latency p95", lat["p95"], "ms", lat["floor_p95"]),
        Row(f"claim, {ks} queued, mean of {sizes.claim_count}", small["mean"] * 1e6, "us", small["floor_mean"] * 1e6),
        Row(f"claim, {kl} queued, mean of {sizes.claim_count}", large["mean"] * 1e6, "us", large["floor_mean"] * 1e6),
        Row(f"claim mean, {kl} / {ks}", growth, "x", floor_growth, False, "<= 2x", growth <= 2.0),
        Row(f"claim, {ks} queued, first claim", small["first"] * 1e3, "ms", small["floor_first"] * 1e3),
        Row(f"claim, {kl} queued, first claim", large["first"] * 1e3, "ms", large["floor_first"] * 1e3),
        # Not a target: shows that only the listing grows with the queue, not the claims after it.
        Row(
            f"claim, {ks} queued, claims 2..{sizes.claim_count}",
            small["after_first"] * 1e6,
            "us",
            small["floor_after_first"] * 1e6,
        ),
        Row(
            f"claim, {kl} queued, claims 2..{sizes.claim_count}",
            large["after_first"] * 1e6,
            "us",
            large["floor_after_first"] * 1e6,
        ),
    ]
    if traced:
        wk, cl = sc["worker"].per_task, sc["client"].per_task
        rows += [
            Row("worker fs syscalls / task", wk, "calls", sc["floor_worker"].per_task, False, "<= 12", wk <= 12),
            Row("client fs syscalls / task", cl, "calls", sc["floor_client"].per_task, False, "<= 8", cl <= 8),
            Row(
                "idle worker fs syscalls / s", idle["rate"], "ops/s", idle["floor"], False, "<= 5/s", idle["rate"] <= 5
            ),
        ]
    else:
        rows += [Row(m, None, "calls") for m in ("worker fs syscalls / task", "client fs syscalls / task")]
        rows.append(Row("idle worker fs syscalls / s", None, "ops/s"))

    table = [cells(r) for r in rows]
    print()
    print(text_table(table, HEADER))
    details = []
    if traced:
        per_task = {
            "worker": sc["worker"].delta,
            "floor worker": sc["floor_worker"].delta,
            "client": sc["client"].delta,
            "floor client": sc["floor_client"].delta,
        }
        divisors = {
            "worker": sc["worker"].tasks,
            "floor worker": sc["floor_worker"].tasks,
            "client": sc["client"].tasks,
            "floor client": sc["floor_client"].tasks,
        }
        h1, r1 = breakdown(per_task, divisors)
        h2, r2 = breakdown({"idle worker": idle["trace"]}, {"idle worker": idle["window"]})
        print("\nPer task, by syscall (traced run minus baseline, divided by the task count):")
        print(text_table(r1, h1))
        print(f"\nIdle worker, per second over {idle['window']:.0f} s:")
        print(text_table(r2, h2))
        raw = (
            f"strace -c would count (pipe/socket/inotify calls included): worker {sc['worker'].raw_per_task:.2f},"
            f" client {sc['client'].raw_per_task:.2f} per task. Worker against a 1-task baseline instead of"
            f" 0-task (first-task costs not charged): {sc['worker_vs_one'].per_task:.2f} per task."
        )
        print("\n" + raw)
        details = [
            "## Filesystem syscalls by call",
            "",
            f"Per task ({sizes.strace_n} tasks traced, baseline subtracted; `(x ENOENT)` are failed calls"
            " included in the count):",
            "",
            md_table(r1, h1),
            "",
            f"Idle worker, per second over {idle['window']:.0f} s:",
            "",
            md_table(r2, h2),
            "",
            raw,
            "",
        ]
    if args.no_write:
        return 0
    doc = render(info, sizes, table, details, load_before, load_after, args.quick, args.dir)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(doc, encoding="utf-8")
    log(f"wrote {args.output}")
    return 0


def render(
    info: dict[str, str],
    sizes: Sizes,
    table: list[list[str]],
    details: list[str],
    load_before: str,
    load_after: str,
    quick: bool,
    where: str,
) -> str:
    machine_lines = [f"- {k}: {v}" for k, v in info.items() if k != "date"]
    machine_lines.append(f"- load average (1, 5, 15 min) before: {load_before}; after: {load_after}")
    return "\n".join(
        [
            "# Performance",
            "",
            "What fs-task-queue costs on a local disk, measured by `benchmarks/run.py`, next to a *floor*:",
            "the bare directory protocol with no features at all, run the same way on the same machine.",
            "Reproduce with `make bench` (it runs `.venv/bin/python benchmarks/run.py`; strace must be",
            "installed for the syscall rows).",
            "",
            *(["**This was a `--quick` run: sizes are too small for the figures to mean much.**", ""] if quick else []),
            f"Measured {info['date']}.",
            "",
            *machine_lines,
            "",
            "## Results",
            "",
            md_table(table, HEADER),
            "",
            "*ratio* is value / floor: a percentage for throughputs (higher is better), a multiple for",
            f"times and counts (lower is better). Enqueue rates are medians of {sizes.enqueue_reps} runs, drain"
            f" rates and claim times medians of {sizes.reps}; library and floor runs alternate, and for"
            " throughputs the ratio is the median of each run's own library/floor ratio (the disk of a"
            " shared machine can change speed threefold within minutes, so a ratio of the two medians"
            " could pair a fast spell with a slow one). The per-run figures are in the benchmark's log.",
            "",
            *details,
            "## Method",
            "",
            f"Everything runs in a fresh temporary directory under `{where}` with default settings and no-op"
            " tasks (`operator.pos`, which workers unpickle by reference). Workers are real processes,"
            " `python -m fs_task_queue worker --path P --log-level WARNING` (with `--burst` for the drain"
            " runs), so they include the default process isolation (a worker process and a task process,"
            " which run consecutive tasks at once). The package's bytecode is compiled beforehand"
            " (`make bench` runs compileall), as an installed package's is. Nothing is deleted until"
            " the end: on ext4 without a journal (the disk this was written on) new inodes skip those"
            " freed in the last 5-10 s, which made any run that followed a deletion up to twice as slow.",
            "",
            f"- **enqueue**: {sizes.enqueue_n} tasks into a fresh queue, by a loop of `queue.enqueue(operator.pos, i)`"
            " and by `queue.map(operator.pos, items)`. Floor: a loop of open/write/close into `tmp/`"
            " and rename into `queued/` of a file the size of a real task file. The three are timed in"
            f" alternating chunks of {ENQUEUE_CHUNK} tasks, each after a `sync`, so a slow spell of a shared"
            " disk hits all three alike.",
            f"- **drain**: {sizes.drain_n} tasks queued beforehand (copies of real task files in a fresh queue"
            " directory); the time from starting 1 or 2 burst workers until the last one exits, nothing"
            " subtracted (interpreter start-up, worker registration and the task process's start are"
            " included). Floor: `benchmarks/floor.py drain`, which lists `queued/` once and, per name,"
            " renames it to `claimed/`, reads it, writes a result to `tmp/` and renames it into `results/`.",
            f"- **idle latency**: one worker started and left idle; then {sizes.latency_samples} times (after"
            f" {sizes.latency_warmup} warm-up tasks, for first-use costs) enqueue one"
            " task and `job.wait()` for it, 10 ms apart; time from before `enqueue` to `wait` returning."
            " Floor: an inotify-driven floor worker and a client that keeps one inotify watch on `results/`.",
            f'- **claim**: `Claimer(queue, "bench")` in this process on queues of {sizes.claim_small} and'
            f" {sizes.claim_large} tasks (submitted by `queue.map`, so spread over its shards as in real"
            " use); the first claim (which lists the top of `queued/` and its oldest shards) and the mean"
            f" over the first {sizes.claim_count} claims (listing included, so this is the amortized cost)."
            " The claimer's one-time registration (folder, liveness lock, identity file) is done before the"
            " clock starts. Floor: `sorted(os.listdir(queued))` then one rename per claim, on a flat floor"
            " queue of as many tasks. The *claims 2..N* rows are (mean x N - first) / (N - 1): the claim"
            " cost once the listing is paid. The floor lists its whole directory once, amortized over N"
            " claims only, so a 50x bigger queue shows up in its mean even when each rename costs the same.",
            "- **filesystem syscalls** are counted with `strace -f -y` limited to file syscalls (open*, read*,"
            " write*, close, stat family, getdents, rename*, link*, unlink*, mkdir, rmdir, utimensat, fsync,"
            " lseek, truncate, access, readlink, chmod/chown, flock, inotify_add_watch...; the list is in"
            " `benchmarks/syscalls.py`). The full trace is parsed instead of using `strace -c` because `-y`"
            " shows what each descriptor is: reads and writes on the pipes between a worker's two"
            " processes, on other pipes and on inotify descriptors touch no filesystem and are listed"
            " apart, not counted (the raw count that `strace -c` would give is stated under the breakdown).",
            f"  - worker: a burst worker draining {sizes.strace_n} tasks minus one draining 0 tasks (start-up"
            f" and shut-down), divided by {sizes.strace_n}. The same against a 1-task run is stated under the"
            " breakdown: a difference would be a once-per-worker cost paid at the first task.",
            f"  - client: `benchmarks/client.py`, which enqueues {sizes.strace_n} tasks and then waits for each"
            " result in order while a worker (not traced) serves the queue, minus the same script with 0"
            " tasks (same imports, queue opened).",
            f"  - idle: a worker traced from its start; the calls made during {sizes.idle_seconds:.0f} s, starting"
            " 2 s after it registered, divided by the window. The default 30 s covers one heartbeat (30 s),"
            " two recovery passes (15 s) and the local-filesystem safety polls (5 s); a 10 s window would catch the"
            " heartbeat or not by chance. The floor idles on inotify alone.",
            "",
            "The machine may be shared: the load average and I/O stall share above say how busy it was."
            " Throughputs and latencies move with that (creating files is what a busy disk slows down most);"
            " syscall counts do not.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
