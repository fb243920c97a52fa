"""What a program inside a limited group sees: CPU counts and MemTotal, with or without lxcfs.

``await probe_inside(cpus=0.5, memory_bytes="256M", lxcfs=True)`` launches a tiny
shell script in a fresh group and reports ``getconf _NPROCESSORS_ONLN``,
Python's ``os.cpu_count()``, the processors in /proc/cpuinfo, MemTotal from
/proc/meminfo and ``nproc`` (which counts the affinity mask: lxcfs does not
change it).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any

from flowctl.errors import WorkloadError
from flowctl.workload.process import launch

__all__ = ["InsideView", "parse_probe_output", "probe_inside", "PROBE_SCRIPT"]

PROBE_SCRIPT = r"""
echo "getconf=$(getconf _NPROCESSORS_ONLN 2>/dev/null)"
echo "cpu_count=$("$1" -c 'import os; print(os.cpu_count())' 2>/dev/null)"
echo "cpuinfo=$(grep -c '^processor' /proc/cpuinfo 2>/dev/null)"
echo "memtotal_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)"
echo "nproc=$(nproc 2>/dev/null)"
"""


@dataclass(frozen=True, slots=True)
class InsideView:
    """Numbers a program inside the group reads; None when a tool was missing or failed."""

    lxcfs: bool
    getconf_nprocessors_onln: int | None
    os_cpu_count: int | None
    cpuinfo_processors: int | None
    memtotal_kb: int | None
    nproc: int | None


def parse_probe_output(text: str, *, lxcfs: bool) -> InsideView:
    """Parse the ``key=value`` lines printed by ``PROBE_SCRIPT``."""
    values: dict[str, int | None] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = int(value) if value.strip().isdigit() else None
    return InsideView(
        lxcfs=lxcfs,
        getconf_nprocessors_onln=values.get("getconf"),
        os_cpu_count=values.get("cpu_count"),
        cpuinfo_processors=values.get("cpuinfo"),
        memtotal_kb=values.get("memtotal_kb"),
        nproc=values.get("nproc"),
    )


async def probe_inside(
    cpus: float | str | None = 0.5, memory_bytes: int | str | None = None, lxcfs: bool = False, **options: Any
) -> InsideView:
    """Launch the probe in a fresh limited group and return what it saw."""
    async with launch(
        ["sh", "-c", PROBE_SCRIPT, "probe", sys.executable],
        cpus=cpus, memory_bytes=memory_bytes, lxcfs=lxcfs, stdout=asyncio.subprocess.PIPE, **options,
    ) as w:
        stream = w.process.stdout
        assert stream is not None
        out = await stream.read()
        status = await w.wait()
    if status != 0:
        raise WorkloadError(f"probe exited with status {status}")
    return parse_probe_output(out.decode(errors="replace"), lxcfs=lxcfs)
