"""Launch commands inside CPU/memory-limited cgroups, optionally with lxcfs /proc views.

``async with launch(["python3", "app.py"], cpus=0.5, memory_bytes="256M", lxcfs=True) as w:``
gives a ``LimitedProcess`` (``pid``, ``cgroup_paths``, ``set_cpus()``, ``await wait()``); leaving
the block stops the command and removes the group (and any lxcfs it started).
"""

from __future__ import annotations

from flowctl.workload.process import LimitedProcess, launch
from flowctl.workload.spec import WorkloadSpec, parse_cpus, parse_cpuset, parse_size

__all__ = ["LimitedProcess", "WorkloadSpec", "launch", "parse_cpus", "parse_cpuset", "parse_size"]
