"""%%fsq and %fsq in a real IPython InteractiveShell, with real worker processes."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from fsq_shell import close_shell, new_shell
from helpers import wait_for
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from fs_task_queue import Queue, RemoteError
from fs_task_queue.errors import ShipError, WaitInterrupted
from fs_task_queue.jupyter import ship
from fs_task_queue.status import JobStatus


def run(ip: InteractiveShell, text: str) -> object:
    """Run a cell as a notebook does (history on: In[n] numbers); raise what it raised."""
    result = ip.run_cell(text, store_history=True)
    if result.error_before_exec is not None:
        raise result.error_before_exec
    if result.error_in_exec is not None:
        raise result.error_in_exec
    return result.result


def test_notebook_function_and_class_shipped_variables_value_and_stdout(nb: InteractiveShell) -> None:
    run(
        nb,
        "scale = 3\ndef triple(x):\n    return x * scale\nclass Box:\n    def __init__(self, v):\n        self.v = v\n",
    )
    with capture_output() as out:
        value = run(nb, "%%fsq\nimport math\nprint('on the worker', scale)\nb = Box(triple(2))\nn = b.v + 1\nn * 10\n")
    assert value == 70
    assert nb.user_ns["n"] == 7
    assert nb.user_ns["b"].v == 6 and type(nb.user_ns["b"]).__name__ == "Box"
    assert nb.user_ns["math"].pi > 3  # a module comes back imported, not pickled
    assert "on the worker 3\n" in out.stdout


def test_trailing_semicolon_hides_the_value_and_inputs_are_not_sent_back(nb: InteractiveShell) -> None:
    nb.user_ns["data"] = [1, 2, 3]
    assert run(nb, "%%fsq\ntotal = sum(data)\ntotal;\n") is None
    assert nb.user_ns["total"] == 6
    assert nb.user_ns["data"] == [1, 2, 3]


def test_matplotlib_figure_comes_back_as_png(nb: InteractiveShell) -> None:
    with capture_output() as out:
        run(nb, "%%fsq\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('sweep')\nplt.show()\n")
    pngs = [o.data["image/png"] for o in out.outputs if "image/png" in o.data]
    assert len(pngs) == 1
    import base64

    assert base64.b64decode(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_display_comes_back(nb: InteractiveShell) -> None:
    cell = (
        "%%fsq\nclass Table:\n    def _repr_html_(self):\n        return '<table><tr><td>42</td></tr></table>'\n"
        "display(Table())\n"
    )
    with capture_output() as out:
        run(nb, cell)
    assert any("<td>42</td>" in o.data.get("text/html", "") for o in out.outputs)


def test_ipython_display_of_html_comes_back(nb: InteractiveShell) -> None:
    with capture_output() as out:
        run(nb, "%%fsq\nfrom IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))\n")
    assert any(o.data.get("text/html") == "<b>bold</b>" for o in out.outputs)


def test_traceback_shows_cell_and_notebook_function_lines(nb: InteractiveShell) -> None:
    run(nb, "def risky(x):\n    ratio = 1 / x  # the notebook's line\n    return ratio\n")
    with pytest.raises(RemoteError) as info:
        run(nb, "%%fsq\ny = 5\nz = risky(y - 5)  # the cell's line\n")
    tb = info.value.remote_traceback
    assert "z = risky(y - 5)  # the cell's line" in tb
    assert "ratio = 1 / x  # the notebook's line" in tb
    assert "<dynamic-code>" not in tb
    assert "run_cell" not in tb  # the runner's frames are hidden
    assert isinstance(info.value, ZeroDivisionError)
    assert "\n".join(info.value._render_traceback_()).count("ZeroDivisionError") >= 1


def test_plain_enqueue_of_a_notebook_function_shows_its_source(nb: InteractiveShell, served: Queue) -> None:
    run(nb, "def invert(x):\n    return 1 / x  # defined in IPython\n")
    job = served.enqueue(nb.user_ns["invert"], 0)
    error = job.exception(timeout=60)
    assert isinstance(error, RemoteError)
    assert "return 1 / x  # defined in IPython" in error.remote_traceback
    assert "<dynamic-code>" not in error.remote_traceback


def test_plain_enqueue_of_an_exec_defined_function_shows_its_source(served: Queue) -> None:
    import linecache

    source = "def halve(x):\n    return x / 0  # exec'd\n"
    filename = "<generated-7>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns: dict[str, object] = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), ns)
    error = served.enqueue(ns["halve"], 1).exception(timeout=60)
    assert isinstance(error, RemoteError)
    assert f'File "{filename}", line 2, in halve' in error.remote_traceback
    assert "return x / 0  # exec'd" in error.remote_traceback


def test_no_wait_then_pull(nb: InteractiveShell) -> None:
    run(nb, "%%fsq --no-wait --name handle\nresult = 6 * 7\n")
    assert "result" not in nb.user_ns
    handle = nb.user_ns["handle"]
    assert handle.wait(60).values.keys() == {"result"}
    run(nb, "%fsq pull handle")
    assert nb.user_ns["result"] == 42


def test_map_sweep_brings_lists_in_item_order(nb: InteractiveShell) -> None:
    nb.user_ns["offset"] = 100
    run(nb, "%%fsq --map k=range(4) --map 'w=[10, 20, 30, 40]' --name sweep\nscore = k * w + offset\nsquare = k * k\n")
    assert nb.user_ns["score"] == [100, 120, 160, 220]
    assert nb.user_ns["square"] == [0, 1, 4, 9]
    assert len(nb.user_ns["sweep"]) == 4


def test_unshippable_value_named_before_anything_is_submitted(nb: InteractiveShell, served: Queue) -> None:
    run(nb, "import threading\nlock = threading.Lock()\nfine = 1\n")
    with pytest.raises(ShipError) as info:
        run(nb, "%%fsq\nwith lock:\n    x = fine\n")
    assert "`lock`" in str(info.value) and "Nothing was submitted" in str(info.value)
    assert "`fine`" not in str(info.value)
    assert served.jobs() == []


def test_large_namespace_warns_naming_the_variable(nb: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ship, "LARGE_NAMESPACE", 10_000)
    nb.user_ns["big"] = b"x" * 50_000
    nb.user_ns["small"] = 1
    with pytest.warns(ship.LargeNamespaceWarning, match="`big` 48.8 KB"):
        run(nb, "%%fsq\nn = len(big) + small\n")
    assert nb.user_ns["n"] == 50_001


def test_interrupt_stops_the_wait_not_the_job(nb: InteractiveShell) -> None:
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(WaitInterrupted) as info:
            run(nb, "%%fsq --name slow\nimport time\ntime.sleep(4)\narrived = 'late'\n")
    finally:
        timer.cancel()
    job = nb.user_ns["slow"]
    lines = info.value._render_traceback_()
    assert lines[0].startswith(f"Stopped waiting for job {job.id}")
    assert any(f"%fsq pull {job.id}" in line for line in lines)
    assert any(f"%fsq cancel {job.id}" in line for line in lines)
    assert job.status is not JobStatus.CANCELED
    job.wait(60)
    run(nb, f"%fsq pull {job.id}")
    assert nb.user_ns["arrived"] == "late"


def test_reattach_after_a_new_shell(nb: InteractiveShell, served: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    run(nb, "%%fsq --no-wait --name h\nkept = 'across restarts'\n")
    job_id = nb.user_ns["h"].id
    nb.user_ns["h"].wait(60)
    close_shell(nb)
    fresh = new_shell()
    try:
        assert "kept" not in fresh.user_ns
        run(fresh, f"%fsq use {served.path}")
        with capture_output() as out:
            run(fresh, "%fsq jobs")
        assert job_id in out.stdout and "finished" in out.stdout and "kept = 'across restarts'" in out.stdout
        run(fresh, f"%fsq pull {job_id}")
        assert fresh.user_ns["kept"] == "across restarts"
    finally:
        # the fixture's teardown unloads the extension from whichever shell is current
        pass


def test_help_everywhere(shell: InteractiveShell) -> None:
    with capture_output() as out:
        run(shell, "%fsq --help")
        run(shell, "%fsq workers -h")
        run(shell, "%%fsq --help\nx = 1\n")
    assert "%fsq [-h] COMMAND" in out.stdout and "%fsq workers [-h] [--slurm]" in out.stdout
    assert "with --slurm: N batch jobs" in out.stdout and "later %%fsq cells submit workers" in out.stdout
    assert "--map NAME=EXPR" in out.stdout and "--no-wait" in out.stdout
    assert "x" not in shell.user_ns


def test_bad_input_says_what_to_do(shell: InteractiveShell, tmp_path: Path) -> None:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="%fsq use PATH"):
        run(shell, "%%fsq\nx = 1\n")
    run(shell, f"%fsq use {tmp_path / 'q'}")
    with pytest.raises(UsageError, match="NAME=EXPR"):
        run(shell, "%%fsq --map k\nx = 1\n")
    with pytest.raises(UsageError, match="differ in length"):
        run(shell, "%%fsq --map a=[1] --map 'b=[1, 2]'\nx = a\n")
    with pytest.raises(UsageError, match=r"must be quoted: --map 'x=\[1, 2\]'"):
        run(shell, "%%fsq --map a=[1, 2]\nx = a\n")
    with pytest.raises(UsageError, match="IPython syntax"):
        run(shell, "%%fsq\n!ls\n")
    with pytest.raises(UsageError, match="invalid choice"):
        run(shell, "%fsq bogus")
    assert Queue(tmp_path / "q").jobs() == []


def test_local_workers_started_and_stopped(shell: InteractiveShell, tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    run(shell, f"%fsq use {queue.path}")
    run(shell, "%fsq workers 2")
    procs = list(shell.user_ns["get_ipython"]().magics_manager.registry["FsqMagics"].session.workers.procs)
    assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert sorted(w.id for w in queue.workers()) == sorted(f"nb-{os.getpid()}-{i}" for i in range(2))
    assert run(shell, "%%fsq\n21 * 2\n") == 42
    run(shell, "%fsq workers 0")
    assert all(p.poll() is not None for p in procs)
    wait_for(lambda: queue.workers() == [], what="the local workers to unregister")


def test_autopull_brings_variables_before_the_next_cell(nb: InteractiveShell) -> None:
    run(nb, "%%fsq --no-wait --autopull --name h\nlate = 'arrived'\n")
    nb.user_ns["h"].wait(60)
    assert "late" not in nb.user_ns
    with capture_output() as out:
        run(nb, "1 + 1")
    assert nb.user_ns["late"] == "arrived"
    assert "late arrived from job" in out.stdout
