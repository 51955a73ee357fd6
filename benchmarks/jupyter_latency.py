"""Latency of a trivial ``%%fsq`` cell with one idle local worker, and ``import fs_task_queue`` time.

Usage::

    python benchmarks/jupyter_latency.py            # 50 cells
    python benchmarks/jupyter_latency.py --runs 10

A real in-process IPython ``InteractiveShell`` runs ``%%fsq`` cells against a real
worker process (``%fsq workers 1``, idle between cells). For each cell:

- "started": from ``run_cell`` being called to the cell's first line running on
  the worker (the cell records ``time.time()``; same host, same clock);
- "round trip": from ``run_cell`` being called to it returning with the cell's
  variable in the notebook namespace.

The display is the static one (no widget: a plain shell has no kernel). It measures, it does not assert.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def import_time(repeat: int = 10) -> float:
    """Median seconds of ``import fs_task_queue`` in a fresh interpreter (bytecode compiled)."""
    code = "import time; t = time.perf_counter(); import fs_task_queue; print(time.perf_counter() - t)"
    runs = [float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(repeat)]
    return statistics.median(runs)


def cells(runs: int) -> tuple[list[float], list[float]]:
    import io
    from contextlib import redirect_stdout

    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "fs_task_queue.jupyter")
    started: list[float] = []
    back: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        sink = io.StringIO()
        with redirect_stdout(sink):
            ip.run_line_magic("fsq", f"use {Path(tmp) / 'queue'}")
            ip.run_line_magic("fsq", "workers 1")
            ip.run_cell("%%fsq\nwarm = 1\n")  # the task process imports the cell runner once
        try:
            for _ in range(runs):
                ip.user_ns.pop("t_started", None)
                time.sleep(0.3)  # let the worker go idle (its poll backs off), as between a person's cells
                with redirect_stdout(sink):
                    t0 = time.time()
                    result = ip.run_cell("%%fsq\nimport time\nt_started = time.time()\n")
                    t1 = time.time()
                if not result.success or "t_started" not in ip.user_ns:
                    raise SystemExit(f"cell failed: {result.error_in_exec!r}")
                started.append(ip.user_ns["t_started"] - t0)
                back.append(t1 - t0)
        finally:
            with redirect_stdout(sink):
                ip.run_line_magic("fsq", "workers 0")
            ip.run_line_magic("unload_ext", "fs_task_queue.jupyter")
            InteractiveShell.clear_instance()
    return started, back


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    started, back = cells(args.runs)
    ms = 1000.0
    print(f"%%fsq trivial cell, one idle local worker, {args.runs} runs:")
    print(f"  to started:     p50 {_pct(started, 0.5) * ms:6.1f} ms   p95 {_pct(started, 0.95) * ms:6.1f} ms")
    print(f"  variables back: p50 {_pct(back, 0.5) * ms:6.1f} ms   p95 {_pct(back, 0.95) * ms:6.1f} ms")
    print(f"import fs_task_queue: {import_time() * ms:.1f} ms (median of 10 fresh interpreters)")


if __name__ == "__main__":
    main()
