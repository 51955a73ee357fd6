"""Client side: pack what a ``%%fsq`` cell reads from the notebook into a :class:`CellSpec`.

Each value is pickled alone (cloudpickle: notebook functions and classes go
by value, with their source for tracebacks), so a failure names its variable;
modules are sent by name and imported again on the worker, never pickled.
Every failure is reported at once, before anything is submitted.
"""

from __future__ import annotations

import hashlib
import types
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from fs_task_queue.errors import SerializationError, ShipError
from fs_task_queue.jupyter.cellrun import CellSpec
from fs_task_queue.jupyter.names import analyse
from fs_task_queue.serialize import dumps

__all__ = ["LARGE_NAMESPACE", "LargeNamespaceWarning", "cell_filename", "pack_namespace"]

#: A shipped namespace bigger than this (bytes, pickled) warns, naming the biggest variables.
LARGE_NAMESPACE = 100 * 2**20


class LargeNamespaceWarning(UserWarning):
    """The values a cell ships are big: every task file carries them; a shared path would not."""


def cell_filename(source: str, execution_count: int | None) -> str:
    """The file name a cell's code gets on the worker (shown in tracebacks)."""
    digest = hashlib.sha1(source.encode("utf-8", "replace")).hexdigest()[:12]
    return f"<fsq-cell In[{execution_count if execution_count is not None else ' '}] {digest}>"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n} B"


def _reason(exc: SerializationError) -> str:
    cause = exc.__cause__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)


def pack_namespace(
    source: str,
    user_ns: Mapping[str, Any],
    *,
    filename: str,
    hidden: Iterable[str] = (),
    push: Iterable[str] = (),
    pull: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> CellSpec:
    """The :class:`CellSpec` of ``source``: what it reads from ``user_ns`` (plus ``push``), pickled.

    ``exclude`` names come from elsewhere (``--map`` items). Raises ShipError
    naming every variable that cannot be pickled, SyntaxError for bad source.
    """
    names = analyse(source, filename)
    push = tuple(push)
    missing = [n for n in push if n not in user_ns]
    if missing:
        raise NameError(f"--push names variables that do not exist in the notebook: {', '.join(missing)}")
    wanted = ((names.reads & user_ns.keys()) - set(hidden) - set(exclude)) | set(push)
    values: dict[str, bytes] = {}
    modules: dict[str, str] = {}
    failures: dict[str, str] = {}
    for name in sorted(wanted):
        value = user_ns[name]
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
            continue
        try:
            values[name] = dumps(value, f"the variable {name!r}")
        except SerializationError as exc:
            failures[name] = f"{type(value).__module__}.{type(value).__qualname__}: {_reason(exc)}"
    if failures:
        listed = "; ".join(f"`{n}` ({why})" for n, why in failures.items())
        raise ShipError(
            f"cannot ship to the worker: {listed}. Nothing was submitted. Open or create"
            f" {'it' if len(failures) == 1 else 'them'} inside the cell (from a path or settings that do pickle)"
        )
    total = sum(map(len, values.values()))
    if total > LARGE_NAMESPACE:
        biggest = sorted(values.items(), key=lambda kv: -len(kv[1]))[:3]
        warnings.warn(
            LargeNamespaceWarning(
                f"this cell ships {_size(total)} of notebook variables ("
                + ", ".join(f"`{n}` {_size(len(b))}" for n, b in biggest)
                + "): every task file carries them. Save them under the queue's filesystem (e.g."
                " df.to_parquet('/shared/data.parquet')) and read them in the cell instead"
            ),
            stacklevel=2,
        )
    return CellSpec(
        source=source,
        filename=filename,
        values=values,
        modules=modules,
        assigns=tuple(sorted(names.assigns)),
        pull=tuple(pull) if pull is not None else None,
    )
