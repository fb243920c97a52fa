"""Fixture trees of this hybrid host with its cpu and cpuset controllers switched to cgroup v2.

What tests/v2 (live, opt-in) reads on the real machine, written under a tmp ``root`` so the same
code paths run on every machine without root: the cgroup2 mount at /sys/fs/cgroup/unified carries
cpu and cpuset, while cpuacct, memory and the rest stay on v1. A process is given as
``proc/PID/{mountinfo,cgroup,stat}`` plus ``proc/PID/root``, a symlink to ``root`` (its mount
namespace is the host's), so another pid is read through ``/proc/PID/root`` as the sidecar does.
"""

from __future__ import annotations

import os
from pathlib import Path

UNIFIED = "sys/fs/cgroup/unified"
HOST_CPUS = 8
PSI_TOTAL_US = 123_456_789

_HOST_FILES = {
    "proc/stat": "cpu  10000 200 3000 80000 500 0 100 0 0 0\ncpu0 5000 100 1500 40000 250 0 50 0 0 0\n",
    "proc/meminfo": "MemTotal:       16384000 kB\nMemFree:         8000000 kB\nMemAvailable:   12000000 kB\n",
    "proc/cpuinfo": "".join(f"processor\t: {i}\n\n" for i in range(HOST_CPUS)),
    "proc/pressure/cpu": "some avg10=0.00 avg60=0.00 avg300=0.00 total=1000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    "sys/devices/system/cpu/online": f"0-{HOST_CPUS - 1}\n",
}
# Mounted after `scripts/cgroup2.sh on cpu cpuset`: the v1 cpu and cpuset hierarchies are gone.
_V1 = ("cpuacct", "memory", "pids", "name=systemd")
_MOUNTINFO = """\
20 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
21 20 0:21 / /proc rw,relatime - proc proc rw
22 20 0:22 / /sys rw,relatime - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 {root} /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def cpu_stat(usage_s: float = 7.0, periods: int = 400, throttled: int = 100, throttled_s: float = 3.0) -> str:
    """A v2 ``cpu.stat`` (microseconds) with these totals."""
    usage_us, throttled_us = round(usage_s * 1e6), round(throttled_s * 1e6)
    return (f"usage_usec {usage_us}\nuser_usec {usage_us - 1000}\nsystem_usec 1000\n"
            f"nr_periods {periods}\nnr_throttled {throttled}\nthrottled_usec {throttled_us}\n")  # fmt: skip


def cpu_pressure(some_total_us: int = PSI_TOTAL_US) -> str:
    """A ``cpu.pressure`` whose ``some`` line has this total (microseconds)."""
    return (f"some avg10=12.50 avg60=8.00 avg300=2.00 total={some_total_us}\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")  # fmt: skip


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def switched_host(root: Path, *, cpuset_effective: str = "0-1") -> Path:
    """Host files, the v1 roots that stay (cpuacct, memory: no limit) and the cgroup2 root with
    cpu and cpuset available; ``proc/self`` sits in the cgroup2 root. Returns the cgroup2 root."""
    for rel, text in _HOST_FILES.items():
        _write(root / rel, text)
    _write(root / "sys/fs/cgroup/cpuacct/cpuacct.usage", "900000000000\n")
    _write(root / "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    _write(root / "sys/fs/cgroup/memory/memory.usage_in_bytes", "104857600\n")
    unified = root / UNIFIED
    _write(unified / "cgroup.controllers", "cpuset cpu hugetlb\n")
    _write(unified / "cgroup.subtree_control", "\n")
    _write(unified / "cgroup.procs", "1\n")
    _write(unified / "cpuset.cpus.effective", cpuset_effective + "\n")  # the root's: groups inherit it
    _write(unified / "cpu.stat", cpu_stat(900.0, 0, 0, 0.0))
    _write(unified / "cpu.pressure", cpu_pressure(1000))
    process(root, "self", "/", pid_in_stat=4000)
    return unified


def group(root: Path, rel: str, *, cpu_max: str | None = "max 100000", stat: str | None = None,
          pressure: str | None = None) -> Path:
    """The v2 group ``rel`` (below the cgroup2 root; parents made as plain dirs) with its cpu files."""
    d = root / UNIFIED / rel.strip("/")
    _write(d / "cgroup.controllers", "cpu\n")
    _write(d / "cgroup.procs", "")
    if cpu_max is not None:
        _write(d / "cpu.max", cpu_max + "\n")
    _write(d / "cpu.stat", stat if stat is not None else cpu_stat())
    _write(d / "cpu.pressure", pressure if pressure is not None else cpu_pressure())
    return d


def process(root: Path, pid: int | str, cgroup: str, *, mount_root: str = "/", pid_in_stat: int | None = None) -> Path:
    """``proc/PID`` of a process in the v2 group ``cgroup`` (its v1 groups: the roots); returns
    the path its files are read through (``proc/PID/root``, or ``root`` itself for "self")."""
    d = root / "proc" / str(pid)
    lines = [f"{n}:{c}:/" for n, c in zip((2, 4, 8, 9), _V1)] + [f"0::{cgroup}"]
    _write(d / "cgroup", "\n".join(lines) + "\n")
    _write(d / "mountinfo", _MOUNTINFO.format(root=mount_root))
    n = pid_in_stat if pid_in_stat is not None else int(pid)
    fields = " ".join(["S", "1"] + ["0"] * 17 + ["1000"] + ["0"] * 10)  # starttime (field 22) 1000
    _write(d / "stat", f"{n} (burner) {fields}\n")
    if pid == "self":
        return root
    os.symlink(os.path.relpath(root, d), d / "root")
    return d / "root"
