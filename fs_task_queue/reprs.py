"""Static HTML views of jobs, job groups and queues (``_repr_html_``).

These are the middle of three display layers (as in dask): plain ``repr``
text, this static HTML, and live widgets (``fs_task_queue.jupyter``) in a
kernel with ipywidgets. The HTML is what a saved notebook shows on GitHub or
nbviewer, so it is self-contained (inline styles, no script) and themed with
JupyterLab's CSS variables, with fallbacks, so dark themes work.
"""

from __future__ import annotations

import time
from html import escape
from typing import TYPE_CHECKING, Any

from fs_task_queue.errors import FSQError
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    from fs_task_queue.group import JobGroup
    from fs_task_queue.job import Job
    from fs_task_queue.progress import Progress, WorkerInfo
    from fs_task_queue.queue import Queue
    from fs_task_queue.slurm import SlurmJobStatus

__all__ = ["STATUS_COLORS", "group_html", "job_html", "queue_html"]

#: Colour of each state: a JupyterLab variable and a fallback for plain HTML viewers.
STATUS_COLORS = {
    JobStatus.QUEUED: "var(--jp-layout-color4, #757575)",
    JobStatus.STARTED: "var(--jp-brand-color1, #1976d2)",
    JobStatus.FINISHED: "var(--jp-success-color1, #388e3c)",
    JobStatus.FAILED: "var(--jp-error-color1, #d32f2f)",
    JobStatus.CANCELED: "var(--jp-warn-color1, #f57c00)",
}
#: Text on a status pill: the page's background colour, so it contrasts with the pill in light
#: themes (white on dark colours) and dark ones (whose status colours are light).
BADGE_TEXT = "var(--jp-layout-color0, white)"
_BOX = (
    "font-family: var(--jp-ui-font-family, sans-serif); font-size: var(--jp-ui-font-size1, 13px);"
    " color: var(--jp-ui-font-color1, #212121); background: var(--jp-layout-color1, transparent);"
    " border: 1px solid var(--jp-border-color2, #e0e0e0); border-radius: 4px; padding: 6px 10px; max-width: 760px"
)
_PRE = (
    "font-family: var(--jp-code-font-family, monospace); font-size: var(--jp-code-font-size, 12px);"
    " background: var(--jp-layout-color2, #f5f5f5); color: var(--jp-content-font-color1, #212121);"
    " padding: 4px 6px; margin: 4px 0; max-height: 16em; overflow: auto; white-space: pre-wrap"
)
_CELL = "padding: 1px 12px 1px 0; text-align: left; vertical-align: top"
#: A heartbeat older than this (seconds) is shown as stale: three default intervals.
STALE_AFTER = 90.0
#: Lines of output and characters of a result shown in the static view.
TAIL_LINES = 20
PREVIEW_CHARS = 600


def status_badge(status: JobStatus | str) -> str:
    """A coloured pill naming ``status``."""
    color = STATUS_COLORS.get(JobStatus(status), "gray")
    return (
        f'<span style="background: {color}; color: {BADGE_TEXT}; border-radius: 8px; padding: 1px 8px;'
        f' font-weight: 600">{escape(str(status))}</span>'
    )


def progress_bar(fraction: float | None, label: str = "") -> str:
    """A bar filled to ``fraction`` (0-1), with a label."""
    width = 0.0 if fraction is None else max(0.0, min(1.0, fraction)) * 100
    return (
        '<div style="display: flex; align-items: center; gap: 8px; margin: 4px 0">'
        '<div style="flex: 1; max-width: 360px; height: 10px; background: var(--jp-layout-color3, #e0e0e0);'
        ' border-radius: 5px; overflow: hidden">'
        f'<div style="width: {width:.1f}%; height: 100%; background: var(--jp-brand-color1, #1976d2)"></div></div>'
        f"<span>{escape(label)}</span></div>"
    )


def progress_label(report: Progress | None) -> str:
    """``"3 / 4 (75 %) message"`` for a progress report."""
    if report is None:
        return ""
    done = f"{report.done:g}" + (f" / {report.total:g}" if report.total else "")
    pct = f" ({report.fraction * 100:.0f} %)" if report.fraction is not None else ""
    return done + pct + (f" {report.message}" if report.message else "")


def duration(seconds: float | None) -> str:
    """``"1.2 s"``, ``"3 min 4 s"``, ``"2 h 5 min"``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``, saying how many were left out."""
    parts = text.splitlines()
    if len(parts) <= lines:
        return text
    return f"... ({len(parts) - lines} earlier lines)\n" + "\n".join(parts[-lines:])


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not break the view
        text = f"<unprintable {type(value).__name__}: {exc}>"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _rows(rows: list[tuple[str, str]]) -> str:
    cells = "".join(
        f'<tr><th style="{_CELL}; font-weight: 600">{escape(k)}</th><td style="{_CELL}">{v}</td></tr>' for k, v in rows
    )
    return f'<table style="border-collapse: collapse; margin: 4px 0">{cells}</table>'


def _pre(text: str) -> str:
    return f'<pre style="{_PRE}">{escape(text)}</pre>'


def job_html(job: Job) -> str:
    """A job's card: status, function, times, worker, progress, output tail, result or traceback."""
    try:
        info = job.info()
    except (OSError, FSQError) as exc:
        return f'<div style="{_BOX}">Job {escape(job.id)}: cannot be read ({escape(str(exc))})</div>'
    status = JobStatus(info.status)
    now = time.time()
    rows = [("function", f"<code>{escape(info.function or '?')}</code>")]
    if info.enqueued_at:
        rows.append(("submitted", escape(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.enqueued_at)))))
    if info.started_at:
        end = info.ended_at or now
        rows.append(("ran for" if info.ended_at else "running for", duration(end - info.started_at)))
    if info.worker:
        where = info.worker + (f" on {info.host}" if info.host else "")
        rows.append(("worker", escape(where)))
    if info.attempt and info.attempt > 1:
        rows.append(("attempt", str(info.attempt)))
    parts = [
        f'<div style="{_BOX}"><div style="margin-bottom: 4px">{status_badge(status)}'
        f" <b>Job</b> <code>{escape(job.id)}</code></div>",
        _rows(rows),
    ]
    report = job.progress
    if report is not None:
        finished = status is JobStatus.FINISHED
        fraction = 1.0 if finished and report.fraction is not None else report.fraction
        parts.append(progress_bar(fraction, progress_label(report)))
    for stream in ("stdout", "stderr"):
        text = job.stdout if stream == "stdout" else job.stderr
        if text:
            opened = " open" if status is JobStatus.STARTED else ""
            parts.append(f"<details{opened}><summary>{stream}</summary>{_pre(tail(text))}</details>")
    if status.is_done:
        try:
            error = job.exception()
            if error is None:
                parts.append(f"<div><b>result</b>{_pre(preview(job.result))}</div>")
            else:
                remote = getattr(error, "remote_traceback", None) or f"{type(error).__name__}: {error}"
                parts.append(f"<div><b>error</b>{_pre(remote)}</div>")
        except (OSError, FSQError) as exc:
            parts.append(f"<div><b>result</b>{_pre(f'cannot be read: {exc}')}</div>")
    parts.append("</div>")
    return "".join(parts)


def group_html(group: JobGroup) -> str:
    """A summary of a group: counts per state, a bar of the done share, throughput and ETA."""
    if not group:
        return f'<div style="{_BOX}">An empty job group</div>'
    states = group.states()
    counts = {s: 0 for s in STATUS_COLORS}
    for state in states.values():
        counts[state.status] += 1
    done = sum(n for s, n in counts.items() if s.is_done)
    total = len(states)
    elapsed = max(time.time() - group.created_at, 1e-9)
    rate = done / elapsed
    eta = (total - done) / rate if rate and done < total else None
    badges = " ".join(f"{status_badge(s)} {n}" for s, n in counts.items() if n)
    rows = [("jobs", f"{len(group)}"), ("states", badges)]
    if done:
        rows.append(("throughput", f"{rate:.2f} jobs/s"))
    if eta is not None:
        rows.append(("ETA", duration(eta)))
    failed = [j for j in group if states[j.id].status is JobStatus.FAILED][:3]
    extra = ""
    if failed:
        extra = "<div><b>first failures</b>" + "".join(_pre(_error_line(j)) for j in failed) + "</div>"
    return (
        f'<div style="{_BOX}"><b>Job group</b>{_rows(rows)}'
        f"{progress_bar(done / total, f'{done} / {total} done')}{extra}</div>"
    )


def _error_line(job: Job) -> str:
    try:
        info = job.info()
    except (OSError, FSQError) as exc:
        return f"{job.id}: {exc}"
    return f"{job.id}: {info.error or 'failed'}"


def queue_html(queue: Queue, *, recent: int = 8) -> str:
    """A queue's dashboard: counts per state, workers with heartbeat age, recent jobs."""
    try:
        stats = queue.stats()
        workers = queue.workers()
    except (OSError, FSQError) as exc:
        return f'<div style="{_BOX}">Queue {escape(queue.path)}: cannot be read ({escape(str(exc))})</div>'
    badges = " ".join(f"{status_badge(s)} {stats.get(s.value, 0)}" for s in STATUS_COLORS)
    parts = [f'<div style="{_BOX}"><b>Queue</b> <code>{escape(queue.path)}</code>', _rows([("jobs", badges)])]
    if workers:
        in_slurm = any(w.slurm_job_id for w in workers)
        columns = ("worker", "host", "heartbeat", "running") + (("SLURM job",) if in_slurm else ())
        head = "".join(f'<th style="{_CELL}">{h}</th>' for h in columns)
        body = ""
        now = time.time()
        for w in workers:
            age = w.heartbeat_age or 0.0
            stale = age > STALE_AFTER
            beat = duration(age) + " ago" + (" <b>(stale)</b>" if stale else "")
            style = ' style="color: var(--jp-error-color1, #d32f2f)"' if stale else ""
            running = ", ".join(w.running) or "-"
            body += (
                f"<tr{style}><td style='{_CELL}'>{escape(w.id)}</td><td style='{_CELL}'>{escape(w.host or '?')}</td>"
                f"<td style='{_CELL}'>{beat}</td><td style='{_CELL}'>{escape(running)}</td>"
            )
            if in_slurm:
                body += f"<td style='{_CELL}'>{escape(_slurm_cell(w, now))}</td>"
            body += "</tr>"
        parts.append(f'<table style="border-collapse: collapse; margin: 4px 0"><tr>{head}</tr>{body}</table>')
    pending = _pending_slurm_jobs(queue, workers)
    if pending:
        now = time.time()
        jobs = ", ".join(
            f"{escape(j.job_id)} ({escape(j.partition or '-')}, submitted {duration(max(0.0, now - j.submitted))} ago)"
            for j in pending[:PENDING_SHOWN]
        )
        more = f" and {len(pending) - PENDING_SHOWN} more" if len(pending) > PENDING_SHOWN else ""
        parts.append(f"<div><b>SLURM jobs pending</b> {len(pending)}: {jobs}{more}</div>")
    elif not workers:
        parts.append(
            "<div>No worker is registered: start one with"
            f" <code>fs-task-queue-worker --path {escape(queue.path)}</code></div>"
        )
    latest = queue.jobs()[-recent:] if recent else []
    if latest:
        states = queue.snapshot(latest, progress=False)
        rows = [(j.id, status_badge(states[j.id].status)) for j in reversed(latest)]
        parts.append("<div><b>recent jobs</b></div>" + _rows(rows))
    parts.append("</div>")
    return "".join(parts)


def _slurm_cell(worker: WorkerInfo, now: float) -> str:
    """``12345 (debug), 9m 30s left`` for a worker in a SLURM job, else ``-``."""
    if not worker.slurm_job_id:
        return "-"
    left = "end unknown" if worker.slurm_end_time is None else duration(max(0.0, worker.slurm_end_time - now)) + " left"
    return f"{worker.slurm_job_id} ({worker.partition or '-'}), {left}"


#: Pending SLURM jobs named on a dashboard (the rest are counted).
PENDING_SHOWN = 5


def _pending_slurm_jobs(queue: Queue, workers: list[WorkerInfo]) -> list[SlurmJobStatus]:
    """The queue's SLURM worker jobs submitted and not started yet (none when it has no job records)."""
    from fs_task_queue.slurm import list_jobs

    try:
        return [j for j in list_jobs(queue, workers=workers) if j.state == "pending"]
    except (OSError, FSQError):
        return []
