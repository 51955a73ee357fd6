"""Whether a CPU is free for the worker process to publish outcomes on.

Handing an outcome from the task process to the worker process pays off only
when the worker process can publish it on a CPU that would otherwise idle: the
hand-over itself (pickling, a pipe, a wake-up, context switches) costs CPU
time. When as many busy processes as CPUs share the machine (two workers on two
cores, or one worker per core as batch jobs usually start them) there is no
such CPU, and the task process does better publishing its outcomes itself.

The question is counterfactual (would the worker process find a free CPU?), so
the gauge counts the worker process's own CPU time as free: over each window
it adds the idle time of the CPUs this process may run on (``/proc/stat``, so
CPU sets of batch systems count and other users' cores do not) to the worker
process's CPU time (``/proc/<pid>/stat``). Counting only idle time would make
the verdict flip every window: handing over uses up the idle CPU that justified it.
Where ``/proc`` is missing the gauge always says yes (hand over, as before).
"""

from __future__ import annotations

import os
import time

__all__ = ["SPARE_THRESHOLD", "SPARE_WINDOW", "SpareCpu"]

#: Seconds between verdicts (``/proc`` counts in ticks of 10 ms: shorter windows are noise).
SPARE_WINDOW = 0.1
#: CPUs' worth of idle-or-worker-process time above which a CPU counts as free.
#: Two busy processes per CPU give the worker process at most half of one.
SPARE_THRESHOLD = 0.75


class SpareCpu:
    """Judges, a window at a time, whether the process ``pid`` has a CPU of its own to use.

    ``proc`` is where procfs is mounted (tests point it at a copy).
    """

    def __init__(self, pid: int, *, proc: str = "/proc", window: float = SPARE_WINDOW) -> None:
        self.window = window
        self._tick = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        try:
            cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            cpus = set(range(os.cpu_count() or 1))
        self._rows = {f"cpu{n}".encode() for n in cpus}
        self._fds: tuple[int, int] | None = None
        try:
            stat = os.open(f"{proc}/stat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._fds = (stat, os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                os.close(stat)
        except OSError:
            pass
        self.free = True  #: the verdict of the last window
        self._last = self._sample()
        self._since = time.monotonic()

    def available(self) -> bool:
        """The current verdict, renewed once a window has passed since the last one."""
        now = time.monotonic()
        if now - self._since >= self.window:
            sample = self._sample()
            if sample is not None and self._last is not None:
                spent = now - self._since
                idle, worker = (new - old for new, old in zip(sample, self._last, strict=True))
                self.free = (idle + worker) * self._tick / spent >= SPARE_THRESHOLD
            self._last, self._since = sample, now
        return self.free

    def _sample(self) -> tuple[int, int] | None:
        """(idle + iowait ticks of our CPUs, CPU ticks of the worker process), or None when unreadable."""
        if self._fds is None:
            return None
        try:
            # Reading a procfs file from offset 0 again renders it afresh: one call each.
            stat, worker = os.pread(self._fds[0], 1 << 20, 0), os.pread(self._fds[1], 4096, 0)
        except OSError:
            return None  # the worker process is gone: the parent-death signal ends this one
        try:
            idle = 0
            for line in stat.split(b"\n"):
                if not line.startswith(b"cpu"):
                    break  # the per-CPU rows come first
                fields = line.split()
                if fields[0] in self._rows:
                    idle += int(fields[4]) + int(fields[5])
            # The fields after the command name (which may hold spaces and parentheses).
            rest = worker[worker.rindex(b")") + 2 :].split()
            return idle, int(rest[11]) + int(rest[12])
        except (ValueError, IndexError):
            # A layout this code does not know must not crash the task process: no verdict.
            return None

    def close(self) -> None:
        """Close the procfs files."""
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None
