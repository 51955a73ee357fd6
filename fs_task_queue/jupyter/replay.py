"""Client side: bring a finished cell's variables and outputs into the notebook.

Outputs come from the job's ``outputs.json`` (written by the worker before the
outcome), so any kernel can replay them later, after a restart too. Values are
unpickled one by one: a value that cannot be rebuilt here (a module missing in
this kernel) is named, and the others still arrive.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fs_task_queue.errors import FSQError, SerializationError
from fs_task_queue.group import JobGroup
from fs_task_queue.job import Job
from fs_task_queue.jupyter.capture import OUTPUTS_FILE
from fs_task_queue.jupyter.cellrun import CellResult
from fs_task_queue.serialize import loads

__all__ = ["NOTHING", "Pulled", "outputs", "pull", "replay_outputs"]

#: ``Pulled.last`` when the cell had no value to show.
NOTHING: Any = type("NoValue", (), {"__repr__": lambda self: "<no value>"})()


@dataclass
class Pulled:
    """What :func:`pull` put into the namespace."""

    names: list[str] = field(default_factory=list)
    #: Names not brought back: name -> reason.
    missing: dict[str, str] = field(default_factory=dict)
    last: Any = NOTHING
    #: The last value's display, when the value itself could not be brought back.
    last_bundle: dict[str, Any] | None = None


def outputs(job: Job) -> list[dict[str, Any]]:
    """The nbformat outputs a cell job stored (empty if it stored none)."""
    data = job.read_file(OUTPUTS_FILE)
    if data is None:
        return []
    try:
        record = json.loads(data)
        found = record["outputs"]
        return found if isinstance(found, list) else []
    except (ValueError, KeyError, TypeError):
        return []


def replay_outputs(job: Job, *, skip_result: bool = True) -> dict[str, Any] | None:
    """Show a cell job's outputs here, in order; return its execute_result bundle (not shown if ``skip_result``)."""
    from IPython.display import display, publish_display_data

    result = None
    for out in outputs(job):
        kind = out.get("output_type")
        if kind == "stream":
            (sys.stderr if out.get("name") == "stderr" else sys.stdout).write(out.get("text", ""))
        elif kind == "display_data":
            publish_display_data(out.get("data", {}), out.get("metadata") or {})
        elif kind == "execute_result":
            result = out.get("data")
            if not skip_result:
                display(result, raw=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    return result


def _cell_result(job: Job) -> CellResult:
    value = job.result
    if not isinstance(value, CellResult):
        raise FSQError(f"job {job.id} is not a %%fsq cell (its result is a {type(value).__name__}): use job.result")
    return value


def _load_values(result: CellResult, names: Sequence[str] | None) -> tuple[dict[str, Any], dict[str, str]]:
    got: dict[str, Any] = {}
    missing = dict(result.unshipped)
    for name, module in result.modules.items():
        if names is None or name in names:
            try:
                got[name] = importlib.import_module(module)
            except ImportError as exc:
                missing[name] = f"module {module!r} does not import in this kernel: {exc}"
    for name, data in result.values.items():
        if names is None or name in names:
            try:
                got[name] = loads(data, f"the variable {name!r}")
            except SerializationError as exc:
                missing[name] = str(exc.__cause__ or exc)
    return got, missing


def _last(result: CellResult, job: Job, pulled: Pulled) -> None:
    if not result.has_last:
        return
    if result.last is not None:
        try:
            pulled.last = loads(result.last, "the cell's value")
            return
        except SerializationError:
            pass
    pulled.last_bundle = next((o.get("data") for o in outputs(job) if o.get("output_type") == "execute_result"), None)


def pull(
    obj: Job | JobGroup,
    ns: MutableMapping[str, Any],
    *,
    names: Sequence[str] | None = None,
    partial: bool = False,
    show: bool = True,
) -> Pulled:
    """Put the variables a finished cell job (or ``--map`` group) assigned into ``ns``.

    A failed job raises its error (a RemoteError showing the worker's
    traceback) after its outputs are replayed. For a group, each variable
    becomes a list in item order; if an item failed nothing is assigned and
    the first error is raised, unless ``partial`` puts the errors in the lists.
    """
    if isinstance(obj, Job):
        if show:
            replay_outputs(obj)
        error = obj.exception(0)
        if error is not None:
            raise error
        if not obj.done():
            raise FSQError(f"job {obj.id} is not done yet: `%fsq wait` it, or pull it later")
        result = _cell_result(obj)
        got, missing = _load_values(result, names)
        ns.update(got)
        pulled = Pulled(sorted(got), missing)
        _last(result, obj, pulled)
        _report(pulled)
        return pulled
    return _pull_group(obj, ns, names=names, partial=partial, show=show)


def _pull_group(
    group: JobGroup, ns: MutableMapping[str, Any], *, names: Sequence[str] | None, partial: bool, show: bool
) -> Pulled:
    not_done = [job.id for job in group if not job.done()]
    if not_done:
        raise FSQError(f"{len(not_done)} of {len(group)} items are not done yet: `%fsq wait` the group first")
    if show:
        for job in group:
            replay_outputs(job)
    errors = [job.exception(0) for job in group]
    failed = [e for e in errors if e is not None]
    if failed and not partial:
        print(
            f"fsq: {len(failed)} of {len(group)} items failed; nothing assigned. `%fsq pull ... --partial`"
            " assigns the lists with each failure's exception in its place",
            file=sys.stderr,
        )
        raise failed[0]
    per_item: list[dict[str, Any] | BaseException] = []
    missing: dict[str, str] = {}
    lasts: list[Any] = []
    for job, error in zip(group, errors, strict=True):
        if error is not None:
            per_item.append(error)
            lasts.append(error)
            continue
        result = _cell_result(job)
        got, miss = _load_values(result, names)
        missing.update(miss)
        per_item.append(got)
        one = Pulled()
        _last(result, job, one)
        lasts.append(None if one.last is NOTHING else one.last)
    assigned = sorted({n for item in per_item if isinstance(item, dict) for n in item})
    for name in assigned:
        ns[name] = [item if isinstance(item, BaseException) else item.get(name) for item in per_item]
    pulled = Pulled(assigned, missing)
    if any(x is not None for x in lasts):
        pulled.last = lasts
    _report(pulled)
    return pulled


def _report(pulled: Pulled) -> None:
    for name, why in pulled.missing.items():
        print(f"fsq: `{name}` not brought back: {why}", file=sys.stderr)
