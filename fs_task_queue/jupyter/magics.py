"""``%%fsq`` (run a cell as a task) and ``%fsq`` (use, info, jobs, pull, cancel, wait, workers).

The only module that imports ``IPython.core.magic``. Lines are split with
``shlex`` (IPython's ``parse_argstring`` keeps quotes: ``--map 'b=[1, 2]'``
would arrive quoted) and the magics are ``@no_var_expand`` (``{...}`` and
``$x`` in ``--map`` expressions stay as written).
"""

# IPython's decorators and base classes are untyped (see pyproject's mypy overrides).
# mypy: disable-error-code="misc,untyped-decorator"
from __future__ import annotations

import functools
import os
import shlex
import sys
import uuid
from typing import Any

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import MagicArgumentParser

from fs_task_queue.errors import FSQError, NoSuchJobError, WaitInterrupted
from fs_task_queue.group import JobGroup
from fs_task_queue.job import Job
from fs_task_queue.jupyter import replay, ship, views
from fs_task_queue.jupyter.cellrun import run_cell
from fs_task_queue.jupyter.session import NotebookSession
from fs_task_queue.queue import Queue

__all__ = ["FsqMagics", "load", "unload"]

arg = magic_arguments.argument


class _HelpShown(Exception):
    """argparse printed help (or an error) and wants to exit: the magic returns instead."""


class _Parser(MagicArgumentParser):
    def exit(self, status: int = 0, message: str | None = None) -> Any:
        if message:
            print(message, file=sys.stderr)
        raise _HelpShown

    def error(self, message: str) -> Any:
        raise UsageError(f"%fsq: {message}\n\n{self.format_usage()}")


def _names(text: str) -> tuple[str, ...]:
    """``"a,b c"`` -> ``("a", "b", "c")``."""
    out = tuple(n for n in text.replace(",", " ").split() if n)
    bad = [n for n in out if not n.isidentifier()]
    if bad:
        raise UsageError(f"not variable names: {', '.join(bad)}")
    return out


def _line_parser() -> _Parser:
    parser = _Parser(prog="fsq", add_help=True, description="Use an fs-task-queue queue from this notebook.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    p = sub.add_parser("use", help="set the notebook's default queue", add_help=True)
    p.add_argument("queue", metavar="PATH|VAR", help="a queue directory ('~' expanded), ssh:// URL or Queue variable")
    sub.add_parser("info", help="show the default queue (states, workers, recent jobs)", add_help=True)
    p = sub.add_parser("jobs", help="list the jobs submitted from this notebook (after a restart too)", add_help=True)
    p.add_argument("--limit", type=int, default=20, metavar="N", help="only the last N (default: 20)")
    p.add_argument("--all", action="store_true", help="every notebook's cell jobs, not only this one's")
    p = sub.add_parser("pull", help="bring a finished cell's variables and outputs back", add_help=True)
    p.add_argument("job", nargs="?", metavar="JOB|VAR", help="job or group id, or a variable (default: the last)")
    p.add_argument("--names", type=_names, metavar="A,B", help="only these variables")
    p.add_argument("--partial", action="store_true", help="--map group: assign lists with failures in place")
    p = sub.add_parser("cancel", help="cancel a job or group", add_help=True)
    p.add_argument("job", nargs="?", metavar="JOB|VAR", help="(default: the last)")
    p = sub.add_parser("wait", help="block until a job or group is done (interrupt stops the wait)", add_help=True)
    p.add_argument("job", nargs="?", metavar="JOB|VAR", help="(default: the last)")
    p.add_argument("--timeout", type=float, metavar="SECONDS")
    p = sub.add_parser(
        "workers",
        help="run N local worker processes on the default queue (0 stops), or submit N SLURM worker jobs (--slurm)",
        add_help=True,
    )
    p.add_argument("n", type=int, metavar="N")
    g = p.add_argument_group("SLURM", "with --slurm: N batch jobs, each one worker (on the queue's host for ssh://)")
    g.add_argument(
        "--slurm", action="store_true", help="submit N SLURM worker jobs (0: cancel the queue's; see docs/slurm.md)"
    )
    g.add_argument("--time", metavar="HH:MM:SS", help="each job's time limit (sbatch --time); required")
    g.add_argument("--partition", help="sbatch --partition")
    g.add_argument("--account", help="sbatch --account")
    g.add_argument("--cpus-per-task", type=int, metavar="N", help="sbatch --cpus-per-task")
    g.add_argument("--mem", metavar="SIZE", help="sbatch --mem, e.g. 4G")
    g.add_argument("--max", type=int, metavar="N", help="pool size: later %%%%fsq cells submit workers up to N")
    g.add_argument("--max-idle", type=float, metavar="SECONDS", help="an idle worker ends (default: 300; 0: never)")
    g.add_argument("--sbatch-arg", action="append", metavar="ARG", help="one more sbatch argument (repeatable)")
    g.add_argument("--dry-run", action="store_true", help="print the sbatch command and batch script only")
    return parser


_LINE = _line_parser()


@magics_class
class FsqMagics(Magics):
    def __init__(self, shell: Any, session: NotebookSession) -> None:
        super().__init__(shell)
        self.session = session

    # ------------------------------------------------------------------ %%fsq
    @no_var_expand
    @magic_arguments.magic_arguments(name="%fsq")
    @arg("-h", "--help", action="store_true", help="show this help; run nothing")
    @arg("-q", "--queue", metavar="PATH|VAR", help="queue directory or Queue variable (default: %%fsq use)")
    @arg("--name", metavar="VAR", help="store the job (a group with --map) in VAR")
    @arg("--no-wait", action="store_true", help="return at once; `%%fsq pull` brings the variables")
    @arg(
        "--autopull",
        action="store_true",
        help="with --no-wait: variables arrive before the next cell run after the job ends",
    )
    @arg("--timeout", type=float, metavar="SECONDS", help="the task's time limit on the worker")
    @arg("--retries", type=int, default=0, metavar="N", help="run again up to N times if it fails")
    @arg(
        "--expected-duration",
        type=float,
        metavar="SECONDS",
        help="how long the cell runs: a SLURM worker with less time left leaves it to another",
    )
    @arg("--push", type=_names, default=(), metavar="A,B", help="also ship these variables")
    @arg("--pull", type=_names, metavar="A,B", help="bring back exactly these variables")
    @arg(
        "--map",
        action="append",
        default=[],
        metavar="NAME=EXPR",
        help="run once per item of EXPR with NAME set to it, as one group; assigned variables come back as lists",
    )
    @cell_magic("fsq")
    def fsq_cell(self, line: str, cell: str) -> Any:
        """Run this cell on a worker of the queue, then bring its variables and outputs back."""
        parser = self.fsq_cell.parser
        try:
            args = parser.parse_args(shlex.split(line))
        except ValueError as exc:  # shlex: unbalanced quotes
            raise UsageError(f"%%fsq: {exc}") from None
        except UsageError as exc:
            if "--map" in line and "unrecognized arguments" in str(exc):
                # The line is split like a shell's: `--map x=[1, 2]` is three words.
                raise UsageError(
                    f"{exc}. An EXPR with spaces must be quoted: --map 'x=[1, 2]' (or written without spaces)"
                ) from None
            raise
        if args.help:
            print(self.fsq_cell.__doc__)
            return None
        if args.autopull and not args.no_wait:
            raise UsageError("--autopull needs --no-wait (a waiting cell pulls anyway)")
        if args.name is not None and not args.name.isidentifier():
            raise UsageError(f"--name {args.name!r} is not a variable name")
        queue = self._queue(args.queue)
        maps = self._maps(args.map)
        filename = ship.cell_filename(cell, self.shell.execution_count)
        try:
            spec = ship.pack_namespace(
                cell,
                self.shell.user_ns,
                filename=filename,
                hidden=self.shell.user_ns_hidden,
                push=args.push,
                pull=args.pull,
                exclude=maps,
            )
        except SyntaxError:
            if self.shell.transform_cell(cell) != cell:
                raise UsageError(
                    "this cell uses IPython syntax (%magics, !shell, ?help): it does not run on a worker,"
                    " which runs plain Python; use subprocess / the module's functions instead"
                ) from None
            raise
        meta = {
            "v": 1,
            "kind": "cell",
            "notebook": self.session.notebook,
            "cell": self.shell.execution_count,
            "summary": _summary(cell),
        }
        options: dict[str, Any] = {
            "timeout": args.timeout,
            "retries": args.retries,
            "expected_duration": args.expected_duration,
        }
        handle: Job | JobGroup
        group_id = None
        if maps:
            meta["group"] = group_id = "g" + uuid.uuid4().hex[:12]
            items = list(zip(*maps.values(), strict=True))
            calls = [((), dict(zip(maps, item, strict=True))) for item in items]
            handle = queue.enqueue_many(functools.partial(run_cell, spec), calls, metadata={"fsq": meta}, **options)
        else:
            handle = queue.enqueue_call(run_cell, (spec,), metadata={"fsq": meta}, **options)
        self.session.last = handle
        self._follow_backlog(queue)
        if args.name:
            self.shell.user_ns[args.name] = handle
        display = views.show(handle)
        if args.no_wait:
            if args.autopull:
                self.session.autopull.append((handle, args.pull))
            return None
        self._wait(handle, None, group_id)
        views.finish(display, handle)
        pulled = replay.pull(handle, self.shell.user_ns, names=args.pull)
        if pulled.last_bundle is not None:
            from IPython.display import display as show_bundle

            show_bundle(pulled.last_bundle, raw=True)
        return None if pulled.last is replay.NOTHING else pulled.last

    def _follow_backlog(self, queue: Queue) -> None:
        from fs_task_queue.jupyter.slurmworkers import follow_backlog

        said = follow_backlog(queue)
        if said:
            print(said)

    def _queue(self, given: str | None) -> Queue:
        if given is None:
            if self.session.queue is None:
                raise UsageError("no queue: run `%fsq use PATH` first, or give -q PATH")
            return self.session.queue
        value = self.shell.user_ns.get(given) if given.isidentifier() else None
        if isinstance(value, Queue):
            return value
        return Queue(os.path.expanduser(given))

    def _maps(self, specs: list[str]) -> dict[str, list[Any]]:
        maps: dict[str, list[Any]] = {}
        for text in specs:
            name, sep, expr = text.partition("=")
            name = name.strip()
            if not sep or not name.isidentifier() or not expr.strip():
                raise UsageError(f"--map {text!r}: write NAME=EXPR, e.g. --map 'lr=[0.1, 0.01]'")
            if name in maps:
                raise UsageError(f"--map {name} is given twice")
            try:
                maps[name] = list(self.shell.ev(expr))
            except TypeError as exc:
                raise UsageError(f"--map {name}={expr}: not iterable ({exc})") from None
        lengths = {name: len(items) for name, items in maps.items()}
        if len(set(lengths.values())) > 1:
            raise UsageError(f"--map lists differ in length: {lengths} (they are zipped, item by item)")
        if maps and not next(iter(lengths.values())):
            raise UsageError("--map has no items: nothing to run")
        return maps

    def _wait(self, handle: Job | JobGroup, timeout: float | None, group_id: str | None = None) -> None:
        try:
            views.wait(handle, timeout)
        except KeyboardInterrupt:
            raise WaitInterrupted(*_interrupted_lines(handle, group_id)) from None

    # ------------------------------------------------------------------- %fsq
    @no_var_expand
    @line_magic("fsq")
    def fsq_line(self, line: str) -> Any:
        try:
            args = _LINE.parse_args(shlex.split(line))
        except _HelpShown:
            return None
        except ValueError as exc:
            raise UsageError(f"%fsq: {exc}") from None
        return getattr(self, f"_cmd_{args.command}")(args)

    def _cmd_use(self, args: Any) -> None:
        self.session.use(self._queue(args.queue))
        print(f"fsq: default queue {self.session.queue.path}")  # type: ignore[union-attr]

    def _cmd_info(self, args: Any) -> None:
        views.show(self._queue(None))

    def _cmd_jobs(self, args: Any) -> None:
        queue = self._queue(None)
        mine = self.session.notebook
        rows: list[tuple[str, str, Any, str, str]] = []
        groups: dict[str, list[Any]] = {}
        for job in queue.jobs():
            info = job.info()
            meta = (info.metadata or {}).get("fsq")
            if not isinstance(meta, dict) or meta.get("kind") != "cell":
                continue
            if not args.all and meta.get("notebook") != mine:
                continue
            group = meta.get("group")
            if group:
                if group not in groups:
                    groups[group] = []
                    rows.append((group, "", meta.get("cell"), meta.get("summary", ""), "group"))
                groups[group].append(info.status)
            else:
                rows.append((job.id, info.status, meta.get("cell"), meta.get("summary", ""), "job"))
        rows.sort(key=lambda r: r[0] if r[4] == "job" else min(_ids(queue, r[0]) or [r[0]]))
        if not rows:
            print(f"fsq: no cell jobs from this notebook ({mine}) in {queue.path}")
            return
        for ident, status, cell, summary, kind in rows[-args.limit :]:
            if kind == "group":
                states = groups[ident]
                status = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
                ident = f"{ident} (group of {len(states)})"
            print(f"{ident}  In[{cell}]  {status}  {summary}")

    def _resolve(self, given: str | None) -> Job | JobGroup:
        if given is None:
            if self.session.last is None:
                raise UsageError("no job submitted from this session yet: name one (see `%fsq jobs`)")
            return self.session.last
        value = self.shell.user_ns.get(given) if given.isidentifier() else None
        if isinstance(value, (Job, JobGroup)):
            return value
        queue = self._queue(None)
        try:
            job = queue.job(given)
            job.get_status()
            return job
        except (NoSuchJobError, ValueError):
            pass
        ids = _ids(queue, given)
        if ids:
            return JobGroup(queue.job(i) for i in ids)
        raise UsageError(f"no job, group or variable {given!r} (see `%fsq jobs`)")

    def _cmd_pull(self, args: Any) -> None:
        handle = self._resolve(args.job)
        pulled = replay.pull(handle, self.shell.user_ns, names=args.names, partial=args.partial)
        print(f"fsq: pulled {', '.join(pulled.names) or 'nothing'}")
        if pulled.last is not replay.NOTHING:
            from IPython.display import display

            display(pulled.last)

    def _cmd_cancel(self, args: Any) -> None:
        handle = self._resolve(args.job)
        if isinstance(handle, Job):
            print(f"fsq: job {handle.id} {'canceled' if handle.cancel() else 'was done already'}")
        else:
            print(f"fsq: canceled {handle.cancel()} of {len(handle)} jobs")

    def _cmd_wait(self, args: Any) -> None:
        handle = self._resolve(args.job)
        shown = views.show(handle)
        self._wait(handle, args.timeout, args.job)
        views.finish(shown, handle)
        self.session.before_cell()  # --autopull ones arrive now

    def _cmd_workers(self, args: Any) -> None:
        from fs_task_queue.jupyter import slurmworkers
        from fs_task_queue.jupyter.localworkers import LocalWorkers

        queue = self._queue(None)
        if args.slurm:
            if args.n < 0:
                raise UsageError("%fsq workers --slurm N: N worker jobs to submit (>= 1), or 0 to cancel them all")
            try:
                print(slurmworkers.submit(queue, args.n, args) if args.n else slurmworkers.cancel(queue))
            except (ValueError, FSQError) as exc:
                raise UsageError(f"%fsq workers --slurm: {exc}") from None
            return
        given = [f"--{name.replace('_', '-')}" for name in slurmworkers.SLURM_OPTIONS if getattr(args, name)]
        if given:
            raise UsageError(f"{', '.join(given)}: SLURM options, for `%fsq workers --slurm N --time HH:MM:SS`")
        if self.session.workers is None:
            if args.n == 0:
                print("fsq: no local workers running")
                return
            self.session.workers = LocalWorkers(queue)
        names = self.session.workers.scale(args.n)
        print(f"fsq: {len(names)} local worker(s) on {queue.path}" + (f": {', '.join(names)}" if names else ""))


FsqMagics.fsq_line.__doc__ = _LINE.format_help()


def _ids(queue: Queue, group: str) -> list[str]:
    """The job ids of ``%%fsq --map`` group ``group``, in item order."""
    out = []
    for job in queue.jobs():
        meta = (job.info().metadata or {}).get("fsq")
        if isinstance(meta, dict) and meta.get("group") == group:
            out.append(job.id)
    return sorted(out)


def _summary(cell: str) -> str:
    for text in cell.splitlines():
        text = text.strip()
        if text and not text.startswith("#"):
            return text if len(text) <= 60 else text[:59] + "…"
    return ""


def _interrupted_lines(handle: Job | JobGroup, group_id: str | None) -> list[str]:
    if isinstance(handle, Job):
        try:
            where = handle.worker
        except Exception:
            where = None
        place = f"on worker {where}" if where else "in the queue"
        return [
            f"Stopped waiting for job {handle.id} (it goes on {place}).",
            f"  %fsq pull {handle.id}     brings its variables when it is done",
            f"  %fsq cancel {handle.id}   stops it",
        ]
    ident = group_id or "VAR"
    return [
        f"Stopped waiting for group {ident} of {len(handle)} jobs (they go on).",
        f"  %fsq pull {ident}     brings their variables (as lists) when all are done",
        f"  %fsq cancel {ident}   stops them",
    ]


_sessions: dict[int, NotebookSession] = {}


def load(ip: Any) -> None:
    session = _sessions.get(id(ip))
    if session is None:
        session = _sessions[id(ip)] = NotebookSession(ip)
    ip.register_magics(FsqMagics(ip, session))
    views.register_formatters(ip)
    ip.events.register("pre_run_cell", session.before_cell)


def unload(ip: Any) -> None:
    session = _sessions.pop(id(ip), None)
    if session is not None:
        session.close()
        try:
            ip.events.unregister("pre_run_cell", session.before_cell)
        except ValueError:
            pass
    views.unregister_formatters(ip)
    magics = ip.magics_manager.magics
    magics["line"].pop("fsq", None)
    magics["cell"].pop("fsq", None)
