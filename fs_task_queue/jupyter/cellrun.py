"""Worker side: run a notebook cell shipped by ``%%fsq`` and send back what it assigned.

Imported by workers (the task's function is :func:`run_cell`, pickled by
reference), so it imports neither IPython nor matplotlib. The cell runs as
IPython runs it: every statement in a fresh ``__main__``-like namespace, a
trailing expression's value kept (unless the cell ends with ``;``), top-level
``await`` allowed.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import importlib
import inspect
import io
import os
import sys
import tokenize
import types
from dataclasses import dataclass, field
from typing import Any

from fs_task_queue.errors import SerializationError
from fs_task_queue.jupyter.capture import Capture
from fs_task_queue.serialize import dumps, loads, register_sources

__all__ = ["CellResult", "CellSpec", "run_cell"]

_BACKEND = "module://fs_task_queue.jupyter.mplbackend"
_NOTHING = object()
# Names the runner puts in the namespace: never brought back.
_RUNNER_NAMES = frozenset({"__builtins__", "__name__", "display"})


@dataclass(frozen=True)
class CellSpec:
    """A cell as shipped: its source and the notebook values it reads."""

    source: str
    #: The cell's file name in tracebacks, ``<fsq-cell In[12] 3f2a9c1e0b7d>``.
    filename: str
    #: Each variable pickled alone (so a failure names it).
    values: dict[str, bytes] = field(default_factory=dict)
    #: Variables holding modules: name -> module name, imported again on the worker.
    modules: dict[str, str] = field(default_factory=dict)
    #: The names the cell binds at top level: the candidates to bring back.
    assigns: tuple[str, ...] = ()
    #: ``--pull NAMES``: exactly these instead (also inputs the cell changed in place).
    pull: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CellResult:
    """What a cell run sends back."""

    values: dict[str, bytes] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    #: Assigned names whose value could not be pickled: name -> reason.
    unshipped: dict[str, str] = field(default_factory=dict)
    #: The last expression's value, pickled (None if it had none or it could not be pickled).
    last: bytes | None = None
    has_last: bool = False

    def __repr__(self) -> str:
        # What a job view or `job.result` shows of a cell task: the names, not pickled bytes.
        parts = [f"variables: {', '.join(sorted(self.values)) or '-'}"]
        if self.modules:
            parts.append(f"modules: {', '.join(sorted(self.modules))}")
        if self.unshipped:
            parts.append(f"not brought back: {', '.join(sorted(self.unshipped))}")
        if self.has_last:
            parts.append("and the last value" if self.last is not None else "(last value not picklable)")
        return f"<cell result, {'; '.join(parts)}; `%fsq pull` puts them in the notebook>"


def _quiet(source: str) -> bool:
    """Whether the cell ends with ``;`` (IPython then shows no value)."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT}
    last = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type not in skip:
                last = tok
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.type == tokenize.OP and last.string == ";"


def _run(code: types.CodeType, ns: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    value = eval(code, ns)
    return asyncio.run(value) if code.co_flags & inspect.CO_COROUTINE else value


def _pick_backend() -> str | None:
    # matplotlib reads MPLBACKEND when pyplot first loads; a task process that
    # loaded pyplot for an earlier cell is switched instead.
    saved = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = _BACKEND
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.switch_backend(_BACKEND)
    return saved


def run_cell(spec: CellSpec, /, **items: Any) -> CellResult:
    """Run ``spec`` with ``items`` (``--map`` values) in its namespace; its outputs go to ``outputs.json``."""
    __tracebackhide__ = True
    register_sources({spec.filename: spec.source.splitlines(True)})
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name, module in spec.modules.items():
        ns[name] = importlib.import_module(module)
    for name, data in spec.values.items():
        ns[name] = loads(data, f"the notebook variable {name!r}")
    ns.update(items)
    before = dict(ns)
    # IPython (~0.25 s to import) is loaded only for cells that use it.
    capture = Capture(ipython="IPython" in spec.source or "IPython" in sys.modules)
    ns["display"] = capture.display
    tree = ast.parse(spec.source, spec.filename)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    assert last is None or isinstance(last, ast.Expr)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    value: Any = _NOTHING
    saved_backend = _pick_backend()
    try:
        with capture:
            try:
                _run(compile(tree, spec.filename, "exec", flags=flags, dont_inherit=True), ns)
                if last is not None:
                    expr = ast.Expression(last.value)
                    value = _run(compile(expr, spec.filename, "eval", flags=flags, dont_inherit=True), ns)
                if "matplotlib.pyplot" in sys.modules:  # figures left open are shown, as inline does
                    from fs_task_queue.jupyter.mplbackend import flush_figures

                    flush_figures()
                if value is not _NOTHING and _quiet(spec.source):
                    value = _NOTHING  # `x;` shows nothing and gives no Out[n], as in IPython
                if value is not _NOTHING and value is not None:
                    capture.result(value)
            finally:
                capture.save()  # even on error: what it printed before failing is kept
    finally:
        if saved_backend is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = saved_backend
    return _result(spec, ns, before, value)


def _result(spec: CellSpec, ns: dict[str, Any], before: dict[str, Any], value: Any) -> CellResult:
    if spec.pull is not None:
        names = [n for n in spec.pull if n in ns]
    else:
        names = [
            n
            for n in sorted(spec.assigns)
            if n in ns and n not in _RUNNER_NAMES and ns[n] is not before.get(n, _NOTHING)
        ]
    values: dict[str, bytes] = {}
    modules: dict[str, str] = {}
    unshipped: dict[str, str] = {}
    for name in spec.pull or ():
        if name not in ns:
            unshipped[name] = "not defined when the cell ended (check --pull)"
    for name in names:
        obj = ns[name]
        if isinstance(obj, types.ModuleType):
            modules[name] = obj.__name__
            continue
        try:
            values[name] = dumps(obj, f"the variable {name!r}")
        except SerializationError as exc:
            unshipped[name] = str(exc)
    last: bytes | None = None
    has_last = value is not _NOTHING and value is not None
    if has_last:
        try:
            last = dumps(value, "the cell's value")
        except SerializationError:
            last = None  # its display (outputs.json) still shows it
    return CellResult(values, modules, unshipped, last, has_last)
