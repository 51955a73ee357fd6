"""What a person sees: a trivial ``%%fsq`` cell in a real JupyterLab, one idle local worker.

Usage::

    python benchmarks/widget_latency.py             # 30 cells of each kind
    python benchmarks/widget_latency.py --runs 20

JupyterLab runs as a server on 127.0.0.1 (its own config, data and settings
folders in a temporary directory) and Debian's ``/usr/bin/chromium`` shows it
headless through Playwright (Playwright's browser download is never used), as
in tests/test_browser.py. The notebook loads the extension, uses a queue in the
temporary directory and starts one worker with ``%fsq workers 1``. Then, N
times, a new cell ``%%fsq`` / ``x_i = time.time()`` is typed and run with
Shift+Enter, and the page itself timestamps (from the keydown, before
JupyterLab sees it):

- widget: the cell's ``.fsq-job`` widget has a size (stamped at the next
  animation frame, i.e. the frame that paints it);
- status: its ``.fsq-status`` pill first shows anything past "queued" on screen;
- worker started: the cell's ``x_i`` (``time.time()`` on the worker, same host
  and clock) minus the keypress wall time. A fast job can go from "queued" to
  "finished" between two screen updates, so "started" is not always seen on
  screen; this figure always exists;
- variables back: the cell's prompt shows its number and the kernel is idle.

The same is measured for ``%%fsq --no-wait`` cells (the cell returns at once;
the next one is typed after the job ends), and for the same cell without
``%%fsq`` (JupyterLab's and the kernel's own share: the toolbar's "idle" comes
~150 ms after the prompt's number even for ``z = time.time()``). Between cells the script pauses
(``--pause``) so the worker is idle, as between a person's cells. It also
prints the median ``import fs_task_queue`` time over 10 fresh interpreters.

It measures, it does not assert. Everything it starts (server, kernel, worker,
browser) is stopped at the end, on errors too, and the whole run is bounded
(``--deadline``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Page

# JupyterLab and Chromium start as in tests/test_browser.py: one launcher, one set of browser flags.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chromium import ARGS as CHROMIUM_ARGS  # type: ignore[import-not-found]
from chromium import CHROMIUM
from lab_server import jupyterlab  # type: ignore[import-not-found]

TOKEN = "fsq-widget-latency"
WAIT_MS = 60_000  # any single step of a cell

# Installed before each keypress: stamps the keydown (window, capture phase: before
# JupyterLab's own document listener runs the cell), then watches the cell's DOM.
OBSERVE_JS = """
(run) => {
  const cell = document.querySelector('.jp-NotebookPanel .jp-Cell.jp-mod-active');
  const panel = cell.closest('.jp-NotebookPanel');
  const now = () => performance.timeOrigin + performance.now();
  const rec = {run, t0: null, wall0: null, widget: null, status: null, statusName: null, prompt: null, done: null,
    final: null};
  window.__bench = rec;
  const onKey = (e) => {
    if (rec.t0 === null && e.key === 'Enter' && e.shiftKey) { rec.t0 = now(); rec.wall0 = Date.now(); }
  };
  window.addEventListener('keydown', onKey, true);
  const stamp = (key) => requestAnimationFrame(() => { if (rec[key] === null) rec[key] = now(); });
  const pending = {widget: false, status: false, prompt: false, done: false};
  const check = () => {
    if (rec.t0 === null) return;
    const job = cell.querySelector('.jp-OutputArea .fsq-job');
    if (!pending.widget && job && job.getBoundingClientRect().height > 0) { pending.widget = true; stamp('widget'); }
    const pill = job && job.querySelector('.fsq-status');
    const status = pill ? pill.getAttribute('data-status') : null;
    if (!pending.status && status && status !== 'queued') {
      pending.status = true; rec.statusName = status; stamp('status');
    }
    if (status === 'finished' || status === 'failed' || status === 'cancelled') rec.final = status;
    const prompt = cell.querySelector('.jp-InputPrompt');
    const idle = document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]');
    const numbered = prompt && /\\[\\d+\\]/.test(prompt.textContent);
    if (!pending.prompt && numbered) { pending.prompt = true; stamp('prompt'); }
    if (!pending.done && numbered && idle) { pending.done = true; stamp('done'); }
  };
  const observer = new MutationObserver(check);
  observer.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
  rec.stop = () => { observer.disconnect(); window.removeEventListener('keydown', onKey, true); };
}
"""


# The toolbar says "idle" before the kernel's websocket is connected; a run then is dropped.
KERNEL_READY_JS = """() => {
  const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = widget && widget.sessionContext && widget.sessionContext.session
    && widget.sessionContext.session.kernel;
  return kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""


class DeadlineExceeded(Exception):
    pass


@dataclass
class Run:
    widget: float | None  # None: a plain cell (no widget)
    status: float | None  # None: the pill never left "queued" on screen
    status_name: str | None
    prompt: float  # the prompt's number alone (the kernel may not be idle yet)
    done: float
    wall0: float  # keypress, epoch seconds (browser clock = host clock)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def import_time(repeat: int = 10) -> float:
    """Median seconds of ``import fs_task_queue`` in a fresh interpreter (bytecode compiled)."""
    code = "import time; t = time.perf_counter(); import fs_task_queue; print(time.perf_counter() - t)"
    runs = [float(subprocess.check_output([sys.executable, "-c", code], text=True, timeout=60)) for _ in range(repeat)]
    return statistics.median(runs)


def _notebook(queue_dir: Path) -> dict[str, Any]:
    setup = [
        f"%load_ext fs_task_queue.jupyter\nimport fs_task_queue\nqueue = fs_task_queue.Queue({str(queue_dir)!r})",
        "%fsq use queue",
        "%fsq workers 1",
        # Warm-up: the worker's task process imports the cell runner once; the kernel imports the views.
        "%%fsq\nwarm = 1",
        "%%fsq --no-wait\nwarm2 = 1",
        "%fsq wait",
    ]
    cell: dict[str, Any] = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": []}
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [dict(cell, id=f"setup{i}", source=src) for i, src in enumerate(setup)],
    }


def _stop_leftover_workers(queue_dir: Path) -> None:
    """SIGTERM any worker still serving our queue (they stop with their kernel; this is the backstop)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and os.fsencode(queue_dir) in argv:
            try:
                os.kill(int(entry.name), signal.SIGTERM)
            except OSError:
                pass


def _run_js(page: Page, command: str) -> None:
    page.evaluate(f"window.jupyterapp.commands.execute({json.dumps(command)})")


def _errors(page: Page) -> str:
    shown = page.locator('.jp-NotebookPanel [data-mime-type="application/vnd.jupyter.error"]')
    return "\n".join(shown.all_inner_texts())


def _new_cell(page: Page, text: str) -> None:
    """Type ``text`` into a fresh cell at the end of the notebook, left in edit mode."""
    last = page.locator(".jp-NotebookPanel .jp-Cell").last
    if last.locator(".cm-content").inner_text().strip():
        last.locator(".jp-InputPrompt").click()  # select it in command mode
        _run_js(page, "notebook:insert-cell-below")
        page.locator(".jp-NotebookPanel .jp-Cell").last.locator(".cm-content").wait_for()
    editor = page.locator(".jp-NotebookPanel .jp-Cell").last.locator(".cm-content")
    editor.click()
    page.keyboard.insert_text(text)  # no key events: no completer, no auto-indent


def run_cell(page: Page, text: str, run: int, until: str) -> Run:
    """Type and Shift+Enter one cell; wait for ``until`` (a JS condition on ``rec``)."""
    _new_cell(page, text)
    page.evaluate(OBSERVE_JS, run)
    page.keyboard.press("Shift+Enter")
    try:
        page.wait_for_function(f"(() => {{ const rec = window.__bench; return {until}; }})()", timeout=WAIT_MS)
    except Exception:
        raise RuntimeError(
            f"cell {run} did not finish: {page.evaluate('JSON.stringify(window.__bench)')}\n{_errors(page)}"
        ) from None
    rec = page.evaluate("(() => { window.__bench.stop(); return window.__bench; })()")
    if rec["widget"] is not None and rec["final"] != "finished":
        raise RuntimeError(f"cell {run} ended {rec['final']}:\n{_errors(page)}")
    ms = 1000.0
    return Run(
        widget=None if rec["widget"] is None else (rec["widget"] - rec["t0"]) / ms,
        status=None if rec["status"] is None else (rec["status"] - rec["t0"]) / ms,
        status_name=rec["statusName"],
        prompt=(rec["prompt"] - rec["t0"]) / ms,
        done=(rec["done"] - rec["t0"]) / ms,
        wall0=rec["wall0"] / ms,
    )


def cells(runs: int, pause: float, tmp: Path) -> tuple[list[Run], list[Run], list[Run], dict[int, float]]:
    from playwright.sync_api import sync_playwright

    (tmp / "lab").mkdir()
    queue_dir = tmp / "queue"
    (tmp / "lab" / "bench.ipynb").write_text(json.dumps(_notebook(queue_dir)))
    plain: list[Run] = []
    waiting: list[Run] = []
    no_wait: list[Run] = []
    try:
        # Every cell stays rendered: with windowing, cells scrolled away are not laid out.
        lab_settings = {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"}}
        with jupyterlab(tmp, tmp / "lab", TOKEN, lab_settings) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            try:
                page.goto(f"{base}/lab/tree/bench.ipynb?token={TOKEN}")
                page.wait_for_function(KERNEL_READY_JS, timeout=90_000)
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
                # The setup is done when every cell has its number and the kernel is idle.
                page.wait_for_function(
                    """() => [...document.querySelectorAll('.jp-NotebookPanel .jp-InputPrompt')]
                         .every(p => /\\[\\d+\\]/.test(p.textContent))
                       && document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')""",
                    timeout=WAIT_MS * 2,
                )
                if _errors(page):
                    raise RuntimeError(f"the setup cells failed:\n{_errors(page)}")
                for i in range(runs):
                    # JupyterLab's own share: the same cell without %%fsq, run in the kernel.
                    time.sleep(pause)
                    plain.append(run_cell(page, f"import time\nz_{i} = time.time()", i, "rec.done"))
                for i in range(runs):
                    time.sleep(pause)  # the worker idles, as between a person's cells
                    waiting.append(
                        run_cell(page, f"%%fsq\nimport time\nx_{i} = time.time()", i, "rec.done && rec.widget")
                    )
                for i in range(runs):
                    time.sleep(pause)
                    # The cell returns at once; the next one waits for the job's end (an idle worker again).
                    cond = "rec.done && rec.widget && rec.final"
                    no_wait.append(run_cell(page, f"%%fsq --no-wait\nimport time\ny_{i} = time.time()", i, cond))
                # The workers' clocks for the waiting cells: their x_i came back into the kernel.
                _new_cell(
                    page,
                    'import json\nprint("XS=" + json.dumps({k: v for k, v in globals().items() if k[:2] == "x_"}))',
                )
                page.keyboard.press("Shift+Enter")
                shown = page.locator(".jp-NotebookPanel .jp-OutputArea-output", has_text="XS=").last
                shown.wait_for(timeout=WAIT_MS)
                found = re.search(r"XS=(\{.*\})", shown.inner_text())
                if not found:
                    raise RuntimeError(f"no x_i values shown: {shown.inner_text()!r}")
                xs = {int(k[2:]): float(v) for k, v in json.loads(found.group(1)).items()}
                # Stop the worker from the notebook, as a person would (the kernel's exit would too).
                _new_cell(page, "%fsq workers 0")
                page.keyboard.press("Shift+Enter")
                page.locator(".jp-NotebookPanel .jp-OutputArea-output", has_text="0 local worker").last.wait_for(
                    timeout=WAIT_MS
                )
            except BaseException:
                shot = Path(tempfile.gettempdir()) / "fsq-widget-latency-failure.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"failed; the page at that moment: {shot}", file=sys.stderr)
                raise
            finally:
                browser.close()
    finally:
        _stop_leftover_workers(queue_dir)
    return plain, waiting, no_wait, xs


def _row(label: str, values: list[float]) -> str:
    if not values:
        return f"  {label:<34} (none)"
    ms = 1000.0
    p50, p95 = _pct(values, 0.5) * ms, _pct(values, 0.95) * ms
    return f"  {label:<34} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   (n={len(values)})"


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise DeadlineExceeded("the benchmark ran past --deadline; everything it started is being stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="cells of each kind (default: 30)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds idle before each cell (default: 1)")
    parser.add_argument("--deadline", type=int, default=900, help="stop everything after this many seconds")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not os.path.exists(CHROMIUM):
        sys.exit(f"needs Debian's chromium at {CHROMIUM}: apt-get install chromium")
    if shutil.which("jupyter", path=str(Path(sys.executable).parent)) is None:
        sys.exit("needs JupyterLab and Playwright in this interpreter: pip install -e '.[test]'")
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(args.deadline)
    try:
        with tempfile.TemporaryDirectory(prefix="fsq-wlat-") as tmp:
            plain, waiting, no_wait, xs = cells(args.runs, args.pause, Path(tmp))
        imported = import_time()
    except DeadlineExceeded as exc:
        sys.exit(f"widget_latency: {exc}")
    finally:
        signal.alarm(0)
    print(f"%%fsq trivial cell in JupyterLab (headless Chromium), one idle local worker, {args.runs} runs each,")
    print(f"{args.pause:g} s idle before each; times from the Shift+Enter keydown:")
    print("waiting cell (%%fsq):")
    print(_row("(a) widget on screen", [r.widget for r in waiting if r.widget is not None]))
    print(_row("(b) status past 'queued' on screen", [r.status for r in waiting if r.status is not None]))
    print(
        _row(
            "(b) 'started' on screen, when seen",
            [r.status for r in waiting if r.status is not None and r.status_name == "started"],
        )
    )
    print(_row("(b) started on the worker (x_i)", [xs[i] - r.wall0 for i, r in enumerate(waiting) if i in xs]))
    print(_row("    prompt number shown", [r.prompt for r in waiting]))
    print(_row("(c) variables back (prompt + idle)", [r.done for r in waiting]))
    firsts = Counter(str(r.status_name) for r in waiting)
    print("  first status past 'queued' on screen: " + ", ".join(f"{s} {n}x" for s, n in sorted(firsts.items())))
    print("%%fsq --no-wait cell:")
    print(_row("(a) widget on screen", [r.widget for r in no_wait if r.widget is not None]))
    print(_row("    status past 'queued' on screen", [r.status for r in no_wait if r.status is not None]))
    print(_row("    prompt number shown", [r.prompt for r in no_wait]))
    print(_row("    cell returned (prompt + idle)", [r.done for r in no_wait]))
    print("the same cell without %%fsq (JupyterLab and the kernel alone):")
    print(_row("    prompt number shown", [r.prompt for r in plain]))
    print(_row("    cell returned (prompt + idle)", [r.done for r in plain]))
    print(f"import fs_task_queue: {imported * 1000:.1f} ms (median of 10 fresh interpreters)")


if __name__ == "__main__":
    main()
