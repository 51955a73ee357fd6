"""Every notebook in notebooks/ runs top to bottom in a real kernel (nbclient) against real workers.

The notebooks start their own worker processes, as a user would. Widget
states are what the kernel sent to the front end (nbclient records them like
JupyterLab's "save widget state"), so the final status and progress checked
here are what a saved notebook shows.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
#: Run by their own suites, which start what they need: an sshd (tests/ssh/test_notebook.py),
#: a dask cluster (tests/test_dask.py) and a SLURM cluster (tests/slurm/test_notebook.py).
RUN_ELSEWHERE = {"ssh.ipynb", "dask.ipynb", "slurm.ipynb"}
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
STATE_MIME = "application/vnd.jupyter.widget-state+json"


def test_there_are_notebooks():
    assert any(p.name == "quickstart.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path: Path) -> None:
    """Saved outputs go stale (and leak paths and ids): notebooks are committed clean."""
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them (Edit > Clear Outputs of All Cells)"
    assert "widgets" not in nb.metadata, f"{path.name} holds saved widget state: clear it before committing"


def execute(path: Path, tmp_path: Path) -> Any:
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    # Cells tagged "raises-exception" may fail; any other error fails the test.
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", store_widget_state=True, resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    return nb


class Widgets:
    """The widget states saved in a notebook, and the tree under a displayed widget."""

    def __init__(self, nb: Any) -> None:
        self.state = nb.metadata["widgets"][STATE_MIME]["state"]

    def tree(self, model_id: str) -> list[dict[str, Any]]:
        model = self.state[model_id]
        out = [model]
        for child in model["state"].get("children", []):
            out += self.tree(child.removeprefix("IPY_MODEL_"))
        return out

    def of_output(self, output: Any) -> list[dict[str, Any]]:
        return self.tree(output["data"][WIDGET_MIME]["model_id"])


def displayed(cell: Any) -> Any:
    (output,) = [o for o in cell.outputs if o.output_type == "display_data"]
    return output


def statuses(models: list[dict[str, Any]]) -> list[str]:
    return [s for m in models for s in re.findall(r'data-status="(\w+)"', str(m["state"].get("value", "")))]


def bars(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["state"] for m in models if m["model_name"] in ("FloatProgressModel", "IntProgressModel")]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name not in RUN_ELSEWHERE], ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    nb = execute(path, tmp_path)
    for i, cell in enumerate(nb.cells):
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        if errors:
            assert "raises-exception" in cell.metadata.get("tags", []), f"cell {i} failed: {errors[0]['evalue']}"
    if path.name == "quickstart.ipynb":
        check_quickstart(nb)
    if path.name == "magics.ipynb":
        check_magics(nb)


def results_of(nb: Any) -> dict[str, Any]:
    """Each code cell's outputs, by the first line of its source."""
    return {c.source.splitlines()[0]: c.outputs for c in nb.cells if c.cell_type == "code" and c.source}


def plain(outputs: list[Any]) -> str:
    return "".join(o["data"]["text/plain"] for o in outputs if o.output_type == "execute_result")


def check_magics(nb: Any) -> None:
    out = results_of(nb)
    # Shipped inputs (a notebook function included), assigned variables back, the last value.
    assert plain(out["normalised, total"]).startswith("([0.4615384615384615")
    assert plain(out['counts, "helper_value" in globals()']) == "({False: 2, True: 1}, False)"
    cells = [c.outputs for c in nb.cells if c.cell_type == "code"]
    rich = next(o for o in cells if any("image/png" in x.get("data", {}) for x in o))
    assert any("<b>bold from the worker</b>" in x.get("data", {}).get("text/html", "") for x in rich)
    assert plain(out["%fsq wait later"]) == "42"
    assert "In[" in "".join(o.get("text", "") for o in out["%fsq jobs"])
    assert "large: sum of 1..1000 is 500500" in plain(out["line"])
    errors = [o for outputs in cells for o in outputs if o.output_type == "error"]
    assert [e.ename for e in errors] == ["RemoteZeroDivisionError", "ShipError"], errors
    assert "ratio = total / (len(data) - 3)" in errors[0].evalue, "the cell's own line in the worker's traceback"
    assert "`lock`" in errors[1].evalue and "Nothing was submitted" in errors[1].evalue


def check_quickstart(nb: Any) -> None:
    widgets = Widgets(nb)
    code = {c.source.splitlines()[-1]: c for c in nb.cells if c.cell_type == "code" and c.source}

    job = displayed(code["job"])
    models = widgets.of_output(job)
    assert statuses(models)[0] == "finished"
    (bar,) = bars(models)
    assert bar["value"] == bar["max"] == 40 and bar["bar_style"] == "success"
    assert any("step 40 of 40" in str(m["state"].get("value", "")) for m in models)
    # The saved HTML (GitHub, nbviewer) was replaced by the final one when the job ended.
    assert job["data"]["text/plain"].endswith("finished>") and "steps" in job["data"]["text/html"]

    group = widgets.of_output(displayed(code["group"]))
    (bar,) = bars(group)
    assert bar["value"] == bar["max"] == 16
    assert "16 / 16 done" in str([m["state"].get("value") for m in group])

    bad = displayed(code["bad"])
    models = widgets.of_output(bad)
    assert statuses(models)[0] == "failed"
    text = " ".join(str(m["state"].get("value", "")) for m in models)
    assert "Traceback" in text and "ZeroDivisionError: division by zero" in text and "in mean" in text
    assert bad["data"]["text/plain"].endswith("failed>")

    board = " ".join(str(m["state"].get("value", "")) for m in widgets.of_output(displayed(code["queue"])))
    # Refreshed when the last wait ended: every job done, the two workers listed.
    # job 1 + group 16 + the %%fsq cell 1 + its --map sweep 3
    assert "finished</span> 21" in board and "failed</span> 1" in board and board.count("ago") == 2

    # %%fsq: the variables the cell assigned came back, and its last value is the cell's result.
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%fsq\n"))
    result = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert result and result[0]["data"]["text/plain"] == "9.166666666666666", cell.outputs
    assert any("computed on a worker" in o.get("text", "") for o in cell.outputs), cell.outputs
    assert code["squares"].outputs[0]["data"]["text/plain"] == "[0, 1, 4, 9, 16, 25]"
    sweep = code['[r["seconds"] for r in run]'].outputs[0]["data"]["text/plain"]
    assert sweep == "[0.05, 0.1, 0.2]", sweep

    wait_cell = next(c for c in nb.cells if c.cell_type == "code" and "%fsq wait" in c.source)
    printed = "".join(o.get("text", "") for o in wait_cell.outputs if o.output_type == "stream")
    assert "[0, 1, 4, 9" in printed and "ZeroDivisionError" in printed, wait_cell.outputs
