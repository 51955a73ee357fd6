"""Worker side: what a cell shows (streams, displays, figures, its last value) as notebook outputs.

There is no kernel on a worker, so nothing publishes outputs over a socket:
:class:`Capture` collects them as nbformat v4 output dicts, in order, and
:meth:`Capture.save` stores them as the job's ``outputs.json``, readable later
from any kernel. Neither IPython nor matplotlib is imported here.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from typing import Any, TextIO

from fs_task_queue.runtime import write_job_file

__all__ = ["OUTPUTS_FILE", "STREAM_LIMIT", "Capture", "active", "format_bundle"]

#: The job file holding a cell's outputs: ``{"format": 1, "outputs": [...]}``.
OUTPUTS_FILE = "outputs.json"
#: At most this many characters of each stream are kept in the outputs (the job's log files keep all).
STREAM_LIMIT = 1 << 20

_REPRS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
)
_active: Capture | None = None


def active() -> Capture | None:
    """The capture of the cell running now, or None."""
    return _active


def figure_png(fig: Any) -> str:
    """A matplotlib figure as base64 PNG, cropped as IPython's inline backend does."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def format_bundle(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mime bundle (data, metadata) of ``obj``, as IPython's formatters would make it."""
    data: dict[str, Any] = {}
    md: dict[str, Any] = {}
    figure = sys.modules.get("matplotlib.figure")
    if figure is not None and isinstance(obj, figure.Figure):
        data["image/png"] = figure_png(obj)
    if hasattr(type(obj), "_repr_mimebundle_"):
        try:
            found = obj._repr_mimebundle_(include=None, exclude=None)
            if isinstance(found, tuple):
                found, extra = found
                md.update(extra or {})
            data.update(found or {})
        except Exception:
            pass  # as IPython: a broken formatter is skipped
    for mime, name in _REPRS:
        if mime in data or not hasattr(type(obj), name):
            continue
        try:
            value = getattr(obj, name)()
        except Exception:
            continue
        if isinstance(value, tuple):
            value, md[mime] = value
        if value is None:
            continue
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        data[mime] = value
    if "text/plain" not in data:
        try:
            data["text/plain"] = repr(obj)
        except Exception as exc:
            data["text/plain"] = f"<{type(obj).__name__}: repr failed: {exc!r}>"
    return data, md


class _Tee(io.TextIOBase):
    """Writes through to the job's log stream and records the text as a stream output."""

    def __init__(self, capture: Capture, inner: TextIO, name: str) -> None:
        super().__init__()
        self._capture, self._inner, self.name = capture, inner, name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._inner.write(text)
        self._capture.stream(self.name, text)
        return len(text)

    def flush(self) -> None:
        self._inner.flush()


class Capture:
    """Collects a cell's outputs while active (``with capture:``); :meth:`save` stores them."""

    def __init__(self, *, ipython: bool = False) -> None:
        self.outputs: list[dict[str, Any]] = []
        self._sizes = {"stdout": 0, "stderr": 0}
        self._saved: tuple[Any, ...] | None = None
        #: Whether ``IPython.display.display`` is routed here too (the cell uses IPython).
        self._ipython = ipython
        self._patched: list[tuple[Any, Any]] = []

    def __enter__(self) -> Capture:
        global _active
        self._saved = (_active, sys.stdout, sys.stderr)
        _active = self
        sys.stdout = _Tee(self, sys.stdout, "stdout")
        sys.stderr = _Tee(self, sys.stderr, "stderr")
        if self._ipython:
            self._route_ipython_display()
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        assert self._saved is not None
        _active, sys.stdout, sys.stderr = self._saved
        for module, original in self._patched:
            module.display = original
        self._patched.clear()

    def _route_ipython_display(self) -> None:
        # Without a shell, IPython's display() only prints a repr: `display(HTML(...))`
        # would come back as "<IPython.core.display.HTML object>". Its module-level
        # function is swapped for ours while the cell runs (the cell imports it then).
        try:
            import IPython.core.display_functions as functions
            import IPython.display as public
        except ImportError:
            return  # the cell's own import will say IPython is missing
        for module in (functions, public):
            self._patched.append((module, module.display))
            module.display = self.display

    def stream(self, name: str, text: str) -> None:
        size = self._sizes[name]
        if size > STREAM_LIMIT:
            return
        if size + len(text) > STREAM_LIMIT:
            text = text[: STREAM_LIMIT - size] + f"\n[... truncated; see job.read_output({name!r})]\n"
        self._sizes[name] = size + len(text)
        last = self.outputs[-1] if self.outputs else None
        if last is not None and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text  # consecutive chunks of a stream make one output, as in a kernel
        else:
            self.outputs.append({"output_type": "stream", "name": name, "text": text})

    def publish(self, data: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        self.outputs.append({"output_type": "display_data", "data": data, "metadata": metadata or {}})

    def display(self, *objs: Any, raw: bool = False, metadata: dict[str, Any] | None = None, **_: Any) -> None:
        """``display()`` for cells run on a worker (the notebook shows the objects when the job is pulled)."""
        for obj in objs:
            if raw and isinstance(obj, dict):
                self.publish(obj, metadata)
            else:
                data, md = format_bundle(obj)
                self.publish(data, {**md, **(metadata or {})})

    def figure(self, fig: Any) -> None:
        """Record a matplotlib figure drawn by the cell (empty figures are skipped, as inline does)."""
        if not fig.axes and not fig.images and not fig.texts:
            return
        data = {"image/png": figure_png(fig), "text/plain": f"<Figure size {fig.bbox.width:g}x{fig.bbox.height:g}>"}
        self.publish(data)

    def result(self, value: Any) -> None:
        data, md = format_bundle(value)
        self.outputs.append({"output_type": "execute_result", "data": data, "metadata": md, "execution_count": None})

    def save(self) -> None:
        """Store the outputs as the job's ``outputs.json`` (nothing outside a task)."""
        write_job_file(OUTPUTS_FILE, json.dumps({"format": 1, "outputs": self.outputs}).encode())
