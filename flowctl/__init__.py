"""flowctl: container-aware adaptive rate limiting.

Public names are re-exported here; everything else is private to its module.
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
