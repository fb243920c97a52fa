"""The host view: the numbers a cgroup-blind tool sees (/proc/stat, CPU count, /proc/meminfo).

Inside a container this is the wrong number on purpose: ``flowctl inspect``
shows it next to the cgroup truth. /proc/stat is in USER_HZ ticks, converted
with ``os.sysconf('SC_CLK_TCK')`` (never a hard-coded 100). Nothing raises.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from flowctl.cpu.mounts import read_file, read_mounts
from flowctl.cpu.parse import parse_cpu_list, parse_cpuinfo_count, parse_meminfo, parse_proc_stat_cpu
from flowctl.errors import ParseError

__all__ = ["HostInfo", "clock_ticks_per_s", "is_lxcfs_proc", "parse_stat_seconds", "read_host_cpus", "read_host_info"]


def clock_ticks_per_s() -> int:
    """USER_HZ from ``os.sysconf('SC_CLK_TCK')`` (100 only if sysconf cannot say)."""
    try:
        hz = os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100
    return hz if hz > 0 else 100


def read_host_cpus(root: str, errors: list[str]) -> tuple[int | None, str | None]:
    """Online CPU count from ROOT/sys/devices/system/cpu/online, else ROOT/proc/cpuinfo; with its source."""
    online = os.path.join(root, "sys", "devices", "system", "cpu", "online")
    try:
        cpus = parse_cpu_list(read_file(online))
        if cpus:
            return len(cpus), online
        errors.append(f"{online}: empty")
    except (OSError, ParseError) as exc:
        errors.append(f"{online}: {getattr(exc, 'strerror', None) or exc}")
    cpuinfo = os.path.join(root, "proc", "cpuinfo")
    try:
        return parse_cpuinfo_count(read_file(cpuinfo)), cpuinfo
    except (OSError, ParseError) as exc:
        errors.append(f"{cpuinfo}: {getattr(exc, 'strerror', None) or exc}")
    if root in ("", "/"):
        n = os.cpu_count()
        if n:
            return n, "os.cpu_count()"
    return None, None


def is_lxcfs_proc(root: str, path: str = "/proc/stat", errors: list[str] | None = None) -> bool:
    """True when ``path`` is itself a fuse.lxcfs mount in ROOT/proc/self/mountinfo."""
    mounts = read_mounts(root, "self", errors if errors is not None else [])
    return any(m.mount_point == path and m.fstype == "fuse.lxcfs" for m in mounts)


@dataclass(frozen=True, slots=True)
class HostInfo:
    """What a cgroup-blind tool reads: CPU count, total memory, and whether /proc/stat is lxcfs."""

    cpus: int | None
    cpus_source: str | None
    mem_total_bytes: int | None
    virtualized: bool
    errors: tuple[str, ...] = field(default_factory=tuple)


def read_host_info(root: str = "/") -> HostInfo:
    """The host's CPU count and MemTotal under ``root``; never raises."""
    errors: list[str] = []
    cpus, src = read_host_cpus(root, errors)
    meminfo = os.path.join(root, "proc", "meminfo")
    mem: int | None = None
    try:
        mem = parse_meminfo(read_file(meminfo)).get("MemTotal")
    except (OSError, ParseError) as exc:
        errors.append(f"{meminfo}: {getattr(exc, 'strerror', None) or exc}")
    virt = is_lxcfs_proc(root)
    return HostInfo(cpus=cpus, cpus_source=src, mem_total_bytes=mem, virtualized=virt, errors=tuple(errors))


def parse_stat_seconds(data: bytes, hz: int) -> tuple[float, float]:
    """(busy_s, total_s) of the aggregate cpu line; ParseError on bad text."""
    t = parse_proc_stat_cpu(data)
    return t.busy_ticks / hz, t.total_ticks / hz
