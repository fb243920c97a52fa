"""Whose CPU the sidecar watches: itself, a pid, a process by name, or a cgroup directory.

In a Pod the sidecar has its own cgroup; the app's is found through the
app's process (shared PID namespace): every path is then read through
``/proc/PID/cgroup``, ``/proc/PID/mountinfo`` and ``/proc/PID/root``.

``WatchedSignal`` is a ``CpuSignal`` that owns one ``Sampler`` for the
current target and re-resolves when the watched process goes away or is
replaced (same pid, different start time): ``process:NAME`` finds the new
process, ``pid:N`` waits for N to come back. While nothing is resolved the
reading is ``UNKNOWN_READING`` (the limiter then does not shed on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from flowctl.periodic import Periodic
from flowctl.signal import UNKNOWN_READING, CpuReading

__all__ = [
    "WatchTarget",
    "WatchedSignal",
    "find_process",
    "parse_watch",
    "process_start_ticks",
]

log = logging.getLogger("sidecar.watch")


@dataclass(frozen=True, slots=True)
class WatchTarget:
    """``kind`` is "self" | "pid" | "process" | "cgroup"; ``value`` the pid, name or path."""

    kind: str
    value: str = ""

    def __str__(self) -> str:
        return self.kind if self.kind == "self" else f"{self.kind}:{self.value}"


def parse_watch(text: str) -> WatchTarget:
    """Parse ``self | pid:N | process:NAME | cgroup:PATH``; ValueError says what is wrong."""
    t = text.strip()
    if t == "self":
        return WatchTarget("self")
    kind, sep, value = t.partition(":")
    if not sep or not value:
        raise ValueError(f"expected self, pid:N, process:NAME or cgroup:PATH, got {text!r}")
    if kind == "pid":
        if not value.isdigit() or int(value) <= 0:
            raise ValueError(f"pid must be a positive integer, got {value!r}")
        return WatchTarget("pid", str(int(value)))
    if kind == "process":
        if "/" in value and not value.startswith("/"):
            raise ValueError(f"process name must be a name or an absolute path, got {value!r}")
        return WatchTarget("process", value)
    if kind == "cgroup":
        if not value.startswith("/"):
            raise ValueError(f"cgroup path must be absolute, got {value!r}")
        return WatchTarget("cgroup", value)
    raise ValueError(f"unknown watch kind {kind!r} (self, pid, process, cgroup)")


def process_start_ticks(pid: int, proc_root: str = "/proc") -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if the process is gone."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def _ppid(pid: int, proc_root: str) -> int | None:
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rfind(b")") + 2 :].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _matches(pid: int, name: str, proc_root: str) -> bool:
    try:
        with open(f"{proc_root}/{pid}/comm", "rb") as f:
            comm = f.read().rstrip(b"\n").decode(errors="replace")
    except OSError:
        return False
    if comm == name:  # comm is truncated to 15 bytes; longer names match through cmdline
        return True
    try:
        with open(f"{proc_root}/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    for arg in argv[:2]:  # the program, or the script of an interpreter ("python app.py")
        a = arg.decode(errors="replace")
        if a and (a == name or os.path.basename(a) == name):
            return True
    return False


def find_process(name: str, *, proc_root: str = "/proc", exclude: frozenset[int] | None = None) -> int | None:
    """The pid of the top-most, oldest process whose comm or argv[0]/argv[1] is ``name``.

    ``name`` matches ``/proc/PID/comm`` exactly, or the basename (or full path)
    of the first two cmdline arguments. The sidecar's own pid is excluded.
    """
    exclude = frozenset({os.getpid()}) if exclude is None else exclude
    try:
        pids = [int(d) for d in os.listdir(proc_root) if d.isdigit()]
    except OSError:
        return None
    found = [p for p in pids if p not in exclude and _matches(p, name, proc_root)]
    if not found:
        return None
    found_set = set(found)
    tops = [p for p in found if _ppid(p, proc_root) not in found_set] or found
    return min(tops, key=lambda p: (process_start_ticks(p, proc_root) or 0, p))


class _Sampler(Protocol):
    @property
    def reading(self) -> CpuReading: ...

    def sample(self, now: float | None = None) -> CpuReading: ...


SamplerFactory = Callable[["int | str | None", "str | None"], Any]


def default_sampler_factory(view: str, interval_s: float) -> SamplerFactory:
    """Build flowctl.cpu samplers: ``(pid, None)`` for a process, ``(None, path)`` for a cgroup dir."""

    def make(pid: int | str | None, cgroup_path: str | None) -> Any:
        from flowctl.cpu import make_signal

        if cgroup_path is not None:
            return make_signal("container", cgroup_path=cgroup_path, interval_s=interval_s)
        return make_signal(view, pid=pid if pid is not None else "self", interval_s=interval_s)

    return make


class WatchedSignal:
    """A CpuSignal for a ``WatchTarget`` that follows the target across restarts.

    ``async with`` (or ``start``/``stop``) runs one task that samples every
    ``interval_s`` and re-checks the target every ``recheck_s``.
    """

    def __init__(
        self,
        target: WatchTarget,
        *,
        view: str = "container",
        interval_s: float = 0.1,
        recheck_s: float = 1.0,
        sampler_factory: SamplerFactory | None = None,
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.view = view
        self._recheck_s = recheck_s
        self._factory = sampler_factory or default_sampler_factory(view, interval_s)
        self._proc_root = proc_root
        self._clock = clock
        self._sampler: Any = None
        self.pid: int | None = None
        self._start_ticks: int | None = None
        self.resolutions = 0
        self.last_error: str | None = None
        self.reading: CpuReading = UNKNOWN_READING
        self._periodic = Periodic(self.sample, interval_s, name=f"flowctl-watch-{target}")
        self._next_check = 0.0

    @property
    def name(self) -> str:
        return self.view if self.target.kind != "cgroup" else "container"

    @property
    def configured_view(self) -> str:
        return self.name

    @property
    def active_view(self) -> str:
        """The view the current sampler reads (its fallback while the configured view fails)."""
        return str(getattr(self._sampler, "active_view", self.name))

    @property
    def switches_total(self) -> int:
        return int(getattr(self._sampler, "switches_total", 0))

    @property
    def sampler(self) -> Any:
        """The current flowctl.cpu Sampler (None while unresolved)."""
        return self._sampler

    def describe(self) -> dict[str, Any]:
        """JSON-able state for /debug/limiter."""
        return {
            "target": str(self.target),
            "view": self.view,
            "pid": self.pid,
            "resolved": self._sampler is not None,
            "resolutions": self.resolutions,
            "last_error": self.last_error,
        }

    # -- resolution -----------------------------------------------------------------------------

    def _resolve_pid(self) -> int | None:
        k = self.target.kind
        if k == "self":
            return os.getpid()
        if k == "pid":
            pid = int(self.target.value)
            return pid if process_start_ticks(pid, self._proc_root) is not None else None
        if k == "process":
            return find_process(self.target.value, proc_root=self._proc_root)
        return None

    def _still_valid(self) -> bool:
        if self._sampler is None:
            return False
        if self.target.kind == "cgroup":
            return os.path.isdir(self.target.value)
        if self.pid is None:
            return False
        return process_start_ticks(self.pid, self._proc_root) == self._start_ticks

    def _drop(self, why: str, *, warn: bool = True) -> None:
        if self._sampler is not None:
            if warn:
                log.warning("watch %s: lost (%s); re-resolving", self.target, why)
            close = getattr(self._sampler, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
        self._sampler = None
        self.pid = None
        self._start_ticks = None
        self.reading = UNKNOWN_READING

    def check(self) -> bool:
        """Re-resolve if needed; True when a sampler is in place afterwards."""
        if self._still_valid():
            return True
        self._drop("process gone or replaced" if self._sampler is not None else "not resolved")
        try:
            if self.target.kind == "cgroup":
                if not os.path.isdir(self.target.value):
                    raise FileNotFoundError(f"no cgroup directory {self.target.value}")
                sampler = self._factory(None, self.target.value)
                pid = None
            else:
                pid = self._resolve_pid()
                if pid is None:
                    raise LookupError(f"no process for {self.target}")
                sampler = self._factory("self" if self.target.kind == "self" else pid, None)
        except Exception as e:  # noqa: BLE001 - unresolvable now; retried every recheck_s
            msg = f"{type(e).__name__}: {e}"
            if msg != self.last_error:
                log.warning("watch %s: %s", self.target, msg)
            self.last_error = msg
            return False
        self._sampler = sampler
        self.pid = pid
        self._start_ticks = process_start_ticks(pid, self._proc_root) if pid is not None else None
        self.resolutions += 1
        self.last_error = None
        log.info("watch %s: resolved (pid %s)", self.target, pid)
        return True

    def sample(self, now: float | None = None) -> CpuReading:
        """Take one sample from the current sampler (re-resolving first when due)."""
        now = self._clock() if now is None else now
        if self._sampler is None or now >= self._next_check:
            self._next_check = now + self._recheck_s
            self.check()
        if self._sampler is None:
            return self.reading
        try:
            self.reading = self._sampler.sample()
        except Exception as e:  # noqa: BLE001 - the process may vanish between two reads
            self.last_error = f"{type(e).__name__}: {e}"
            self._drop(self.last_error)
        return self.reading

    # -- lifetime -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Sample once now, then every ``interval_s`` on a fixed schedule from a task (idempotent)."""
        if not self._periodic.running:
            self.sample()
            await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
        self._drop("stopped", warn=False)

    async def __aenter__(self) -> WatchedSignal:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
