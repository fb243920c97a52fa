"""CPU sources: one per view ("container", "host", "lxcfs"), each read by a Sampler.

A source has two reads: ``read_limits()`` (slow path, re-run about once a
second so in-place resizes are seen) and ``read_counters()`` (hot path,
every sample; kept-open files and ``os.pread``). Neither raises: unknown
values are None and the reasons are in ``Limits.errors`` / ``errors()``.

The container's effective CPU budget is
``min(host CPUs, affinity (live system only), cpuset, quota)`` and
``Limits.source`` names the one that won. When a value is unknown it simply
drops out of the minimum, so the fallback order is quota, then cpuset, then
affinity, then the host CPU count; with none of them the limit is None.

A source may also have ``bandwidth()`` (``BandwidthSource``): the CFS bandwidth
of the group its view reads, for the limiter's period gate. Only the container
view has one; the host view (no quota, no CFS period) and lxcfs return None.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from flowctl.cpu.bandwidth import BandwidthReader
from flowctl.cpu.cgroup import CgroupCounterReader, CgroupLimits, KeptFile, read_cgroup_limits
from flowctl.cpu.host import clock_ticks_per_s, parse_stat_seconds, read_host_cpus, read_host_info
from flowctl.cpu.lxcfs import LxcfsLocation, LxcfsView, find_lxcfs, read_lxcfs_stat, read_lxcfs_view
from flowctl.cpu.mounts import Discovery, discover, discover_path
from flowctl.cpu.parallelism import Parallelism, Usable, read_pids
from flowctl.cpu.parse import parse_psi
from flowctl.errors import ParseError

__all__ = [
    "BandwidthSource",
    "ContainerSource",
    "Counters",
    "CpuSource",
    "HostSource",
    "Limits",
    "LxcfsSource",
    "effective_cpus",
]

JsonValue = object


@dataclass(frozen=True, slots=True)
class Counters:
    """Cumulative counters at one instant (None: unavailable).

    ``usage_s``: CPU seconds used. ``total_s``: CPU seconds elapsed on all CPUs
    (host-style views only: utilization is then Δusage/Δtotal, as /proc/stat tools do).
    ``periods``/``throttled_periods``: CFS periods. ``throttled_s``: throttled time.
    ``pressure_s``: PSI ``some`` total of the view's own scope (the container view: the
    cgroup's ``cpu.pressure`` only; the host view: ``/proc/pressure/cpu``).
    ``generation``: which files the counters came from; it changes when the source
    re-discovers a different cgroup (or lxcfs mount), so a delta across it is meaningless.
    """

    usage_s: float | None = None
    total_s: float | None = None
    periods: int | None = None
    throttled_periods: int | None = None
    throttled_s: float | None = None
    pressure_s: float | None = None
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """The budget of a view: ``limit_cores`` (None: unknown), which input won, and details.

    ``usable_cores``: the part of it the group's processes can keep busy (the container view
    only: ``flowctl.cpu.parallelism``); None when nothing bounds them below the limit."""

    limit_cores: float | None
    source: str
    source_file: str | None = None
    errors: tuple[str, ...] = ()
    details: Mapping[str, JsonValue] = field(default_factory=dict)
    usable_cores: float | None = None  # what the group's processes can use (<= limit_cores); None: the limit
    usable_why: str | None = None  # why, in words ("one Python process")


class CpuSource(Protocol):
    """What a Sampler reads. ``name`` is the view name."""

    @property
    def name(self) -> str: ...

    def read_limits(self) -> Limits: ...

    def read_counters(self) -> Counters: ...

    def errors(self) -> list[str]: ...

    def close(self) -> None: ...


@runtime_checkable
class BandwidthSource(Protocol):
    """A source that says whether its view has a CFS bandwidth (``flowctl.signal.CfsBandwidth``)."""

    def bandwidth(self) -> BandwidthReader | None: ...


_PREFERENCE = ("quota", "cpuset", "affinity", "host")


def effective_cpus(*, host: float | None = None, affinity: float | None = None, cpuset: float | None = None,
                   quota: float | None = None) -> tuple[float | None, str]:
    """``(min of the known inputs, its name)``; ties go to the most specific (quota, cpuset, affinity, host)."""
    values = {"quota": quota, "cpuset": cpuset, "affinity": affinity, "host": host}
    best: float | None = None
    source = "none"
    for name in _PREFERENCE:
        v = values[name]
        if v is not None and v > 0 and (best is None or v < best):
            best, source = float(v), name
    return best, source


def _affinity(pid: int | str) -> int | None:
    try:
        return len(os.sched_getaffinity(0 if pid == "self" else int(pid)))
    except (OSError, ValueError, AttributeError):
        return None


class ContainerSource:
    """The cgroup truth for a process (``pid``, default this one) or a cgroup directory.

    ``root`` is the filesystem root everything is read under (a fixture tree in
    tests). Affinity counts only when reading the live system (``root == "/"``).
    """

    def __init__(self, root: str = "/", pid: int | str = "self", *, cgroup_path: str | None = None,
                 clock: Callable[[], float] = time.monotonic, parallelism: Parallelism | None = None) -> None:  # fmt: skip
        self.root = root or "/"
        self.pid = pid
        self.cgroup_path = cgroup_path
        self.clock = clock
        self.parallelism = Parallelism(self.root) if parallelism is None else parallelism
        self.discovery: Discovery | None = None
        self.cgroup: CgroupLimits | None = None
        self._reader: CgroupCounterReader | None = None
        self._bandwidth: BandwidthReader | None = None
        self._dirs_key: tuple[tuple[str, str], ...] | None = None
        self.generation = 0
        self._discovery_cache: dict[str, object] = {}

    @property
    def name(self) -> str:
        return "container"

    def _discover(self) -> Discovery:
        if self.cgroup_path is not None:
            return discover_path(self.cgroup_path, self.root)
        return discover(self.root, self.pid, self._discovery_cache)

    def read_limits(self) -> Limits:
        """Re-discover the cgroup (the process may have moved) and re-read its limits."""
        disc = self._discover()
        key = tuple(sorted((k, d.path) for k, d in disc.dirs.items()))
        if key != self._dirs_key:
            if self._dirs_key is not None:
                self.generation += 1  # another cgroup: its counters do not continue the old ones
            self._dirs_key = key
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            if self._bandwidth is not None:
                self._bandwidth.close()
                self._bandwidth = None
        if self._reader is None:
            self._reader = CgroupCounterReader(disc)
        else:
            # Same paths: still reopen (lazily) so a group removed and recreated under the same
            # name is followed even where the old fd keeps reading the removed file.
            self._reader.close()
            if self._bandwidth is not None:
                self._bandwidth.close()
        self.discovery = disc
        cg = read_cgroup_limits(disc)
        self.cgroup = cg
        errors = list(disc.errors) + list(cg.errors)  # copies: a cached Discovery is shared
        host_cpus, host_src = read_host_cpus(self.root, errors)
        affinity = _affinity(self.pid) if self.root == "/" else None
        cpuset_n = len(cg.cpuset) if cg.cpuset else None
        limit, source = effective_cpus(host=host_cpus, affinity=affinity, cpuset=cpuset_n, quota=cg.quota_cores)
        files = {"quota": cg.quota_source, "cpuset": cg.cpuset_source, "host": host_src,
                 "affinity": "sched_getaffinity", "none": None}
        details: dict[str, JsonValue] = {
            "version": cg.version,
            "path": cg.path,
            "dirs": {k: d.path for k, d in disc.dirs.items()},
            "quota_cores": cg.quota_cores,
            "quota_source": cg.quota_source,
            "cpuset": cg.cpuset_text,
            "cpuset_cpus": cpuset_n,
            "cpuset_source": cg.cpuset_source,
            "host_cpus": host_cpus,
            "host_cpus_source": host_src,
            "affinity_cpus": affinity,
            "memory_limit_bytes": cg.memory_limit_bytes,
            "memory_limit_source": cg.memory_limit_source,
            "memory_usage_bytes": cg.memory_usage_bytes,
            "pressure_source": self._reader.pressure_source,
            "pressure_scope": "cgroup" if self._reader.pressure_source else None,
        }
        usable = self._usable(disc)
        details["usable_cores"] = usable.cores
        details["usable_why"] = usable.why
        usable_cores = None if usable.cores is None or limit is None or usable.cores >= limit else usable.cores
        return Limits(limit_cores=limit, source=source, source_file=files.get(source), errors=tuple(errors),
                      details=details, usable_cores=usable_cores, usable_why=usable.why)

    def _usable(self, disc: Discovery) -> Usable:
        """The group's processes and the cores they can use (``flowctl.cpu.parallelism``)."""
        d = disc.dirs.get("cpu") or disc.dirs.get("cpuacct")
        pids = read_pids(os.path.join(d.path, "cgroup.procs")) if d is not None else None
        return self.parallelism.observe(pids, self.clock())

    def read_counters(self) -> Counters:
        if self._reader is None:
            self.read_limits()
        assert self._reader is not None
        usage_s, periods, throttled, throttled_s, pressure_s = self._reader.read()
        return Counters(usage_s, None, periods, throttled, throttled_s, pressure_s, self.generation)

    def bandwidth(self) -> BandwidthReader | None:
        """The CFS bandwidth of the discovered group (a new reader when the group changes), None
        before the first ``read_limits`` or without a cpu controller."""
        disc = self.discovery
        if disc is None or disc.dirs.get("cpu") is None:
            return None
        if self._bandwidth is None:
            own = self.pid == "self" and self.cgroup_path is None  # this process runs in the group it reads
            self._bandwidth = BandwidthReader(disc, own_group=own)
        return self._bandwidth

    def errors(self) -> list[str]:
        return self._reader.errors() if self._reader is not None else []

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._bandwidth is not None:
            self._bandwidth.close()


class HostSource:
    """The host /proc view under ``root``: what psutil, /proc/stat readers and ``os.cpu_count()`` see."""

    def __init__(self, root: str = "/") -> None:
        self.root = root or "/"
        self.hz = clock_ticks_per_s()
        self._stat = KeptFile(os.path.join(self.root, "proc", "stat"), 512)
        self._pressure = KeptFile(os.path.join(self.root, "proc", "pressure", "cpu"), 256)
        self._errors: list[str] = []

    @property
    def name(self) -> str:
        return "host"

    def read_limits(self) -> Limits:
        info = read_host_info(self.root)
        psi = self._pressure.path if os.path.exists(self._pressure.path) else None
        details: dict[str, JsonValue] = {
            "cpus": info.cpus,
            "cpus_source": info.cpus_source,
            "mem_total_bytes": info.mem_total_bytes,
            "virtualized": info.virtualized,
            "clock_ticks_per_s": self.hz,
            "pressure_source": psi,
            "pressure_scope": "system" if psi else None,
        }
        limit = float(info.cpus) if info.cpus else None
        return Limits(limit_cores=limit, source="host" if limit else "none", source_file=info.cpus_source,
                      errors=info.errors, details=details)

    def read_counters(self) -> Counters:
        self._errors = []
        usage_s = total_s = pressure_s = None
        data = self._stat.read()
        if data is not None:
            try:
                usage_s, total_s = parse_stat_seconds(data, self.hz)
            except ParseError as exc:
                self._errors.append(f"{self._stat.path}: {exc}")
        data = self._pressure.read()
        if data is not None:
            try:
                pressure_s = parse_psi(data)["some"].total_us / 1e6
            except ParseError as exc:
                self._errors.append(f"{self._pressure.path}: {exc}")
        return Counters(usage_s=usage_s, total_s=total_s, pressure_s=pressure_s)

    def bandwidth(self) -> None:
        """None: the host view has no quota and no CFS period."""
        return None

    def errors(self) -> list[str]:
        out = list(self._errors)
        for f in (self._stat, self._pressure):
            if f.error:
                out.append(f.error if f is self._stat else f"{f.error} (pressure unavailable)")
        return out

    def close(self) -> None:
        self._stat.close()
        self._pressure.close()


class LxcfsSource:
    """The lxcfs view (``dir``, ``$FLOWCTL_LXCFS_DIR``, or detected under ``root``).

    ``present`` is False when no lxcfs is found; readings are then unknown.
    A dead mount (ENOTCONN) gives None values and a reason, never an exception.
    """

    def __init__(self, dir: str | None = None, *, root: str = "/") -> None:
        self.dir = dir
        self.root = root or "/"
        self.hz = clock_ticks_per_s()
        self.location: LxcfsLocation | None = None
        self.view: LxcfsView | None = None
        self._error: str | None = None
        self.generation = 0

    @property
    def name(self) -> str:
        return "lxcfs"

    @property
    def present(self) -> bool:
        if self.location is None:
            self.location = find_lxcfs(self.root, self.dir)
        return self.location is not None

    def read_limits(self) -> Limits:
        errors: list[str] = []
        prev, self.location = self.location, find_lxcfs(self.root, self.dir, errors=errors)
        if prev is not None and self.location is not None and self.location != prev:
            self.generation += 1  # another lxcfs mount: its /proc/stat does not continue the old one
        if self.location is None:
            self.view = None
            return Limits(limit_cores=None, source="none", errors=("no lxcfs mount found",),
                          details={"present": False})
        view = self.view = read_lxcfs_view(self.location)
        details: dict[str, JsonValue] = {
            "present": True,
            "mode": self.location.mode,
            "location": self.location.base,
            "overlaid": list(self.location.overlaid),
            "cpus": view.cpus,
            "cpus_source": view.cpus_source,
            "cpuinfo_cpus": view.cpuinfo_cpus,
            "online_cpus": view.online_cpus,
            "mem_total_bytes": view.mem_total_bytes,
            "mem_available_bytes": view.mem_available_bytes,
            "loadavg": list(view.loadavg) if view.loadavg else None,
        }
        limit = float(view.cpus) if view.cpus else None
        return Limits(limit_cores=limit, source="lxcfs" if limit else "none",
                      source_file=self.location.path("/sys/devices/system/cpu/online") if view.online_cpus else
                      (self.location.path("/proc/cpuinfo") if view.cpuinfo_cpus else None),
                      errors=tuple(errors) + view.errors, details=details)

    def read_counters(self) -> Counters:
        if self.location is None:
            self._error = "no lxcfs mount found"
            return Counters()
        stat, self._error = read_lxcfs_stat(self.location, self.hz)
        if stat is None:
            return Counters()
        return Counters(usage_s=stat[0], total_s=stat[1], generation=self.generation)

    def bandwidth(self) -> None:
        """None: lxcfs's /proc shows whole CPUs, no CFS period."""
        return None

    def errors(self) -> list[str]:
        return [self._error] if self._error else []

    def close(self) -> None:
        pass


