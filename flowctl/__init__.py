"""flowctl: container-aware adaptive rate limiting.

Public names are re-exported here; everything else is private to its module.
"""

from __future__ import annotations

from flowctl.errors import (
    CgroupError,
    ConfigError,
    ControllerMissingError,
    FlowctlError,
    LxcfsError,
    ParseError,
    WorkloadError,
)
from flowctl.signal import UNKNOWN_READING, CpuReading, CpuSignal, StaticSignal

__version__ = "0.1.0"

__all__ = [
    "CgroupError",
    "ConfigError",
    "ControllerMissingError",
    "CpuReading",
    "CpuSignal",
    "FlowctlError",
    "LxcfsError",
    "ParseError",
    "StaticSignal",
    "UNKNOWN_READING",
    "WorkloadError",
]
