"""Validation of what a limited workload asks for: name, CPUs, memory size, cpuset list.

Every function here is pure and raises ``ConfigError`` with a one-line message
naming the option, so the CLI can print it as is.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass

from flowctl.cpu.parse import format_cpu_list, parse_cpu_list
from flowctl.errors import ConfigError, ParseError

__all__ = [
    "CFS_PERIOD_US",
    "MIN_MEMORY_BYTES",
    "WorkloadSpec",
    "default_name",
    "format_cpuset",
    "parse_cpus",
    "parse_cpuset",
    "parse_size",
    "quota_us_for",
    "validate_name",
]

CFS_PERIOD_US = 100_000
"""CFS period we write (the kernel default, 100 ms)."""

_MIN_QUOTA_US = 1_000  # the kernel refuses a CFS quota below 1 ms
MIN_MEMORY_BYTES = 1 << 20
"""Smallest memory limit accepted (1 MiB); below that nothing but the wrapper fits."""

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_SIZE_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[kKmMgGtT]?)(?:i?[bB])?")
_UNIT_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def validate_name(name: str) -> str:
    """Return ``name`` if it is one safe path component (letters, digits, ``_.-``, no leading dot)."""
    if not _NAME_RE.fullmatch(name) or name in {".", ".."}:
        raise ConfigError(
            f"invalid --name {name!r}: use 1-100 letters, digits, '_', '.', '-' "
            "(one path component, not starting with '.' or '-')"
        )
    # Control files live next to groups: a group named like one ("cpu.shares") would be confusing.
    if name.startswith(("cgroup.", "cpu.", "cpuacct.", "cpuset.", "memory.", "notify_on_release", "tasks")):
        raise ConfigError(f"invalid --name {name!r}: it looks like a cgroup control file")
    return name


def default_name() -> str:
    """A fresh unique group name, ``flowctl-run-<8 hex>``."""
    return f"flowctl-run-{uuid.uuid4().hex[:8]}"


def parse_cpus(value: str | float) -> float:
    """Parse a CPU budget in cores (``0.5``, ``"1.5"``); must give a CFS quota of at least 1 ms."""
    try:
        cores = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid --cpus {value!r}: expected a number of cores such as 0.5") from None
    if not math.isfinite(cores) or cores <= 0:
        raise ConfigError(f"invalid --cpus {value!r}: must be a positive number of cores")
    if quota_us_for(cores) < _MIN_QUOTA_US:
        raise ConfigError(f"invalid --cpus {value!r}: the smallest CFS quota is 0.01 CPU")
    if cores > 100_000:
        raise ConfigError(f"invalid --cpus {value!r}: too large")
    return cores


def quota_us_for(cores: float, period_us: int = CFS_PERIOD_US) -> int:
    """CFS quota in µs for ``cores`` per ``period_us``."""
    return int(round(cores * period_us))


def parse_size(value: str | int) -> int:
    """Parse a memory size: bytes, or a number with k/m/g/t (binary units: ``256M`` = 256 MiB)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = _SIZE_RE.fullmatch(str(value).strip())
        if m is None:
            raise ConfigError(f"invalid --memory {value!r}: expected a size such as 268435456, 256M, 1.5G")
        size = int(float(m["num"]) * (1 << _UNIT_SHIFT[m["unit"].lower()]))
    if size < MIN_MEMORY_BYTES:
        raise ConfigError(f"invalid --memory {value!r}: must be at least 1M")
    if size >= 1 << 62:
        raise ConfigError(f"invalid --memory {value!r}: too large")
    return size


def parse_cpuset(value: str) -> frozenset[int]:
    """Parse a kernel CPU list (``0``, ``0-1``, ``0,2-3``) into a non-empty set of CPU numbers."""
    try:
        cpus = parse_cpu_list(value)
    except ParseError as exc:
        raise ConfigError(f"invalid --cpuset {value!r}: expected a CPU list such as 0 or 0-1,3 ({exc})") from None
    if not cpus:
        raise ConfigError(f"invalid --cpuset {value!r}: expected a CPU list such as 0 or 0-1,3")
    return cpus


def format_cpuset(cpus: frozenset[int] | set[int]) -> str:
    """Format CPU numbers as a kernel CPU list (``{0,1,3}`` -> ``"0-1,3"``)."""
    return format_cpu_list(cpus)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """A validated request for a limited group. ``None`` means "no limit of that kind"."""

    name: str
    cpus: float | None = None
    memory_bytes: int | None = None
    cpuset: frozenset[int] | None = None

    @classmethod
    def build(
        cls,
        *,
        name: str | None = None,
        cpus: str | float | None = None,
        memory: str | int | None = None,
        cpuset: str | frozenset[int] | set[int] | None = None,
    ) -> WorkloadSpec:
        """Validate raw option values (strings from the CLI or numbers from code)."""
        cpuset_set: frozenset[int] | None
        if cpuset is None:
            cpuset_set = None
        elif isinstance(cpuset, str):
            cpuset_set = parse_cpuset(cpuset)
        else:
            cpuset_set = frozenset(cpuset)
            if not cpuset_set or any(not isinstance(c, int) or c < 0 for c in cpuset_set):
                raise ConfigError(f"invalid cpuset {sorted(cpuset_set)!r}: expected non-negative CPU numbers")
        return cls(
            name=validate_name(name) if name is not None else default_name(),
            cpus=parse_cpus(cpus) if cpus is not None else None,
            memory_bytes=parse_size(memory) if memory is not None else None,
            cpuset=cpuset_set,
        )
