"""Every exception flowctl raises on purpose.

Rejection of a request is *not* an exception: ``Limiter.acquire`` returns a
value. These are for real errors: bad configuration, a system we cannot read
or change, a workload we cannot start::

    FlowctlError
     ├── ConfigError          an option or config value is invalid (names the key)
     ├── DataPlaneError       the sidecar's HAProxy child cannot start, or its admin socket fails
     ├── ParseError           a kernel or lxcfs file's text does not parse
     ├── CgroupError          the cgroup filesystem cannot be read or written
     │    └── ControllerMissingError   a needed controller is not mounted/enabled
     ├── LxcfsError           lxcfs is not installed, will not start, or is dead
     ├── QuotaStoreError      the quota store (Redis) did not answer in time or failed
     └── WorkloadError        a limited workload cannot be launched or cleaned up
"""

from __future__ import annotations

__all__ = [
    "CgroupError",
    "ConfigError",
    "ControllerMissingError",
    "DataPlaneError",
    "FlowctlError",
    "LxcfsError",
    "ParseError",
    "QuotaStoreError",
    "WorkloadError",
]


class FlowctlError(Exception):
    """Base of every error flowctl raises deliberately."""


class ConfigError(FlowctlError, ValueError):
    """An option or configuration value is invalid; the message names the key."""


class DataPlaneError(FlowctlError):
    """The sidecar's data plane (the HAProxy child) cannot start, died, or its runtime API failed."""


class ParseError(FlowctlError, ValueError):
    """The text of a kernel, cgroup or lxcfs file does not have the expected form."""


class CgroupError(FlowctlError, OSError):
    """The cgroup filesystem cannot be read or written as needed."""


class ControllerMissingError(CgroupError):
    """A cgroup controller we need (cpu, cpuacct, cpuset, memory) is not available."""


class LxcfsError(FlowctlError):
    """lxcfs is not installed, could not be started, or its mount is dead."""


class QuotaStoreError(FlowctlError):
    """The quota store (Redis) did not answer within its timeout, or answered with an error."""


class WorkloadError(FlowctlError):
    """A cgroup-limited workload could not be launched, signalled or cleaned up."""
