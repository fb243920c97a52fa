"""flowctl: container-aware adaptive rate limiting.

Public names are re-exported here; everything else is private to its module.
Importing ``flowctl`` imports the library below (readers, sampler, algorithms,
limiter); no module starts anything at import.

Module map, in the direction data flows (each uses only what is above it)::

    cpu/        readers of the CPU truth, pure functions of a root: mounts, cgroup (v1, v2),
                lxcfs, host; sources.py picks them; sampler.py + ema.py: the one clock
    signal.py   CpuSignal / CpuReading: the seam between readers and admission
    limit/      pure algorithms (window, bbr, fixed, gradient), ``make_algorithm``
    limiter/    admission: partitions, decisions, triggers, gate (hot or not), budget
                (CPU pacing), snapshot, core (Limiter)
    looplag.py  the event-loop lag trigger (sees the queue in front of a blocked loop)
    quota/      quotas across replicas: rules, GCRA in one Redis script, failure modes, metrics
    http.py     framework-neutral rejection parts and metrics page
    metrics.py  Prometheus collector over snapshots
    aiohttp.py  the aiohttp integration: setup(app)
    workload/   launching cgroup-limited workloads; commands/: the ``flowctl`` command
    periodic.py one asyncio task per background loop (sampler, sidecar probes)
    errors.py   the exception hierarchy

The sidecar (``sidecar/``) and the benchmarks (``bench/``) use this package,
never the other way round.
"""

from __future__ import annotations

from flowctl.cpu import Sampler, make_signal
from flowctl.errors import (
    CgroupError,
    ConfigError,
    ControllerMissingError,
    FlowctlError,
    LxcfsError,
    ParseError,
    WorkloadError,
)
from flowctl.limit.base import LimitAlgorithm, LimitStats
from flowctl.limit.bbr import Bbr
from flowctl.limit.fixed import FixedLimit
from flowctl.limit.gradient import Gradient
from flowctl.limiter import (
    DEFAULT_PRIORITIES,
    Decision,
    Limiter,
    LimiterSnapshot,
    PriorityClass,
    Reason,
    Rejection,
    Token,
    Trigger,
)
from flowctl.looplag import LoopLagMonitor
from flowctl.signal import UNKNOWN_READING, CpuReading, CpuSignal, StaticSignal

__version__ = "0.1.0"

__all__ = [
    "Bbr",
    "CgroupError",
    "ConfigError",
    "ControllerMissingError",
    "CpuReading",
    "CpuSignal",
    "DEFAULT_PRIORITIES",
    "Decision",
    "FixedLimit",
    "FlowctlError",
    "Gradient",
    "LimitAlgorithm",
    "LimitStats",
    "Limiter",
    "LimiterSnapshot",
    "LoopLagMonitor",
    "LxcfsError",
    "ParseError",
    "PriorityClass",
    "Reason",
    "Rejection",
    "Sampler",
    "StaticSignal",
    "Token",
    "Trigger",
    "UNKNOWN_READING",
    "WorkloadError",
    "make_signal",
]
