"""lxcfs views: detection and reading of cpuinfo, cpu/online, stat, meminfo and loadavg.

lxcfs serves per-container copies of /proc files, computed for the process
that reads them. It is found, in this order: an explicit directory, the
``FLOWCTL_LXCFS_DIR`` environment variable, ``fuse.lxcfs`` mounts over /proc
files (inside a container: "overlay"), or a ``fuse.lxcfs`` mount directory
(on a host, e.g. /var/lib/lxcfs). Each read opens the file afresh (lxcfs
caches per open file). A dead mount fails with ENOTCONN: that, like any other
problem, gives None plus a reason, never an exception.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from flowctl.cpu.host import parse_stat_seconds
from flowctl.cpu.mounts import read_file, read_mounts, under_root
from flowctl.cpu.parse import parse_cpu_list, parse_cpuinfo_count, parse_loadavg, parse_meminfo
from flowctl.errors import ParseError

__all__ = ["LXCFS_DIR_ENV", "LXCFS_VIEW_FILES", "LxcfsLocation", "LxcfsView", "find_lxcfs", "read_lxcfs_stat", "read_lxcfs_view"]

LXCFS_DIR_ENV = "FLOWCTL_LXCFS_DIR"
LXCFS_VIEW_FILES: tuple[str, ...] = ("/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/uptime", "/proc/loadavg",
                                     "/proc/diskstats", "/proc/swaps", "/sys/devices/system/cpu/online")
"""The files lxcfs serves per container, as the absolute paths they are bind-mounted over."""


@dataclass(frozen=True, slots=True)
class LxcfsLocation:
    """Where lxcfs views are read: ``base``/proc/... and ``base``/sys/...

    ``mode`` is "dir" (an lxcfs mount directory) or "overlay" (lxcfs files
    mounted over this root's own /proc files, listed in ``overlaid``).
    """

    mode: str
    base: str
    overlaid: tuple[str, ...] = ()

    def path(self, name: str) -> str:
        """The file to read for ``name`` (an absolute /proc or /sys path)."""
        return os.path.join(self.base, name.lstrip("/"))


def find_lxcfs(root: str = "/", dir: str | None = None, env: Mapping[str, str] | None = None,
               errors: list[str] | None = None) -> LxcfsLocation | None:
    """Locate lxcfs views, or None when there are none; never raises."""
    if dir:
        return LxcfsLocation("dir", dir)
    env_dir = (os.environ if env is None else env).get(LXCFS_DIR_ENV)
    if env_dir:
        return LxcfsLocation("dir", env_dir)
    mounts = [m for m in read_mounts(root, "self", errors if errors is not None else []) if m.fstype == "fuse.lxcfs"]
    overlaid = tuple(m.mount_point for m in mounts if m.mount_point in LXCFS_VIEW_FILES)
    if overlaid:
        return LxcfsLocation("overlay", root or "/", overlaid)
    if mounts:
        return LxcfsLocation("dir", under_root(root, mounts[0].mount_point))
    return None


@dataclass(frozen=True, slots=True)
class LxcfsView:
    """The numbers an lxcfs-aware, cgroup-blind tool sees (None: unreadable, see ``errors``)."""

    location: str
    cpus: int | None = None
    cpus_source: str | None = None
    cpuinfo_cpus: int | None = None
    online_cpus: int | None = None
    mem_total_bytes: int | None = None
    mem_available_bytes: int | None = None
    loadavg: tuple[float, float, float] | None = None
    errors: tuple[str, ...] = field(default_factory=tuple)


def _why(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc)) if isinstance(exc, OSError) else str(exc)


def read_lxcfs_view(loc: LxcfsLocation) -> LxcfsView:
    """Read cpu/online, cpuinfo, meminfo and loadavg through lxcfs; never raises.

    ``cpus`` is the online count (what glibc and ``os.cpu_count()`` use), else the cpuinfo count.
    """
    errors: list[str] = []
    online: int | None = None
    cpuinfo: int | None = None
    p = loc.path("/sys/devices/system/cpu/online")
    try:
        cpus = parse_cpu_list(read_file(p))
        online = len(cpus) if cpus else None
    except (OSError, ParseError) as exc:
        errors.append(f"{p}: {_why(exc)}")
    p = loc.path("/proc/cpuinfo")
    try:
        cpuinfo = parse_cpuinfo_count(read_file(p))
    except (OSError, ParseError) as exc:
        errors.append(f"{p}: {_why(exc)}")
    mem_total = mem_avail = None
    p = loc.path("/proc/meminfo")
    try:
        info = parse_meminfo(read_file(p))
        mem_total, mem_avail = info.get("MemTotal"), info.get("MemAvailable")
    except (OSError, ParseError) as exc:
        errors.append(f"{p}: {_why(exc)}")
    load: tuple[float, float, float] | None = None
    p = loc.path("/proc/loadavg")
    try:
        load = parse_loadavg(read_file(p))
    except (OSError, ParseError) as exc:
        errors.append(f"{p}: {_why(exc)}")
    cpus_n, src = (online, "cpu/online") if online is not None else (cpuinfo, "cpuinfo" if cpuinfo else None)
    return LxcfsView(location=loc.base, cpus=cpus_n, cpus_source=src, cpuinfo_cpus=cpuinfo, online_cpus=online,
                     mem_total_bytes=mem_total, mem_available_bytes=mem_avail, loadavg=load, errors=tuple(errors))


def read_lxcfs_stat(loc: LxcfsLocation, hz: int) -> tuple[tuple[float, float] | None, str | None]:
    """``((busy_s, total_s), None)`` from lxcfs's /proc/stat, or ``(None, reason)``."""
    p = loc.path("/proc/stat")
    try:
        return parse_stat_seconds(read_file(p), hz), None
    except (OSError, ParseError) as exc:
        return None, f"{p}: {_why(exc)}"
