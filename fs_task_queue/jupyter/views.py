"""Live views of jobs, job groups and queues in a notebook (ipywidgets), and how they are shown.

Display comes in three layers, as in dask: ``repr`` text, the static HTML of
:mod:`fs_task_queue.reprs`, and here, in a kernel with ipywidgets, a widget
that updates itself. A live display is one bundle holding all three (the
widget for JupyterLab, the HTML for GitHub/nbviewer, the text for terminals),
shown with a ``display_id`` so that when the job ends the saved HTML is replaced
by the final one rather than staying "queued" forever in the file.

The functions the magics use (their contract):

- :func:`show` displays a Job, JobGroup or Queue live (static HTML outside a
  kernel with widgets) and returns the display handle;
- :func:`wait` blocks on the main thread until a job or group is done,
  updating the views from the main thread;
- :func:`finish` replaces a display with its final form;
- :func:`register_formatters` / :func:`unregister_formatters` make
  ``display(job)`` and a job as a cell's value show the live view.

Widgets are created here, on the main thread, only; the
:class:`~fs_task_queue.jupyter.poller.Poller` thread only sets their traits.
This is the only module importing ipywidgets (lazily: the core and the
workers never need it).
"""

from __future__ import annotations

import codecs
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from html import escape
from typing import TYPE_CHECKING, Any, cast

from fs_task_queue import layout, reprs
from fs_task_queue.errors import FSQError, WaitTimeoutError
from fs_task_queue.group import JobGroup
from fs_task_queue.job import Job
from fs_task_queue.jupyter.poller import Poller
from fs_task_queue.queue import Queue
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.progress import Progress
    from fs_task_queue.snapshot import JobState

__all__ = [
    "GroupView",
    "JobView",
    "QueueView",
    "finish",
    "live_possible",
    "register_formatters",
    "show",
    "unregister_formatters",
    "wait",
]

#: Output shown while a job runs: the last this many bytes of each stream.
TAIL_BYTES = 4096
#: Seconds between reads of a running job's output (each costs one read per stream).
TAIL_INTERVAL = 1.0
#: A dashboard refreshes this often while its queue has work ...
QUEUE_REFRESH = 5.0
#: ... for at most this long after it was shown or its Refresh button clicked.
QUEUE_REFRESH_FOR = 600.0
#: Failures listed by a group's view.
GROUP_FAILURES = 3

_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_TYPES = (Job, JobGroup, Queue)
_STATUS_STYLE = {
    JobStatus.QUEUED: "",
    JobStatus.STARTED: "info",
    JobStatus.FINISHED: "success",
    JobStatus.FAILED: "danger",
    JobStatus.CANCELED: "warning",
}
# Readable in light and dark themes: JupyterLab's variables, with fallbacks for other front ends.
_BOX_CSS = "1px solid var(--jp-border-color2, #e0e0e0)"
_BOX_STYLE = f"border: {_BOX_CSS}; border-radius: 4px; padding: 6px 10px; max-width: 760px"


def live_possible() -> bool:
    """Whether live widgets can be shown: inside a Jupyter kernel, with ipywidgets installed.

    As ipyparallel decides: a terminal IPython or a plain ``InteractiveShell``
    (tests) has no kernel to talk to a widget, so it gets the static HTML and
    no thread is started.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------- rendering
def _status_pill(status: JobStatus | str) -> str:
    """The coloured status, marked for scripts and tests (``.fsq-status[data-status=...]``)."""
    value = JobStatus(status).value
    color = reprs.STATUS_COLORS[JobStatus(status)]
    return (
        f'<span class="fsq-status" data-status="{value}" style="background: {color}; color: {reprs.BADGE_TEXT};'
        f' border-radius: 8px; padding: 1px 8px; font-weight: 600">{value}</span>'
    )


def _pre(text: str, *, error: bool = False) -> str:
    # Errors are marked by a red edge, not red text: red on the code background
    # is too faint in dark themes (checked on screenshots).
    edge = "var(--jp-error-color1, #d32f2f)" if error else "var(--jp-border-color1, #bdbdbd)"
    return (
        '<pre style="font-family: var(--jp-code-font-family, monospace); font-size: var(--jp-code-font-size, 12px);'
        " background: var(--jp-layout-color2, #f5f5f5); color: var(--jp-content-font-color1, #212121);"
        f" border-left: 3px solid {edge}; padding: 4px 6px; margin: 2px 0;"
        f' max-height: 16em; overflow: auto; white-space: pre-wrap; line-height: 1.3">{escape(text)}</pre>'
    )


def _label(text: str) -> str:
    return f'<span style="color: var(--jp-ui-font-color2, #616161)">{escape(text)}</span>'


def _job_bundle(widget: Any, html: str, text: str) -> dict[str, Any]:
    """A live bundle as dask's: the widget (for JupyterLab), static HTML and text (for everyone else)."""
    bundle = dict(widget._repr_mimebundle_()) if widget is not None else {}
    bundle["text/html"] = html
    bundle["text/plain"] = text
    return bundle


def _static_bundle(obj: Job | JobGroup | Queue) -> dict[str, Any]:
    return {"text/html": obj._repr_html_(), "text/plain": repr(obj)}


def _summary(job: Job) -> tuple[str, float | None]:
    """The function (or the cell's first line) and the submission time, from the task header (once)."""
    try:
        info = job.info()
    except (OSError, FSQError):
        return "?", None
    cell = (info.metadata or {}).get("fsq") if isinstance(info.metadata, dict) else None
    if isinstance(cell, dict) and cell.get("summary"):
        return f"cell: {cell['summary']}", info.enqueued_at
    # A function defined in the notebook is named by itself, not as __main__.f.
    return (info.function or "?").removeprefix("__main__."), info.enqueued_at


def _weak(method: Any) -> Any:
    """A click handler that does not keep its view alive (the widget registry holds the button)."""
    ref = weakref.WeakMethod(method)

    def handler(button: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(button)

    return handler


# ----------------------------------------------------------------- views
class _View:
    """What every view shares: its widgets, its display, its place in the poller."""

    queue: Queue
    wants_progress = False

    def __init__(self) -> None:
        self.display_id: str | None = None
        self.root: Any = None
        self._widgets: list[Any] = []
        self.closed = False

    def _widget(self, factory: Any, *args: Any, **kwargs: Any) -> Any:
        widget = factory(*args, **kwargs)
        self._widgets.append(widget)
        return widget

    def _frame(
        self, bar: Any, cancel: str, tooltip: str, on_cancel: Callable[[Any], None], below: list[Any], css_class: str
    ) -> None:
        """The box of a job or group view: header; progress bar, its label and Cancel; then ``below``."""
        import ipywidgets as w

        self.header = self._widget(w.HTML, value="")
        bar.layout = w.Layout(width="320px", height="14px", margin="2px 8px 2px 0")
        self._widgets.append(bar)
        self.bar = bar
        self.bar_label = self._widget(w.HTML, value="")
        self.cancel_button = self._widget(
            w.Button,
            description=cancel,
            icon="stop",
            tooltip=tooltip,
            layout=w.Layout(width="auto", margin="0 0 0 auto"),
        )
        self.cancel_button.on_click(_weak(on_cancel))
        row = self._widget(
            w.HBox, [self.bar, self.bar_label, self.cancel_button], layout=w.Layout(align_items="center")
        )
        self.root = self._widget(
            w.VBox, [self.header, row, *below], layout=w.Layout(border=_BOX_CSS, padding="4px 10px", max_width="760px")
        )
        self.root.add_class(css_class)

    def _keep_alive(self) -> None:
        # ipywidgets keeps an open widget alive; the root widget keeps its view alive,
        # so the poller (which holds views weakly) serves it until it is closed.
        self.root._fsq_view = self

    @property
    def pending(self) -> bool:
        return not self.closed and bool(self.pending_ids())

    def pending_ids(self) -> Collection[str]:
        return ()

    def apply(self, states: Mapping[str, JobState], now: float) -> bool:
        return False

    def html(self) -> str:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def bundle(self) -> dict[str, Any]:
        return _job_bundle(self.root, self.html(), self.text())

    def _update_display(self) -> None:
        """Replace the saved HTML of this view's display with the current one (job ended)."""
        if self.display_id is None:
            return
        from IPython import display as ipd

        cast(Any, ipd).update_display(self.bundle(), raw=True, display_id=self.display_id)

    def close(self) -> None:
        """Close the widgets and stop polling for this view."""
        self.closed = True
        if self.root is not None:
            vars(self.root).pop("_fsq_view", None)
        for widget in self._widgets:
            widget.close()
        self._widgets.clear()
        Poller.instance().unregister(self)


class JobView(_View):
    """One job: status, function, elapsed time, worker and host, attempt, progress, output, outcome, Cancel."""

    wants_progress = True

    def __init__(self, job: Job) -> None:
        import ipywidgets as w

        super().__init__()
        self.job = job
        self.queue = job.queue
        self.summary, self.enqueued_at = _summary(job)
        self.state: JobState | None = None
        self.progress: Progress | None = None
        self._tail: dict[str, tuple[int, Any, str]] = {}
        self._tail_due = 0.0
        self._final_html: str | None = None
        self.output = self._widget(w.HTML, value="", layout=w.Layout(display="none"))
        self.outcome = self._widget(w.HTML, value="", layout=w.Layout(display="none"))
        self._frame(
            w.FloatProgress(value=0.0, min=0.0, max=1.0),
            "Cancel",
            "Cancel this job (a running task is stopped by its worker)",
            self._on_cancel,
            [self.output, self.outcome],
            "fsq-job",
        )
        self._keep_alive()
        self.apply(job.queue.snapshot([job]), time.time())

    # -- poller side
    def pending_ids(self) -> Collection[str]:
        if self.closed or (self.state is not None and self.state.status.is_done):
            return ()
        return (self.job.id,)

    def apply(self, states: Mapping[str, JobState], now: float) -> bool:
        state = states.get(self.job.id)
        if state is None:
            return False
        previous = self.state
        self.state = state
        changed = state != previous
        ended = state.status.is_done and (previous is None or not previous.status.is_done)
        if state.progress is not None:
            self.progress = state.progress
        elif ended and self.progress is not None:
            # The task's last report (snapshots read progress of running jobs only): one read, once.
            self.progress = self.job.progress or self.progress
        with self.root.hold_sync():
            changed |= self._set(self.header, "value", self._header_html(now))
            changed |= self._show_progress()
            if state.status is JobStatus.STARTED and now >= self._tail_due:
                self._tail_due = now + TAIL_INTERVAL
                changed |= self._read_tails()
            if ended:
                self._finish_widgets()
                changed = True
        if ended and previous is not None:
            self._update_display()  # the saved HTML too, not only the widget
        return changed

    @staticmethod
    def _set(widget: Any, name: str, value: Any) -> bool:
        # A comm message only when the value changes.
        if getattr(widget, name) == value:
            return False
        setattr(widget, name, value)
        return True

    def _header_html(self, now: float) -> str:
        state = self.state
        assert state is not None
        parts = [f"{_status_pill(state.status)} <b>Job</b> <code>{escape(self.job.id)}</code>"]
        parts.append(f"<code>{escape(self.summary)}</code>")
        if state.started_at:
            end = state.ended_at if state.status.is_done and state.ended_at else now
            verb = "ran" if state.status.is_done else "running"
            # Whole seconds while running: one message a second per widget, not one a tick.
            seconds = end - state.started_at
            parts.append(_label(f"{verb} {reprs.duration(seconds if state.status.is_done else float(int(seconds)))}"))
        elif state.status is JobStatus.QUEUED:
            parts.append(_label("waiting for a worker"))
        if state.worker:
            parts.append(_label(f"on {state.worker}" + (f" @ {state.host}" if state.host else "")))
        if state.attempt and state.attempt > 1:
            parts.append(_label(f"attempt {state.attempt}"))
        return (
            '<div style="display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: center;'
            ' color: var(--jp-ui-font-color1, #212121); font-size: var(--jp-ui-font-size1, 13px)">'
            + "".join(f"<span>{p}</span>" for p in parts)
            + "</div>"
        )

    def _show_progress(self) -> bool:
        state = self.state
        assert state is not None
        report = self.progress
        changed = self._set(self.bar, "bar_style", _STATUS_STYLE[state.status])
        if report is not None and report.total:
            changed |= self._set(self.bar, "max", float(report.total))
            value = float(report.done)
        else:
            value = 0.0
        if state.status is JobStatus.FINISHED:
            value = self.bar.max  # done is 100 %, whatever the last report said
        changed |= self._set(self.bar, "value", min(value, self.bar.max))
        # An empty bar under a job that failed or was canceled before reporting says nothing.
        empty_end = report is None and state.status in (JobStatus.FAILED, JobStatus.CANCELED)
        changed |= self._set(self.bar.layout, "display", "none" if empty_end else "")
        label = reprs.progress_label(report) if report is not None else ""
        if state.status is JobStatus.FINISHED and not label:
            label = "done"
        changed |= self._set(self.bar_label, "value", _label(label))
        return changed

    def _read_tails(self) -> bool:
        """Read what the task wrote since the last look: one read per stream, from its offset."""
        texts = []
        for stream in ("stdout", "stderr"):
            offset, decoder, text = self._tail.get(stream, (-1, None, ""))
            if offset < 0:
                decoder = codecs.getincrementaldecoder("utf-8")("replace")
                offset = self._start_offset(stream)
            data = self.job.read_output(stream, offset)
            if data:
                text = (text + decoder.decode(data))[-TAIL_BYTES:]
            self._tail[stream] = (offset + len(data), decoder, text)
            if text:
                texts.append(_pre(text, error=stream == "stderr"))
        return self._show(self.output, "".join(texts))

    def _start_offset(self, stream: str) -> int:
        """Where to start following a stream: near its end if the job has written a lot already."""
        try:
            size = self.queue.storage.stat(layout.job_file(self.job.id, stream)).size
        except OSError:
            return 0
        return max(0, size - TAIL_BYTES)

    def _show(self, widget: Any, html: str) -> bool:
        changed = self._set(widget, "value", html)
        changed |= self._set(widget.layout, "display", "" if html else "none")
        return changed

    def _finish_widgets(self) -> None:
        """The job ended: result or traceback, the whole output tail, no Cancel button (read once)."""
        state = self.state
        assert state is not None
        self.cancel_button.layout.display = "none"
        outcome = ""
        try:
            error = self.job.exception()
            if error is None and state.status is JobStatus.FINISHED:
                outcome = f"<div><b>result</b>{_pre(reprs.preview(self.job.result))}</div>"
            elif error is not None:
                remote = getattr(error, "remote_traceback", None) or f"{type(error).__name__}: {error}"
                outcome = f"<div><b>error</b>{_pre(remote, error=True)}</div>"
        except (OSError, FSQError) as exc:
            outcome = f"<div><b>result</b>{_pre(f'cannot be read here: {exc}', error=True)}</div>"
        self._show(self.outcome, outcome)
        tails = []
        for stream in ("stdout", "stderr"):
            text = reprs.tail(self.job.stdout if stream == "stdout" else self.job.stderr)
            if text:
                tails.append(f"<details><summary>{stream}</summary>{_pre(text, error=stream == 'stderr')}</details>")
        self._show(self.output, "".join(tails))

    def _on_cancel(self, _button: Any) -> None:
        # A comm message, handled on the shell thread.
        with Poller.instance().lock:
            self.cancel_button.disabled = True
            self.cancel_button.description = "Canceling"
        self.job.cancel()
        Poller.instance().wake()

    # -- display side
    def html(self) -> str:
        if self.state is not None and self.state.status.is_done:
            if self._final_html is None:
                self._final_html = reprs.job_html(self.job)  # read once, when the job has ended
            return self._final_html
        body = [self.header.value]
        if self.bar_label.value or self.bar.value:
            fraction = self.bar.value / self.bar.max if self.bar.max else None
            body.append(reprs.progress_bar(fraction, reprs.progress_label(self.progress)))
        return f'<div style="{_BOX_STYLE}">{"".join(body)}</div>'

    def text(self) -> str:
        status = self.state.status.value if self.state is not None else "unknown"
        return f"<Job {self.job.id} {status}>"


class GroupView(_View):
    """Many jobs: counts per state, a done / total bar, throughput, ETA, the first failures, Cancel all."""

    def __init__(self, group: JobGroup) -> None:
        import ipywidgets as w

        super().__init__()
        if not group:
            raise ValueError("an empty JobGroup has nothing to show live: display it statically")
        self.group = group
        self.queue = group[0].queue
        self.states: dict[str, JobState] = {}
        self._final_html: str | None = None
        self.failures = self._widget(w.HTML, value="", layout=w.Layout(display="none"))
        self._frame(
            w.IntProgress(value=0, min=0, max=len(group)),
            "Cancel all",
            "Cancel every job of the group that is not done",
            self._on_cancel,
            [self.failures],
            "fsq-group",
        )
        self._keep_alive()
        self.apply(self.queue.snapshot(group, progress=False), time.time())

    def pending_ids(self) -> Collection[str]:
        if self.closed:
            return ()
        return [j.id for j in self.group if j.id not in self.states or not self.states[j.id].status.is_done]

    def counts(self) -> dict[JobStatus, int]:
        counts = dict.fromkeys(reprs.STATUS_COLORS, 0)
        for state in self.states.values():
            counts[state.status] += 1
        return counts

    def apply(self, states: Mapping[str, JobState], now: float) -> bool:
        was_done = bool(self.states) and not self.pending_ids()
        fresh = {j: s for j, s in states.items() if j in self._ids()}
        if not fresh:
            return False
        self.states.update(fresh)
        counts = self.counts()
        done = sum(n for s, n in counts.items() if s.is_done)
        total = len(self.group)
        elapsed = max(now - self.group.created_at, 1e-9)
        rate = done / elapsed
        parts = [f"<b>Job group</b> {_label(f'{total} jobs')}"]
        parts += [f"{_status_pill(s)} {n}" for s, n in counts.items() if n]
        if done:
            parts.append(_label(f"{rate:.2f} jobs/s"))
        if rate and done < total:
            parts.append(_label(f"ETA {reprs.duration((total - done) / rate)}"))
        header = (
            '<div style="display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: center;'
            ' color: var(--jp-ui-font-color1, #212121)">' + "".join(f"<span>{p}</span>" for p in parts) + "</div>"
        )
        failed = [s for j in self.group if (s := self.states.get(j.id)) and s.status is JobStatus.FAILED]
        failures = "".join(_pre(f"{s.id}: {s.error or 'failed'}", error=True) for s in failed[:GROUP_FAILURES])
        if len(failed) > GROUP_FAILURES:
            failures += _label(f"and {len(failed) - GROUP_FAILURES} more failures")
        style = "danger" if counts[JobStatus.FAILED] else ("success" if done == total else "info")
        with self.root.hold_sync():
            changed = JobView._set(self.header, "value", header)
            changed |= JobView._set(self.bar, "value", done)
            changed |= JobView._set(self.bar, "bar_style", style)
            changed |= JobView._set(self.bar_label, "value", _label(f"{done} / {total} done"))
            changed |= JobView._set(self.failures, "value", failures)
            changed |= JobView._set(self.failures.layout, "display", "" if failures else "none")
            if done == total:
                changed |= JobView._set(self.cancel_button.layout, "display", "none")
        if done == total and not was_done and self.display_id is not None:
            self._update_display()
        return changed

    def _ids(self) -> set[str]:
        ids: set[str] | None = getattr(self, "_id_set", None)
        if ids is None:
            ids = self._id_set = {j.id for j in self.group}
        return ids

    def _on_cancel(self, _button: Any) -> None:
        with Poller.instance().lock:
            self.cancel_button.disabled = True
            self.cancel_button.description = "Canceling"
        self.group.cancel()
        Poller.instance().wake()

    def html(self) -> str:
        if not self.pending_ids():
            if self._final_html is None:
                self._final_html = reprs.group_html(self.group)
            return self._final_html
        counts = self.counts()
        done = sum(n for s, n in counts.items() if s.is_done)
        badges = " ".join(f"{_status_pill(s)} {n}" for s, n in counts.items() if n)
        return (
            f'<div style="{_BOX_STYLE}">'
            f"<b>Job group</b> {len(self.group)} jobs {badges}"
            f"{reprs.progress_bar(done / len(self.group), f'{done} / {len(self.group)} done')}</div>"
        )

    def text(self) -> str:
        counts = ", ".join(f"{n} {s.value}" for s, n in self.counts().items() if n)
        return f"<JobGroup of {len(self.group)} jobs: {counts}>"


class QueueView(_View):
    """A queue's dashboard (counts, workers with heartbeat age, recent jobs), refreshing while it has work."""

    def __init__(self, queue: Queue) -> None:
        import ipywidgets as w

        super().__init__()
        self.queue = queue
        self.board = self._widget(w.HTML, value="")
        self.refresh_button = self._widget(
            w.Button, description="Refresh", icon="refresh", layout=w.Layout(width="auto")
        )
        self.refresh_button.on_click(_weak(self._on_refresh))
        self.root = self._widget(w.VBox, [self.board, self.refresh_button], layout=w.Layout(align_items="flex-start"))
        self.root.add_class("fsq-queue")
        self._keep_alive()
        self._busy = False
        self._due = 0.0
        self._until = 0.0
        self.refresh(time.time())

    @property
    def pending(self) -> bool:
        # Not a job to wait for: it refreshes while the queue has work, for a while.
        return not self.closed and self._busy and time.time() < self._until

    def apply(self, states: Mapping[str, JobState], now: float) -> bool:
        if now < self._due:
            return False
        return self.refresh(now)

    def refresh(self, now: float) -> bool:
        """Read the dashboard again (a listing of each folder and the workers' heartbeats)."""
        self._due = now + QUEUE_REFRESH
        if not self._until:
            self._until = now + QUEUE_REFRESH_FOR
        try:
            stats = self.queue.stats()
            self._busy = bool(stats.get("queued", 0) or stats.get("started", 0))
        except (OSError, FSQError):
            self._busy = False
        html = reprs.queue_html(self.queue)
        return JobView._set(self.board, "value", html)

    def _on_refresh(self, _button: Any) -> None:
        poller = Poller.instance()
        with poller.lock:
            now = time.time()
            self._until = now + QUEUE_REFRESH_FOR
            self.refresh(now)
        poller.register(self)

    def html(self) -> str:
        return str(self.board.value)

    def text(self) -> str:
        return repr(self.queue)


# ----------------------------------------------------------------- contract
_by_display: weakref.WeakValueDictionary[str, _View] = weakref.WeakValueDictionary()


def live_view(obj: Job | JobGroup | Queue) -> JobView | GroupView | QueueView:
    """A new live view of ``obj`` (main thread only: it opens widget comms), not displayed yet."""
    if isinstance(obj, Job):
        return JobView(obj)
    if isinstance(obj, JobGroup):
        return GroupView(obj)
    if isinstance(obj, Queue):
        return QueueView(obj)
    raise TypeError(f"no live view for {type(obj).__name__}: pass a Job, a JobGroup or a Queue")


def show(obj: Job | JobGroup | Queue) -> Any:
    """Display ``obj`` live (a widget in a kernel with ipywidgets, else static HTML); the display handle.

    None outside IPython (the object's ``repr`` is printed instead).
    """
    if not isinstance(obj, _TYPES):
        raise TypeError(f"cannot show {type(obj).__name__}: pass a Job, a JobGroup or a Queue")
    try:
        from IPython import display as ipd
    except ImportError:
        print(repr(obj))
        return None
    display = cast(Any, ipd).display
    if not live_possible() or (isinstance(obj, JobGroup) and not obj):
        return display(_static_bundle(obj), raw=True, display_id=True)
    view = live_view(obj)
    handle = display(view.bundle(), raw=True, display_id=True)
    view.display_id = handle.display_id
    _by_display[handle.display_id] = view
    # Always known to the poller (a dashboard of an idle queue is refreshed when a wait ends);
    # the thread runs only while some view is pending.
    Poller.instance().register(view, start=view.pending)
    return handle


def finish(handle: Any, obj: Job | JobGroup | Queue) -> None:
    """Replace the display ``handle`` (from :func:`show`) with ``obj``'s final form."""
    if handle is None:
        return
    view = _by_display.get(handle.display_id)
    if view is None:
        handle.update(_static_bundle(obj), raw=True)
        return
    with Poller.instance().lock:
        if isinstance(view, JobView | GroupView) and view.pending:
            ids = view.pending_ids()
            view.apply(view.queue.snapshot(ids, progress=view.wants_progress), time.time())
        handle.update(view.bundle(), raw=True)


class _Tracker:
    """The jobs a :func:`wait` waits on, ticked with the views (no widget)."""

    wants_progress = False

    def __init__(self, queue: Queue, ids: Collection[str]) -> None:
        self.queue = queue
        self.left = set(ids)

    @property
    def pending(self) -> bool:
        return bool(self.left)

    def pending_ids(self) -> Collection[str]:
        return self.left

    def apply(self, states: Mapping[str, JobState], now: float) -> bool:
        self.left -= {j for j, s in states.items() if j in self.left and s.status.is_done}
        return False


def wait(obj: Job | JobGroup, timeout: float | None = None) -> None:
    """Block until the job (or every job of the group) is done, updating live views from this thread.

    For the main thread of a kernel: widget updates sent from here are
    recorded with the running cell (those of a background thread are only while
    some cell runs). KeyboardInterrupt goes through (the jobs go on); raises
    :class:`~fs_task_queue.errors.WaitTimeoutError` after ``timeout`` seconds.
    """
    if isinstance(obj, Job):
        jobs: list[Job] = [obj]
    elif isinstance(obj, JobGroup):
        jobs = list(obj)
    else:
        raise TypeError(f"cannot wait for {type(obj).__name__}: pass a Job or a JobGroup")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    if not jobs:
        return
    queue = jobs[0].queue
    tracker = _Tracker(queue, [j.id for j in jobs])
    poller = Poller.instance()
    poller.register(tracker, start=False)
    poller._driving += 1
    watcher = poller.watcher_for([queue])
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = Poller.MIN_INTERVAL
    try:
        while True:
            if poller.tick(force=True):
                interval = Poller.MIN_INTERVAL
            if not tracker.pending:
                # Dashboards of this queue show the end too (they refresh only every few seconds).
                for view in poller.views():
                    if isinstance(view, QueueView) and view.queue == queue and not view.closed:
                        with poller.lock:
                            view.refresh(time.time())
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeoutError(_still_pending(jobs, tracker, timeout))
            moving = any(v.pending and v.wants_progress for v in poller.views() if v.queue == queue)
            # A claim or an end wakes the watcher at once; progress needs ticks.
            pause = Poller.MIN_INTERVAL if moving else interval
            watcher.wait(pause if left is None else min(pause, left))
            interval = min(interval * Poller.BACKOFF, 1.0)
    finally:
        watcher.close()
        poller._driving -= 1
        poller.unregister(tracker)


def _still_pending(jobs: list[Job], tracker: _Tracker, timeout: float | None) -> str:
    left = len(tracker.left)
    what = f"job {jobs[0].id} is not done" if len(jobs) == 1 else f"{left} of {len(jobs)} jobs are not done"
    message = f"{what} after {timeout} s; it goes on: wait again, or cancel with .cancel()"
    queue = jobs[0].queue
    try:
        if not queue.workers():
            message += (
                f". No worker is registered on {queue.path}: start one with `fs-task-queue-worker --path {queue.path}`"
            )
    except (OSError, FSQError):
        pass
    return message


def _display_live(obj: Any) -> None:
    show(obj)


def register_formatters(ip: Any) -> None:
    """Make ``display(job)`` and a Job, JobGroup or Queue as a cell's value show :func:`show`'s live view.

    Registered with IPython's ``ipython_display_formatter``, which lets the
    view display itself with a ``display_id`` (so its saved HTML is replaced
    when the job ends); a type-registered printer wins over the objects' own
    ``_repr_html_``, which is what shows without the extension.
    """
    formatter = ip.display_formatter.ipython_display_formatter
    for cls in _TYPES:
        formatter.for_type(cls, _display_live)


def unregister_formatters(ip: Any) -> None:
    """Undo :func:`register_formatters` (``%unload_ext``): objects show their static HTML again."""
    formatter = ip.display_formatter.ipython_display_formatter
    for cls in _TYPES:
        formatter.pop(cls, None)
