"""Whose CPU the sidecar watches: itself, a pid, a process by name or command line, or a cgroup directory.

In a Pod the sidecar has its own cgroup; the app's is found through the
app's process (shared PID namespace): every path is then read through
``/proc/PID/cgroup``, ``/proc/PID/mountinfo`` and ``/proc/PID/root``.

``WatchedSignal`` is a ``CpuSignal`` that owns one ``Sampler`` for the
current target and re-resolves when the watched process goes away or is
replaced (same pid, different start time): ``process:NAME`` finds the new
process, ``pid:N`` waits for N to come back. While nothing is resolved the
reading is ``UNKNOWN_READING`` (the limiter then does not shed on CPU).

How ``process:NAME`` matches (``find_process``), in order:

1. ``/proc/PID/comm`` equals NAME (the kernel truncates comm to 15 bytes);
2. argv[0] or argv[1], whole or its basename, equals NAME (``nginx``,
   ``/usr/sbin/nginx``, ``python app.py`` by ``app.py``);
3. the module after ``-m`` among the interpreter's leading options equals
   NAME: ``python3 -u -m http.server 8080`` is ``process:http.server``
   (also ``-mhttp.server``).

``cmdline:REGEX`` matches a Python regular expression (``re.search``) against
the command line with its arguments joined by single spaces. Either way the
sidecar's own pid is never matched, and of several matches the top-most,
oldest process wins.

Never a silent wrong number: when the target's cgroup cannot be read (no
ptrace access to ``/proc/PID/root`` as another UID, the process gone, the
counters unreadable), the reading is ``UNKNOWN_READING``, never the host's
CPU count; ``signal_ok`` is False, ``last_error`` says why, and one ERROR log
line per distinct failure names the remedy.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from flowctl.cpu.parse import parse_pid_stat_fields
from flowctl.errors import ParseError
from flowctl.periodic import Periodic
from flowctl.signal import UNKNOWN_READING, BandwidthSignal, CfsBandwidth, CpuReading

__all__ = [
    "WatchTarget",
    "WatchedSignal",
    "find_cmdline",
    "find_process",
    "parse_watch",
    "process_start_ticks",
    "run_module",
]

# What a user who sees an unreadable target must do (logged, and shown in /debug/limiter).
REMEDY = (
    "run the sidecar with the app's UID (in Kubernetes: one runAsUser for both containers) "
    "or give it CAP_SYS_PTRACE; with shareProcessNamespace the app's processes must be visible"
)

log = logging.getLogger("sidecar.watch")


@dataclass(frozen=True, slots=True)
class WatchTarget:
    """``kind`` is "self" | "pid" | "process" | "cmdline" | "cgroup"; ``value`` the pid, name, regex or path."""

    kind: str
    value: str = ""

    def __str__(self) -> str:
        return self.kind if self.kind == "self" else f"{self.kind}:{self.value}"


def parse_watch(text: str) -> WatchTarget:
    """Parse ``self | pid:N | process:NAME | cmdline:REGEX | cgroup:PATH``; ValueError says what is wrong."""
    t = text.strip()
    if t == "self":
        return WatchTarget("self")
    kind, sep, value = t.partition(":")
    if not sep or not value:
        raise ValueError(f"expected self, pid:N, process:NAME, cmdline:REGEX or cgroup:PATH, got {text!r}")
    if kind == "pid":
        if not value.isdigit() or int(value) <= 0:
            raise ValueError(f"pid must be a positive integer, got {value!r}")
        return WatchTarget("pid", str(int(value)))
    if kind == "process":
        if "/" in value and not value.startswith("/"):
            raise ValueError(f"process name must be a name or an absolute path, got {value!r}")
        return WatchTarget("process", value)
    if kind == "cmdline":
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"cmdline regex {value!r} does not compile: {e}") from None
        return WatchTarget("cmdline", value)
    if kind == "cgroup":
        if not value.startswith("/"):
            raise ValueError(f"cgroup path must be absolute, got {value!r}")
        return WatchTarget("cgroup", value)
    raise ValueError(f"unknown watch kind {kind!r} (self, pid, process, cmdline, cgroup)")


def _stat_field(pid: int, proc_root: str, index: int) -> int | None:
    """An integer field of /proc/PID/stat (``parse_pid_stat_fields`` index), None if unreadable."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            return int(parse_pid_stat_fields(f.read())[index])
    except (OSError, IndexError, ValueError, ParseError):
        return None


def process_start_ticks(pid: int, proc_root: str = "/proc") -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if the process is gone."""
    return _stat_field(pid, proc_root, 19)


def _ppid(pid: int, proc_root: str) -> int | None:
    return _stat_field(pid, proc_root, 1)


def _argv(pid: int, proc_root: str) -> list[str] | None:
    try:
        with open(f"{proc_root}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")] if raw else []


def run_module(argv: list[str]) -> str | None:
    """The module of ``python [options] -m MODULE ...`` (``-mMODULE`` too), else None.

    Only the options before the first non-option argument count: ``python app.py -m x`` runs app.py.
    """
    for i, a in enumerate(argv[1:], start=1):
        if a == "-m":
            return argv[i + 1] if i + 1 < len(argv) else None
        if a.startswith("-m") and not a.startswith("--"):
            return a[2:]
        if not a.startswith("-") or a in ("-", "--"):
            return None
        if a in ("-W", "-X"):  # options that take a separate value
            return run_module(argv[:1] + argv[i + 2 :]) if i + 1 < len(argv) else None
    return None


def _matches(pid: int, name: str, proc_root: str) -> bool:
    try:
        with open(f"{proc_root}/{pid}/comm", "rb") as f:
            comm = f.read().rstrip(b"\n").decode(errors="replace")
    except OSError:
        return False
    if comm == name:  # comm is truncated to 15 bytes; longer names match through cmdline
        return True
    argv = _argv(pid, proc_root)
    if not argv:
        return False
    for a in argv[:2]:  # the program, or the script of an interpreter ("python app.py")
        if a and (a == name or os.path.basename(a) == name):
            return True
    return run_module(argv) == name


def _cmdline_matches(pid: int, pattern: re.Pattern[str], proc_root: str) -> bool:
    argv = _argv(pid, proc_root)
    return bool(argv) and pattern.search(" ".join(argv or ())) is not None


def find_process(name: str, *, proc_root: str = "/proc", exclude: frozenset[int] | None = None) -> int | None:
    """The pid of the top-most, oldest process named ``name`` (the rules are in the module docstring).

    ``name`` matches comm exactly, the basename (or full path) of argv[0] or
    argv[1], or the module after ``-m``. The sidecar's own pid is excluded.
    """
    return _find(lambda p: _matches(p, name, proc_root), proc_root, exclude)


def find_cmdline(regex: str, *, proc_root: str = "/proc", exclude: frozenset[int] | None = None) -> int | None:
    """The pid of the top-most, oldest process whose space-joined argv ``re.search``-matches ``regex``."""
    pattern = re.compile(regex)
    return _find(lambda p: _cmdline_matches(p, pattern, proc_root), proc_root, exclude)


def _find(match: Callable[[int], bool], proc_root: str, exclude: frozenset[int] | None) -> int | None:
    exclude = frozenset({os.getpid()}) if exclude is None else exclude
    try:
        pids = [int(d) for d in os.listdir(proc_root) if d.isdigit()]
    except OSError:
        return None
    found = [p for p in pids if p not in exclude and match(p)]
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
    ``interval_s`` and re-checks the target every ``recheck_s``. ``signal_ok``
    is True only while the target's cgroup is being read; otherwise
    ``last_error`` and ``remedy`` say why and what to do, and the reading is
    ``UNKNOWN_READING``.
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
        self._samples = 0  # since the current resolution
        self.resolutions = 0
        self.signal_ok = False
        self.last_error: str | None = None
        self.remedy: str | None = None
        self._logged: str | None = None  # the failure last logged (each distinct failure is logged once)
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

    def bandwidth(self) -> CfsBandwidth | None:
        """The CFS bandwidth of the target's group as the configured view sees it (None: the view has
        none, e.g. ``--view host``, or the target is not being read)."""
        sampler = self._sampler
        return sampler.bandwidth() if self.signal_ok and isinstance(sampler, BandwidthSignal) else None

    def describe(self) -> dict[str, Any]:
        """JSON-able state for /debug/limiter."""
        return {
            "target": str(self.target),
            "view": self.view,
            "pid": self.pid,
            "resolved": self._sampler is not None,
            "signal_ok": self.signal_ok,
            "resolutions": self.resolutions,
            "last_error": self.last_error,
            "remedy": self.remedy,
        }

    # -- health ---------------------------------------------------------------------------------

    def _fail(self, msg: str, remedy: str) -> None:
        """The signal is not being read: unknown reading, state for the outside, one loud log line."""
        self.signal_ok = False
        self.last_error = msg
        self.remedy = remedy
        self.reading = UNKNOWN_READING
        if msg != self._logged:
            self._logged = msg
            log.error(
                "watch %s: cannot read the watched cgroup, so the limiter does NOT shed on CPU: %s. Remedy: %s",
                self.target, msg, remedy,
            )  # fmt: skip

    def _ok(self) -> None:
        if self._logged is not None:
            log.warning("watch %s: the watched cgroup is readable again (pid %s)", self.target, self.pid)
        self._logged = None
        self.signal_ok = True
        self.last_error = None
        self.remedy = None

    def _access_error(self, pid: int) -> str | None:
        """Why ``pid``'s cgroup files cannot be reached through /proc/PID/root (EACCES/EPERM), or None."""
        if pid == os.getpid():
            return None
        path = f"{self._proc_root}/{pid}/root/"
        try:
            os.stat(path)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                return f"pid {pid}: {path}: {os.strerror(e.errno)} (uid {os.geteuid()} may not ptrace-read it)"
        return None

    def _not_found_remedy(self) -> str:
        if self.target.kind == "cgroup":
            return "check the --watch cgroup:PATH directory"
        return (
            "start the app, or fix --watch (process:NAME matches comm, argv[0]/argv[1] or the module after -m; "
            "cmdline:REGEX searches the command line); in a Pod set shareProcessNamespace: true"
        )

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
        if k == "cmdline":
            return find_cmdline(self.target.value, proc_root=self._proc_root)
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
                denied = self._access_error(pid)
                if denied is not None:
                    self._fail(denied, REMEDY)
                    return False
                sampler = self._factory("self" if self.target.kind == "self" else pid, None)
        except Exception as e:  # noqa: BLE001 - unresolvable now; retried every recheck_s
            self._fail(f"{type(e).__name__}: {e}", self._not_found_remedy())
            return False
        self._sampler = sampler
        self.pid = pid
        self._start_ticks = process_start_ticks(pid, self._proc_root) if pid is not None else None
        self._samples = 0
        self.resolutions += 1
        log.info("watch %s: resolved (pid %s)", self.target, pid)
        return True

    def _read_failure(self, reading: CpuReading) -> str | None:
        """The sampler's errors when its usage counters could not be read (after its first sample)."""
        if reading.usage_cores is not None or self._samples < 2:
            return None
        errors = getattr(self._sampler, "errors", None)
        found = errors() if callable(errors) else []
        return "; ".join(str(e) for e in found[:3]) if found else None

    def sample(self, now: float | None = None) -> CpuReading:
        """Take one sample from the current sampler (re-resolving first when due)."""
        now = self._clock() if now is None else now
        if self._sampler is None or now >= self._next_check:
            self._next_check = now + self._recheck_s
            self.check()
        if self._sampler is None:
            return self.reading
        try:
            reading = self._sampler.sample()
        except Exception as e:  # noqa: BLE001 - the process may vanish between two reads
            msg = f"{type(e).__name__}: {e}"
            self._drop(msg)
            self._fail(msg, self._not_found_remedy())
            return self.reading
        self._samples += 1
        failure = self._read_failure(reading)
        if failure is not None:
            denied = "Permission denied" in failure or "Operation not permitted" in failure
            self._fail(failure, REMEDY if denied else self._not_found_remedy())
            return self.reading
        self.reading = reading
        self._ok()
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
