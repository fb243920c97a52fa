"""cgroup v1 and v2 readers: CPU quota, cpuset, memory (slow path) and counters (hot path).

Nothing here raises on bad input: a missing, unreadable or malformed file
gives None and a reason in ``errors``. Units are converted at the edge:
seconds and cores out, whatever the file's unit (v1 ns, v2 µs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from flowctl.cpu.mounts import UNIFIED, CgroupDir, Discovery, read_file
from flowctl.cpu.parse import (
    format_cpu_list,
    parse_cpu_list,
    parse_cpu_max,
    parse_flat_keyed,
    parse_int,
    parse_memory_value,
    parse_psi,
    parse_v1_quota,
)
from flowctl.errors import ParseError

__all__ = ["CgroupCounterReader", "CgroupLimits", "KeptFile", "read_cgroup_limits", "pressure_candidates"]


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """Limits of one cgroup as read now (None: no limit, or unknown when ``errors`` says so)."""

    version: int | None = None
    path: str | None = None
    quota_cores: float | None = None
    quota_source: str | None = None
    cpuset: frozenset[int] | None = None
    cpuset_source: str | None = None
    memory_limit_bytes: int | None = None
    memory_limit_source: str | None = None
    memory_usage_bytes: int | None = None
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cpuset_text(self) -> str | None:
        """The cpuset in kernel list syntax (``"0-1"``), or None."""
        return None if self.cpuset is None else format_cpu_list(self.cpuset)


def _try_read(path: str, errors: list[str], *, missing_ok: bool = False) -> bytes | None:
    try:
        return read_file(path)
    except FileNotFoundError:
        if not missing_ok:
            errors.append(f"{path}: missing")
        return None
    except OSError as exc:
        errors.append(f"{path}: {exc.strerror or exc}")
        return None


def _quota(d: CgroupDir, errors: list[str]) -> tuple[float | None, str | None]:
    """Minimum quota/period over the leaf and its ancestors, with the file it came from."""
    best: float | None = None
    source: str | None = None
    for i, cur in enumerate(d.ancestors()):
        leaf = i == 0
        try:
            if d.version == 1:
                qpath = os.path.join(cur, "cpu.cfs_quota_us")
                q = _try_read(qpath, errors, missing_ok=not leaf)
                p = _try_read(os.path.join(cur, "cpu.cfs_period_us"), errors, missing_ok=not leaf or q is None)
                if q is None or p is None:
                    continue
                cores = parse_v1_quota(q, p)
            else:
                # cpu.max is absent in the root and where the cpu controller is not enabled: no limit there.
                qpath = os.path.join(cur, "cpu.max")
                data = _try_read(qpath, errors, missing_ok=True)
                if data is None:
                    continue
                cores = parse_cpu_max(data)
        except ParseError as exc:
            errors.append(f"{qpath}: {exc}")
            continue
        if cores is not None and (best is None or cores < best):
            best, source = cores, qpath
    return best, source


def _cpuset(d: CgroupDir, errors: list[str]) -> tuple[frozenset[int] | None, str | None]:
    names = ("cpuset.cpus.effective", "cpuset.cpus") if d.version == 2 else ("cpuset.effective_cpus", "cpuset.cpus")
    dirs = d.ancestors() if d.version == 2 else [d.path]
    for cur in dirs:
        for name in names:
            path = os.path.join(cur, name)
            data = _try_read(path, errors, missing_ok=True)
            if data is None:
                continue
            try:
                cpus = parse_cpu_list(data)
            except ParseError as exc:
                errors.append(f"{path}: {exc}")
                continue
            if cpus:  # v2 cpuset.cpus may be empty (= inherit); keep looking
                return cpus, path
    return None, None


def _memory(d: CgroupDir, errors: list[str]) -> tuple[int | None, str | None, int | None]:
    name = "memory.limit_in_bytes" if d.version == 1 else "memory.max"
    best: int | None = None
    source: str | None = None
    for i, cur in enumerate(d.ancestors()):
        path = os.path.join(cur, name)
        data = _try_read(path, errors, missing_ok=i > 0 or d.version == 2)
        if data is None:
            continue
        try:
            value = parse_memory_value(data, name)
        except ParseError as exc:
            errors.append(f"{path}: {exc}")
            continue
        if value is not None and (best is None or value < best):
            best, source = value, path
    usage_name = "memory.usage_in_bytes" if d.version == 1 else "memory.current"
    usage_path = os.path.join(d.path, usage_name)
    usage: int | None = None
    data = _try_read(usage_path, errors, missing_ok=d.version == 2)
    if data is not None:
        try:
            usage = parse_int(data, usage_name)
        except ParseError as exc:
            errors.append(f"{usage_path}: {exc}")
    return best, source, usage


def read_cgroup_limits(disc: Discovery) -> CgroupLimits:
    """Quota (min over ancestors), cpuset and memory limit of a discovered cgroup; never raises."""
    errors: list[str] = []
    cpu = disc.dirs.get("cpu")
    quota, quota_src = _quota(cpu, errors) if cpu else (None, None)
    cs = disc.dirs.get("cpuset")
    cpuset, cpuset_src = _cpuset(cs, errors) if cs else (None, None)
    mem = disc.dirs.get("memory")
    mem_limit, mem_src, mem_usage = _memory(mem, errors) if mem else (None, None, None)
    return CgroupLimits(
        version=disc.version,
        path=cpu.path if cpu else None,
        quota_cores=quota,
        quota_source=quota_src,
        cpuset=cpuset,
        cpuset_source=cpuset_src,
        memory_limit_bytes=mem_limit,
        memory_limit_source=mem_src,
        memory_usage_bytes=mem_usage,
        errors=tuple(errors),
    )


class KeptFile:
    """A file kept open and re-read with ``os.pread`` (about 1 µs on cgroupfs).

    ``read()`` returns the bytes or None; on failure the fd is closed, the
    reason is kept in ``error`` and the next ``read()`` tries to reopen.
    """

    __slots__ = ("path", "size", "fd", "error")

    def __init__(self, path: str, size: int = 4096) -> None:
        self.path = path
        self.size = size
        self.fd: int | None = None
        self.error: str | None = None

    def read(self) -> bytes | None:
        fd = self.fd
        try:
            if fd is None:
                fd = self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            data = os.pread(fd, self.size, 0)
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            self.close()
            return None
        self.error = None
        return data

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def _stat_fast(data: bytes) -> dict[bytes, int] | None:
    """``key value`` lines as a dict (hot path); None when the text is not well-formed."""
    fields = data.split()
    if not fields or len(fields) % 2:
        return None
    try:
        return dict(zip(fields[0::2], map(int, fields[1::2])))
    except ValueError:
        return None


def _psi_some_total_fast(data: bytes) -> int | None:
    """``total`` of the ``some`` line of a pressure file (hot path); None when not well-formed."""
    if not data.startswith(b"some "):
        return None
    line = data.split(b"\n", 1)[0]
    _, sep, total = line.rpartition(b" total=")
    if not sep:
        return None
    try:
        value = int(total)
    except ValueError:
        return None
    return value if value >= 0 else None


def _strict_error(parser: Callable[..., object], data: bytes, *args: str) -> str:
    """The strict parser's reason for rejecting ``data`` (the fast path only says "bad")."""
    try:
        parser(data, *args)
    except ParseError as exc:
        return str(exc)
    return "malformed"


def pressure_candidates(disc: Discovery) -> list[str]:
    """The cgroup's own CPU pressure files, best first (never the system-wide one).

    The cpu dir's ``cpu.pressure`` (v2, or v1 kernels with cgroup1 PSI), then the
    unified dir of a hybrid host when the process is below its root. System-wide
    ``/proc/pressure/cpu`` is the host's pressure, not the container's: the host view reads it.
    """
    out: list[str] = []
    cpu = disc.dirs.get("cpu")
    if cpu is not None:
        out.append(os.path.join(cpu.path, "cpu.pressure"))
    uni = disc.dirs.get(UNIFIED)
    if uni is not None and uni is not cpu and uni.path != uni.base:
        out.append(os.path.join(uni.path, "cpu.pressure"))
    return out


class CgroupCounterReader:
    """Hot-path counters of one cgroup from kept-open files: CPU usage, throttling, PSI.

    ``read()`` returns ``(usage_s, periods, throttled_periods, throttled_s, pressure_s)``,
    each None when unavailable (the reason is in ``errors()``). ``pressure_s`` comes only
    from the cgroup's own ``cpu.pressure``: without one (normal on cgroup v1) it is None,
    not an error, and never the host's system-wide PSI.
    """

    def __init__(self, disc: Discovery, *, pressure: bool = True) -> None:
        self.version = disc.version
        cpu = disc.dirs.get("cpu")
        acct = disc.dirs.get("cpuacct")
        self._usage: KeptFile | None = None
        self._stat: KeptFile | None = None
        if self.version == 2 and cpu is not None:
            self._stat = KeptFile(os.path.join(cpu.path, "cpu.stat"))
        elif self.version == 1:
            if acct is not None:
                self._usage = KeptFile(os.path.join(acct.path, "cpuacct.usage"), 64)
            elif cpu is not None and os.path.exists(os.path.join(cpu.path, "cpuacct.usage")):
                self._usage = KeptFile(os.path.join(cpu.path, "cpuacct.usage"), 64)
            if cpu is not None:
                self._stat = KeptFile(os.path.join(cpu.path, "cpu.stat"))
        self._pressure: KeptFile | None = None
        for path in pressure_candidates(disc) if pressure else ():
            if os.path.exists(path):
                self._pressure = KeptFile(path, 256)
                break
        self._errors: list[str] = []
        if self._usage is None and self.version == 1:
            self._errors.append("cgroup v1: no cpuacct.usage (cpuacct controller not found): usage unavailable")

    @property
    def pressure_source(self) -> str | None:
        """The cgroup's own pressure file in use, or None."""
        return self._pressure.path if self._pressure else None

    def errors(self) -> list[str]:
        """Reasons some counters are None right now."""
        out = list(self._errors)
        for f in (self._usage, self._stat, self._pressure):
            if f is not None and f.error:
                out.append(f.error)
        return out

    def read(self) -> tuple[float | None, int | None, int | None, float | None, float | None]:
        usage_s: float | None = None
        periods: int | None = None
        throttled: int | None = None
        throttled_s: float | None = None
        pressure_s: float | None = None
        stat: dict[bytes, int] | None = None
        if self._stat is not None:
            data = self._stat.read()
            if data is not None:
                stat = _stat_fast(data)
                if stat is None:
                    self._stat.error = f"{self._stat.path}: {_strict_error(parse_flat_keyed, data, 'cpu.stat')}"
        if self.version == 1:
            if self._usage is not None:
                data = self._usage.read()
                if data is not None:
                    try:
                        usage_s = int(data) / 1e9
                    except ValueError:
                        self._usage.error = f"{self._usage.path}: {_strict_error(parse_int, data, 'cpuacct.usage')}"
            if stat is not None:
                periods = stat.get(b"nr_periods")
                throttled = stat.get(b"nr_throttled")
                t_ns = stat.get(b"throttled_time")
                throttled_s = None if t_ns is None else t_ns / 1e9
        elif stat is not None:
            u_us = stat.get(b"usage_usec")
            usage_s = None if u_us is None else u_us / 1e6
            periods = stat.get(b"nr_periods")
            throttled = stat.get(b"nr_throttled")
            t_us = stat.get(b"throttled_usec")
            throttled_s = None if t_us is None else t_us / 1e6
        if self._pressure is not None:
            data = self._pressure.read()
            if data is not None:
                total_us = _psi_some_total_fast(data)
                if total_us is None:
                    self._pressure.error = f"{self._pressure.path}: {_strict_error(parse_psi, data)}"
                else:
                    pressure_s = total_us / 1e6
        return usage_s, periods, throttled, throttled_s, pressure_s

    def close(self) -> None:
        for f in (self._usage, self._stat, self._pressure):
            if f is not None:
                f.close()
