"""Usable cores: how many cores a group's processes can keep busy, whatever the quota says.

A CPython process with the GIL runs Python code on one core at a time, so a
single-process service in a 1.5-CPU group can never use more than 1 core: its
group tops out at 67% of the quota, and a CPU gate at 80% never fires.

The rule, per process of the group (``cgroup.procs``, read at most once a
second by ``ContainerSource.read_limits``):

- it counts **1 core** while it is single-threaded, or a Python process (its
  executable is ``python*``; this process itself when ``sys._is_gil_enabled()``
  is True or absent), and has never been seen using more than
  ``MULTICORE_CORES`` (1.05) cores over one observation;
- it counts **unbounded** (the quota) once seen above that, or when it is
  multi-threaded native code (more than one thread, not Python): its threads
  may run in parallel;
- a process that has never used ``BUSY_CORES`` (5% of a core) over one
  observation is left out (a shell wrapper, an idle gunicorn master), unless
  no process of the group is busy: then the group counts as its most parallel
  process.

``usable_cores = min(limit_cores, the sum over the counted processes)``.
What it cannot see: a process that has not yet shown its parallelism (a native
server that has not been loaded past one core yet counts as unbounded only if
it is multi-threaded), threads blocked in C extensions that release the GIL
(numpy, I/O) in a Python process that never passed 1.05 cores, and groups of
more than ``MAX_PROCESSES`` processes (counted as unbounded: too many to read
every second).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["BUSY_CORES", "MAX_PROCESSES", "MULTICORE_CORES", "Parallelism", "Usable", "gil_enabled", "read_pids"]

MULTICORE_CORES = 1.05  # a process seen above this many cores over one observation is multi-core
BUSY_CORES = 0.05  # a process never seen above this is idle and left out
MIN_OBSERVATION_S = 0.5  # shorter gaps are not rated: CPU time ticks in 1/CLK_TCK s (10 ms here)
MAX_PROCESSES = 64  # more processes than this in the group: not read (counted as unbounded)
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def gil_enabled() -> bool:
    """True when this interpreter runs with the GIL (always, before free-threaded 3.13 builds)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


@dataclass(frozen=True, slots=True)
class Usable:
    """The cores a group's processes can use: ``cores`` None means unbounded (the quota holds);
    ``why`` says it in words; ``processes`` counted / seen."""

    cores: float | None
    why: str
    processes: int = 0
    seen: int = 0


@dataclass(slots=True)
class _Process:
    cpu_s: float
    at: float
    threads: int
    python: bool
    peak_cores: float = 0.0


def _read_stat(root: str, pid: int) -> tuple[float, int] | None:
    """``(cpu seconds, threads)`` of ``pid`` from ``/proc/PID/stat``, None when gone or unreadable."""
    try:
        with open(os.path.join(root, "proc", str(pid), "stat"), "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        utime, stime, threads = int(fields[11]), int(fields[12]), int(fields[17])
    except (IndexError, ValueError):
        return None
    return (utime + stime) / _CLK_TCK, threads


def _is_python(root: str, pid: int) -> bool:
    """Whether ``pid`` runs a Python interpreter: its executable (or else its comm) is ``python*``."""
    proc = os.path.join(root, "proc", str(pid))
    try:
        name = os.path.basename(os.readlink(os.path.join(proc, "exe")))
    except OSError:
        try:
            with open(os.path.join(proc, "comm"), "rb") as f:
                name = f.read().decode(errors="replace").strip()
        except OSError:
            return False
    return name.startswith("python")


def read_pids(procs_file: str) -> list[int] | None:
    """The pids listed in a ``cgroup.procs`` file, None when it cannot be read."""
    try:
        with open(procs_file, "rb") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return None


class Parallelism:
    """Follows a group's processes between observations and bounds the cores they can use.

    ``root`` is where ``proc/`` is read (a fixture tree in tests); ``self_pid`` is this
    process (a Python interpreter: one core while ``gil`` is True).
    """

    def __init__(self, root: str = "/", *, self_pid: int | None = None, gil: bool | None = None) -> None:
        self.root = root or "/"
        self.self_pid = os.getpid() if self_pid is None else self_pid
        self.gil = gil_enabled() if gil is None else gil
        self._procs: dict[int, _Process] = {}
        self.usable = Usable(None, "not observed yet")

    def observe(self, pids: Iterable[int] | None, now: float) -> Usable:
        """Read the listed processes' CPU time at ``now`` (seconds) and return the usable cores."""
        if pids is None:
            self._procs.clear()
            self.usable = Usable(None, "the group's processes cannot be listed")
            return self.usable
        listed = list(pids)
        if len(listed) > MAX_PROCESSES:
            self._procs.clear()
            self.usable = Usable(None, f"{len(listed)} processes (more than {MAX_PROCESSES} are not followed)",
                                 seen=len(listed))  # fmt: skip
            return self.usable
        procs: dict[int, _Process] = {}
        for pid in listed:
            stat = _read_stat(self.root, pid)
            if stat is None:
                continue
            cpu_s, threads = stat
            prev = self._procs.get(pid)
            if prev is None:
                python = (pid == self.self_pid and self.gil) or (pid != self.self_pid and _is_python(self.root, pid))
                procs[pid] = _Process(cpu_s, now, threads, python)
                continue
            dt = now - prev.at
            prev.threads = threads
            if dt >= MIN_OBSERVATION_S:
                if cpu_s >= prev.cpu_s:
                    prev.peak_cores = max(prev.peak_cores, (cpu_s - prev.cpu_s) / dt)
                prev.cpu_s, prev.at = cpu_s, now
            procs[pid] = prev
        self._procs = procs
        self.usable = self._count()
        return self.usable

    def _count(self) -> Usable:
        procs = list(self._procs.values())
        if not procs:
            return Usable(None, "no process in the group")
        busy = [p for p in procs if p.peak_cores >= BUSY_CORES]
        counted = busy or [max(procs, key=_cores_or_inf)]
        total = 0.0
        for p in counted:
            c = _cores(p)
            if c is None:
                multi = "seen above 1 core" if p.peak_cores > MULTICORE_CORES else f"{p.threads} native threads"
                return Usable(None, f"a multi-core process ({multi})", len(counted), len(procs))
            total += c
        pythons = sum(1 for p in counted if p.python)
        if len(counted) == 1:
            what = "one Python process" if pythons else "one single-threaded process"
        else:
            what = f"{len(counted)} processes" + (f", {pythons} Python" if pythons else "")
        return Usable(total, what, len(counted), len(procs))


def _cores(p: _Process) -> float | None:
    """1 core for a process that can use only one; None (unbounded) for a multi-core one."""
    if p.peak_cores > MULTICORE_CORES:
        return None
    return 1.0 if p.python or p.threads <= 1 else None


def _cores_or_inf(p: _Process) -> float:
    c = _cores(p)
    return float("inf") if c is None else c
