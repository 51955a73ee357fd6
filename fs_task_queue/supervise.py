"""The worker's task process: started, watched, stopped and, when it ends, settled.

With process isolation a worker is two processes. The *task process* claims,
reads and runs tasks itself (:class:`~fs_task_queue.serve.TaskLoop`). The
*worker process* publishes their outcomes, holds the
liveness lock and heartbeat, runs recovery and supervises: it reads which task
runs from a shared-memory :class:`~fs_task_queue.board.Board`, kills the task
process when a task times out, is canceled or outlives the shutdown grace, and
afterwards settles the claims it left. A task that segfaults, calls
``os._exit``, raises ``SystemExit`` or hits the memory limit fails with a
recorded cause; the worker starts a new task process and goes on.

The task process hands each finished outcome to the worker process over a
pipe; the worker process seals and publishes it while the task process claims,
reads and runs the next tasks, so one worker keeps two cores busy. The worker
process acknowledges publications with a byte each (one write per batch). How
many outcomes may be handed over and not yet acknowledged is bounded (see
:class:`RunAhead`): one, or more from short tasks that together ran for at
most :data:`RUN_AHEAD_BUDGET`. When the bound is reached the task process
publishes the outcome itself instead of waiting, so it never idles while the
worker process lags. It also publishes outcomes itself while no CPU is free for
the worker process (:class:`~fs_task_queue.spare_cpu.SpareCpu`: as many busy
processes as cores), where a hand-over would only add its own cost.
A worker killed at any moment therefore re-runs only the task in progress and
those in flight: one task after a long one, at most a few dozen milliseconds
of work after short ones.

The task process is forked from the worker process when that is single-threaded
(the command-line worker always is: it is a clean template that never ran a
task), which costs about a millisecond. Otherwise it is started as
``python -m fs_task_queue._child``, never with multiprocessing's spawn, which
would re-import the worker's ``__main__``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any

from fs_task_queue import contain, faults, layout
from fs_task_queue.board import COMMITTING, RUNNING, Board, Post
from fs_task_queue.errors import JobError, JobTimeoutError
from fs_task_queue.execute import CallResult, failed, read_claimed, release, requeue
from fs_task_queue.ids import job_id_of
from fs_task_queue.job import Job
from fs_task_queue.serve import LoopExit, LoopSettings, TaskLoop, commit_outcome, settle_outcome
from fs_task_queue.spare_cpu import SpareCpu
from fs_task_queue.status import JobStatus

if TYPE_CHECKING:
    import subprocess

    from fs_task_queue.queue import Queue

__all__ = ["RUN_AHEAD_BUDGET", "RUN_AHEAD_MAX", "RunAhead", "TaskProcess", "child_main", "describe_exit"]

log = logging.getLogger("fs_task_queue.worker")

# Messages from the task process on its pipe: any number of pokes and outcomes,
# then at most one exit record, then end of file. The worker process answers
# each outcome with one byte on a second pipe once it is published.
_POKE = b"d"  # a task with a deadline started: wake up and time it
_OUTCOME = b"c"  # 4-byte length, then a pickled (task file name, outcome record, payload)
_EXIT = b"x"  # followed by a pickled LoopExit
_PUBLISHED = b"k"  # acknowledgements: published (or dropped: the job had an outcome)
_REFUSED = b"r"  # not published: the filesystem refused it; the task went back to the queue
#: Seconds of task run time whose outcomes may be in flight, the newest aside (see :class:`RunAhead`).
RUN_AHEAD_BUDGET = 0.05
#: And at most this many outcomes in flight beyond the newest.
RUN_AHEAD_MAX = 64
_DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class TaskProcess:
    """One task process of the worker ``worker_id`` (see the module docstring)."""

    def __init__(
        self,
        queue: Queue,
        worker_id: str,
        settings: LoopSettings,
        *,
        memory_limit: int | None = None,
        queue_args: dict[str, Any] | None = None,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.settings = settings
        self.memory_limit = memory_limit
        self.queue_args = queue_args or {"path": queue.path}
        self.board = Board()
        self.exit: LoopExit | None = None
        self.exit_code: int | None = None
        self._pid = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._inbox = -1
        self._acks = -1
        self._received = bytearray()
        self._asked_to_stop = False
        #: Why the worker should stop, when publishing an outcome failed (disk full...).
        self.refused: str | None = None
        #: A task with a deadline started since this was last cleared.
        self.poked = False
        self._acked = False
        self._verdicts = bytearray()  # acknowledgements not yet written
        #: Readable once the task process has ended (-1: no pidfd here; see :meth:`read`).
        self._pidfd = -1
        #: The processes the task process left running (or had when killed), ended: "pid (command)".
        self.ended: list[str] = []

    # ----------------------------------------------------------------- start
    def start(self) -> None:
        """Start the task process; it begins claiming at once."""
        read_fd, write_fd = os.pipe()
        ack_r, ack_w = os.pipe()
        # An acknowledgement must never block the worker process.
        os.set_blocking(ack_w, False)
        fork = hasattr(os, "fork") and threading.active_count() == 1 and os.environ.get("FSQ_TASK_PROCESS") != "spawn"
        try:
            if fork:
                self._fork(read_fd, write_fd, ack_r, ack_w)
            else:
                self._spawn(write_fd, ack_r)
        finally:
            os.close(write_fd)
            os.close(ack_r)
        os.set_blocking(read_fd, False)
        self._inbox = read_fd
        self._acks = ack_w
        # The end of the pipe does not tell that the task process ended: a
        # process its task started may hold the pipe's write end. A pidfd does.
        try:
            self._pidfd = os.pidfd_open(self._pid)
        except (AttributeError, OSError):
            self._pidfd = -1  # Linux < 5.3: polled in read()

    def _fork(self, read_fd: int, write_fd: int, ack_r: int, ack_w: int) -> None:
        parent = os.getpid()
        # Signals wait until the child has its own handlers; the worker's would
        # otherwise run in the child if one arrived in between.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - measured through the worker tests
                code = 70
                try:
                    os.close(read_fd)
                    os.close(ack_w)
                    code = _serve(
                        self.queue,
                        self.worker_id,
                        self.settings,
                        self.board,
                        _Outbox(write_fd, ack_r),
                        self.memory_limit,
                        parent,
                        old_mask,
                    )
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        self._pid = pid

    def _spawn(self, write_fd: int, ack_fd: int) -> None:
        import subprocess

        setup_r, setup_w = os.pipe()
        board_fd = self.board.fileno()
        try:
            self._popen = subprocess.Popen(
                [sys.executable, "-m", "fs_task_queue._child", str(setup_r)],
                pass_fds=(setup_r, write_fd, ack_fd, board_fd),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(setup_r)
        self._pid = self._popen.pid
        setup = {
            "sys_path": list(sys.path),
            "queue_args": self.queue_args,
            "worker_id": self.worker_id,
            "settings": self.settings,
            "memory_limit": self.memory_limit,
            "worker_pid": os.getpid(),
            "board_fd": board_fd,
            "message_fd": write_fd,
            "ack_fd": ack_fd,
            "log_level": logging.getLogger().level,
        }
        with os.fdopen(setup_w, "wb") as f:
            try:
                f.write(pickle.dumps(setup))
            except OSError:
                pass  # it died at once: its exit code tells why

    # ----------------------------------------------------------------- watch
    @property
    def pid(self) -> int:
        return self._pid

    def filenos(self) -> tuple[int, ...]:
        """Readable when the task process has news (or has ended)."""
        return (self._inbox,) if self._pidfd < 0 else (self._inbox, self._pidfd)

    def read(self) -> bool:
        """Handle the pending messages without blocking; False once the task process has ended."""
        taken = self._take()
        if taken:
            return True
        # Only a wake-up without news asks whether the task process ended (a
        # pipe held open by a process its task started never reaches its end):
        # a stream of outcomes costs no extra system call.
        if taken is None:
            if not self._ended():
                return True
            while self._take():  # what it wrote before it ended
                pass
        if self._received.startswith(_EXIT):
            try:
                self.exit = pickle.loads(self._received[1:])
            except Exception:
                log.exception("unreadable exit record from task process %d", self._pid)
        self.reap()
        return False

    def _ended(self) -> bool:
        if self._pidfd >= 0:
            return bool(select.select([self._pidfd], [], [], 0)[0])
        try:  # no pidfd: ask without reaping (the session id stays reserved until reaped)
            info = os.waitid(os.P_PID, self._pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None and info.si_pid != 0

    def drain(self) -> None:
        """Publish the outcomes a killed task process had handed over (after :meth:`kill`)."""
        while self._inbox >= 0 and self._take():
            pass

    def _take(self) -> bool | None:
        """Read and handle what the pipe holds: True, None if nothing yet, False at its end."""
        try:
            data = os.read(self._inbox, 1 << 16)  # the inbox does not block
        except BlockingIOError:
            return None
        if not data:
            return False
        self._received += data
        self._handle()
        return True

    def _handle(self) -> None:
        buf = self._received
        at = 0
        while at < len(buf):
            kind = buf[at : at + 1]
            if kind == _POKE:
                self.poked = True
                at += 1
                continue
            if kind != _OUTCOME or len(buf) < at + 5:
                break  # an exit record (complete at end of file) or a partial message
            end = at + 5 + int.from_bytes(buf[at + 1 : at + 5], "big")
            if len(buf) < end:
                break
            self._publish(buf[at + 5 : end])
            at = end
        del buf[:at]
        self._send_verdicts()

    def _publish(self, message: bytearray) -> None:
        name, record, payload = pickle.loads(message)
        job = Job(self.queue, job_id_of(name), name=name, claimed_by=self.worker_id)
        self._acked = False
        try:
            reason = commit_outcome(job, record, payload, on_published=self._ack)
        except OSError as exc:
            log.error("cannot publish the outcome of job %s (%s): putting it back in the queue", job.id, exc)
            try:
                requeue(job)
            except OSError:
                pass  # left claimed: recovery puts it back once this worker has gone
            reason = f"outcomes cannot be published ({exc})"
        finally:
            if not self._acked:
                self._ack(_REFUSED)
        if reason is not None and self.refused is None:
            self.refused = reason

    def _ack(self, verdict: bytes = _PUBLISHED) -> None:
        # Sent once the outcomes read together are all published: one write, not one per task.
        self._acked = True
        self._verdicts += verdict

    def _send_verdicts(self) -> None:
        if self._verdicts:
            try:
                os.write(self._acks, self._verdicts)
            except OSError:
                pass  # it died (its outcomes are still published), or is far behind reading
            self._verdicts.clear()

    def post(self) -> Post:
        return self.board.read()

    def ask_to_stop(self) -> None:
        """Let the running task finish, then end (the task process claims no more)."""
        if not self._asked_to_stop:
            self._asked_to_stop = True
            try:
                os.kill(self._pid, signal.SIGUSR2)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Kill the task process and every process its tasks started, now, and wait for it."""
        if self.exit_code is None:
            try:
                os.kill(self._pid, signal.SIGSTOP)  # it forks no more while its subtree is collected
            except ProcessLookupError:
                pass
            # A subreaper while it lives: all its tasks' processes are in its subtree.
            self.ended += contain.end_processes(lambda: contain.subtree(self._pid), kill_too=(self._pid,))
        self.reap()

    def end_leftovers(self, orphans: contain.Orphans | None = None) -> list[str]:
        """Once the task process has ended: kill what its tasks left running; "pid (command)" of each.

        Before it is reaped its session id cannot be reused, so its session
        members are exactly what it left in its session; ``orphans`` finds
        those that had left the session (a daemon) and came to this process.
        """
        if self.exit_code is None:
            try:
                os.waitid(os.P_PID, self._pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped
            except ChildProcessError:
                pass
        pid = self._pid

        def find() -> set[int]:
            found = contain.session_members(pid)
            if orphans is not None:
                found |= orphans.find(exclude=(pid,))
            return found

        self.ended += contain.end_processes(find, spare=(pid,))
        return self.ended

    def reap(self) -> int | None:
        """Wait for the ended task process; its exit code (negative: the signal)."""
        if self.exit_code is None and self._pid:
            if self._popen is not None:
                self.exit_code = self._popen.wait()
            else:
                try:
                    _, status = os.waitpid(self._pid, 0)
                    self.exit_code = os.waitstatus_to_exitcode(status)
                except ChildProcessError:
                    self.exit_code = None
        return self.exit_code

    def close(self) -> None:
        for fd in (self._inbox, self._acks, self._pidfd):
            if fd >= 0:
                os.close(fd)
        self._inbox = self._acks = self._pidfd = -1
        self.board.close()

    # ---------------------------------------------------------------- settle
    def settle(self, post: Post, reason: str | None, target: int) -> tuple[int, str | None]:
        """Put every claim the ended task process left where it belongs.

        ``post`` is the board as it ended; ``reason`` is why it was killed
        ("timeout", "canceled", "shutdown") or None if it died by itself;
        ``target`` is the board sequence number the kill was aimed at: a task
        started after the decision is an innocent bystander. A claim whose job
        has an outcome is released; the task that crashed or timed out fails
        (its retries apply); any other claim goes back to the queue, not
        counted as an attempt. Returns (jobs handled, reason to stop the worker).
        """
        queue, wid = self.queue, self.worker_id
        storage = queue.storage
        handled, stop = 0, None
        for name in queue._list_tasks(layout.claimed_dir(wid)):
            job_id = job_id_of(name)
            job = Job(queue, job_id, name=name, claimed_by=wid)
            queue._status_cache.pop(job_id, None)
            if storage.exists(layout.result_path(job_id)):
                status = queue._result_status(job_id)
                kept = layout.failed_task_path if status is JobStatus.FAILED else layout.done_task_path
                release(job, keep_as=kept(name))
                handled += post.name == name and reason == "canceled"
                continue
            culprit = post.state == RUNNING and post.name == name
            if culprit and (reason is None or (reason == "timeout" and post.seq == target)):
                task = read_claimed(job)
                if task is None:
                    continue
                result = self._crash_result(job_id, task.options.get("timeout", self.settings.timeout), post, reason)
                stop = settle_outcome(job, task, result, wid) or stop
                handled += 1
                continue
            if culprit and reason == "shutdown":
                log.warning("job %s interrupted by shutdown; put back in the queue", job_id)
            elif post.state == COMMITTING and post.name == name:
                log.warning("task process died while writing the outcome of job %s; put it back in the queue", job_id)
            requeue(job)
        return handled, stop

    def _crash_result(self, job_id: str, timeout: float | None, post: Post, reason: str | None) -> CallResult:
        if reason == "timeout":
            error: JobError = JobTimeoutError(
                f"job {job_id} ran longer than its timeout of {timeout:g} s and was killed", job_id
            )
            result = failed(error, kind="timeout")
        else:
            cause = describe_exit(self.exit_code)
            hint = " (out of memory?)" if self.exit_code == -signal.SIGKILL else ""
            error = JobError(
                f"the process running job {job_id} died with {cause}{hint}: the task crashed it"
                " (segfault, os._exit, killed); the worker survived",
                job_id,
            )
            result = failed(error, kind="crash")
            result.error = dict(result.error or {}, type="ProcessDied")
        result.started, result.ended = post.started or time.time(), time.time()
        return result


def describe_exit(code: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it)."""
    if code is None:
        return "an unknown cause"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# ------------------------------------------------------------ task process side
def _become_task_process(worker_pid: int, memory_limit: int | None) -> None:
    # The worker decides when a task stops: a SIGTERM sent to the whole job
    # step by SLURM, or Ctrl-C in a terminal, must not kill the task directly.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    # Its own session, and a subreaper: every process a task starts stays
    # findable, by session or in its subtree, to be ended with it (see contain).
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader
    contain.become_subreaper()
    # If the worker is SIGKILLed the task process must not live on running a
    # task that recovery will hand to another worker.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != worker_pid:
        os._exit(0)  # the worker died before the line above
    faults.worker_pid = worker_pid  # a crash point kills the whole worker
    if memory_limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))


class RunAhead:
    """The outcomes a task process handed over that are not yet published (*in flight*).

    A worker killed now would re-run their tasks, so they are bounded: a new
    outcome may join while those in flight are none, or at most
    :data:`RUN_AHEAD_MAX` from tasks that ran for at most
    :data:`RUN_AHEAD_BUDGET` seconds together. One long task's outcome is
    published while the next task runs; no-op tasks flow without a round trip
    between the two processes per task, with little work at stake.
    """

    def __init__(self, budget: float | None = None, limit: int | None = None) -> None:
        self.budget = RUN_AHEAD_BUDGET if budget is None else budget
        self.limit = RUN_AHEAD_MAX if limit is None else limit
        self._ids: deque[str] = deque()  # job ids, oldest first
        self._ran: deque[float] = deque()  # their tasks' run times, seconds
        self._total = 0.0  # sum of _ran

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def has_room(self) -> bool:
        """Whether one more outcome may be handed over now."""
        n = len(self._ids)
        return n == 0 or (n <= self.limit and self._total <= self.budget)

    def add(self, job_id: str, ran: float) -> None:
        """An outcome of a task that ran ``ran`` seconds was handed over."""
        self._ids.append(job_id)
        self._ran.append(ran)
        self._total += ran

    def published(self) -> None:
        """The oldest outcome in flight was acknowledged."""
        self._ids.popleft()
        self._total -= self._ran.popleft()
        if not self._ids:
            self._total = 0.0  # no rounding drift


class _Outbox:
    """The task process's ends of its two pipes to the worker process."""

    def __init__(self, fd: int, ack_fd: int) -> None:
        self._fd = fd
        self._ack_fd = ack_fd
        os.set_blocking(ack_fd, False)  # acknowledgements are collected when there are some
        self._in_flight = RunAhead()
        self._spare = SpareCpu(os.getppid())
        self.refused = False

    def send(self, message: bytes) -> None:
        view = memoryview(message)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            pass  # the worker is gone; the parent-death signal ends this process

    def poke(self) -> None:
        self.send(_POKE)

    def hand_over(self, job: Job, record: dict[str, Any], payload: bytes) -> bool:
        if not self._spare.available():
            return False  # no CPU for the worker process: handing over would cost more than it saves
        in_flight = self._in_flight
        if not in_flight.has_room():
            self._collect()
            if not in_flight.has_room():
                return False  # the worker process lags: the caller publishes this one itself
        # Sealing (JSON, HMAC) is left to the worker process, which has time for it.
        message = pickle.dumps((job._name, record, payload), protocol=5)
        self.send(b"".join((_OUTCOME, len(message).to_bytes(4, "big"), message)))
        in_flight.add(job.id, max(0.0, record["end"] - record["start"]))
        return True

    def _collect(self, *, block: bool = False) -> None:
        """Take the acknowledgements that arrived (with ``block``, wait for at least one)."""
        if block:
            select.select([self._ack_fd], [], [])
        try:
            acks = os.read(self._ack_fd, 4096)
        except BlockingIOError:
            return
        if not acks:
            # The worker process is gone; its claims are left to recovery.
            os._exit(0)
        self.refused = self.refused or _REFUSED in acks
        for _ in acks:
            self._in_flight.published()

    def wait_published(self, *, everything: bool = False) -> None:
        if not everything:
            if self._in_flight:
                self._collect()  # learn of refusals; nothing to wait for
            return
        while self._in_flight:
            self._collect(block=True)

    def in_flight(self, job_id: str) -> bool:
        return job_id in self._in_flight

    def close(self, ended: LoopExit) -> None:
        self.send(_EXIT + pickle.dumps(ended))
        os.close(self._fd)
        os.close(self._ack_fd)
        self._spare.close()


def _serve(
    queue: Queue,
    worker_id: str,
    settings: LoopSettings,
    board: Board,
    outbox: _Outbox,
    memory_limit: int | None,
    worker_pid: int,
    mask: Any = None,
) -> int:
    from fs_task_queue.queue import Claimer

    _become_task_process(worker_pid, memory_limit)
    claimer = Claimer(queue, worker_id, heartbeat=False, held_by_supervisor=True)
    loop = TaskLoop(claimer, settings, board=board, on_deadline=outbox.poke, sink=outbox)
    signal.signal(signal.SIGUSR2, lambda signum, frame: loop.stop("the worker is stopping"))
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    ended = loop.run()
    # Before the end of the pipe: a process left running may hold it open.
    left = contain.end_processes(lambda: contain.subtree(os.getpid()))
    if left:
        log.warning(
            "task process %d ended %d process(es) its tasks left running: %s", os.getpid(), len(left), ", ".join(left)
        )
    outbox.close(ended)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


def child_main(setup_fd: int) -> None:
    """Entry point of ``python -m fs_task_queue._child`` (a spawned task process)."""
    with os.fdopen(setup_fd, "rb") as f:
        data = f.read()
    if not data:
        return
    setup = pickle.loads(data)
    sys.path[:] = setup["sys_path"]  # import what the worker can import
    logging.basicConfig(level=setup["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fs_task_queue.queue import Queue

    queue_args = dict(setup["queue_args"])
    queue = Queue(queue_args.pop("path"), create=False, **queue_args)
    board = Board.attach(setup["board_fd"])
    code = _serve(
        queue,
        setup["worker_id"],
        setup["settings"],
        board,
        _Outbox(setup["message_fd"], setup["ack_fd"]),
        setup["memory_limit"],
        setup["worker_pid"],
    )
    sys.exit(code)
