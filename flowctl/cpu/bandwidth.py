"""The CFS bandwidth of one cgroup, read fast: its own quota and period, and the counters of its periods.

``BandwidthReader.read()`` returns ``(usage_s, nr_periods, nr_throttled, throttled_s)`` from
kept-open files (``cpuacct.usage`` + ``cpu.stat`` on v1, ``cpu.stat`` on v2),
with ``update`` and ``allows`` 9 µs median on cgroup v1 here, so the limiter
reads at most every 0.5 ms. ``quota()`` returns the leaf
group's own ``(quota_s, period_s)`` per period, or None when the leaf has no
quota of its own: its ``nr_periods`` then do not count (the bandwidth timer
that counts them belongs to the group that holds the quota). ``own_group``
says whether the group is the reading process's own (its freezes stall the
reader). It implements ``flowctl.signal.CfsBandwidth``; the container view's
source hands it out (``ContainerSource.bandwidth``).
"""

from __future__ import annotations

import os

from flowctl.cpu.cgroup import CgroupCounterReader
from flowctl.cpu.mounts import Discovery, read_file
from flowctl.cpu.parse import decode, parse_int
from flowctl.errors import ParseError

__all__ = ["BandwidthReader"]


def _leaf_quota_s(version: int, path: str) -> tuple[float, float] | None:
    """``(quota_s, period_s)`` of the group at ``path`` itself (not its ancestors), or None."""
    try:
        if version == 1:
            quota = parse_int(read_file(os.path.join(path, "cpu.cfs_quota_us")), "cpu.cfs_quota_us")
            period = parse_int(read_file(os.path.join(path, "cpu.cfs_period_us")), "cpu.cfs_period_us")
        else:
            fields = decode(read_file(os.path.join(path, "cpu.max"))).split()
            if len(fields) != 2 or fields[0] == "max":
                return None
            quota, period = int(fields[0]), int(fields[1])
    except (OSError, ParseError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / 1e6, period / 1e6


class BandwidthReader:
    """Usage and period counters of a discovered cgroup, plus its own quota (see the module)."""

    def __init__(self, disc: Discovery, *, own_group: bool = False) -> None:
        self.own_group = own_group
        self.version = disc.version or 1
        cpu = disc.dirs.get("cpu")
        self.path = cpu.path if cpu is not None else None
        self._counters = CgroupCounterReader(disc, pressure=False)

    def quota(self) -> tuple[float, float] | None:
        """The leaf's own ``(quota_s, period_s)``: one open and read per file (tens of µs)."""
        return None if self.path is None else _leaf_quota_s(self.version, self.path)

    def read(self) -> tuple[float, int, int, float | None] | None:
        """``(usage_s, nr_periods, nr_throttled, throttled_s)`` now (``throttled_s``: the total time
        the group was frozen, None when the kernel does not say), or None when any other is unavailable."""
        usage_s, periods, throttled, throttled_s, _ = self._counters.read()
        if usage_s is None or periods is None or throttled is None:
            return None
        return usage_s, periods, throttled, throttled_s

    def close(self) -> None:
        self._counters.close()
