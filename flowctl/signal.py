"""The seam between CPU readers and the limiter: a CPU signal and its reading.

A ``CpuSignal`` is anything with a ``name`` and a current ``reading``. The
Sampler (``flowctl.cpu.sampler``) is the live implementation; ``StaticSignal``
is the fixed or fake one for tests and benchmarks. Reading ``.reading`` must
be cheap (an attribute load): the limiter does it on every ``acquire``.

A signal that is also a ``BandwidthSignal`` says, through ``bandwidth()``,
whether its view has a CFS bandwidth (a quota per period) the limiter may pace
by. Every machine input of the limiter comes through these two: its reading
and its bandwidth. A view without one (the host's /proc, lxcfs) returns None,
and the limiter then reads no group's files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, TypedDict, Unpack, runtime_checkable

__all__ = ["UNKNOWN_READING", "BandwidthSignal", "CfsBandwidth", "CpuReading", "CpuSignal", "StaticSignal"]


@dataclass(frozen=True, slots=True)
class CpuReading:
    """One CPU observation. Ratios are fractions (normally 0..1); None means unknown.

    - ``at``: clock time (seconds) the reading was taken.
    - ``utilization``: fast signal, usage over the last interval / ``usable_cores``.
    - ``utilization_smoothed``: slow signal, EMA of ``utilization`` (see ``flowctl.cpu.ema``).
    - ``usage_cores``: CPU cores in use over the last interval.
    - ``limit_cores``: the effective CPU budget in cores (0.5 stays 0.5).
    - ``usable_cores``: the part of ``limit_cores`` the group's processes can keep busy (one
      Python process: 1 core, whatever the quota; ``flowctl.cpu.parallelism``); ``utilization``
      is measured against it. Equal to ``limit_cores`` when nothing bounds them lower.
    - ``throttled_ratio``: fraction of CFS periods throttled over the last interval.
    - ``pressure_ratio``: fraction of wall time some task waited for CPU (PSI ``some``).
    - ``seq``: the reading's number from its signal (1, 2, ...): consecutive readings differ
      by 1, so a consumer that skipped some can tell. 0 = not numbered.
    """

    at: float = 0.0
    utilization: float | None = None
    utilization_smoothed: float | None = None
    usage_cores: float | None = None
    limit_cores: float | None = None
    throttled_ratio: float | None = None
    pressure_ratio: float | None = None
    seq: int = 0
    usable_cores: float | None = None

    @property
    def cores(self) -> float | None:
        """The cores admission plans with: ``usable_cores``, else ``limit_cores``."""
        return self.usable_cores if self.usable_cores is not None else self.limit_cores


UNKNOWN_READING = CpuReading()


class ReadingFields(TypedDict, total=False):
    """Keyword fields of ``CpuReading``, for typed partial updates."""

    at: float
    utilization: float | None
    utilization_smoothed: float | None
    usage_cores: float | None
    limit_cores: float | None
    throttled_ratio: float | None
    pressure_ratio: float | None
    seq: int
    usable_cores: float | None


@runtime_checkable
class CpuSignal(Protocol):
    """A named source of CPU readings (container, host, lxcfs, static, ...)."""

    @property
    def name(self) -> str:
        """Short view name used in reasons and metric labels, e.g. ``"container"``."""
        ...

    @property
    def reading(self) -> CpuReading:
        """The latest reading; ``UNKNOWN_READING`` until the first rate is known."""
        ...


class CfsBandwidth(Protocol):
    """The CFS bandwidth of the group a view reads: its own quota and the counters of its periods."""

    @property
    def own_group(self) -> bool:
        """True when the group is the one this process runs in (its freezes stall this process)."""
        ...

    def quota(self) -> tuple[float, float] | None:
        """The group's own ``(quota_s, period_s)``, or None when it has no quota of its own."""
        ...

    def read(self) -> tuple[float, int, int, float | None] | None:
        """``(usage_s, nr_periods, nr_throttled, throttled_s)`` now, or None when unavailable."""
        ...


@runtime_checkable
class BandwidthSignal(CpuSignal, Protocol):
    """A CPU signal that also says whether its view has a CFS bandwidth to pace by."""

    def bandwidth(self) -> CfsBandwidth | None:
        """The bandwidth of the group the view reads now; None: the view has none (host, lxcfs)."""
        ...


class StaticSignal:
    """A CPU signal whose reading (and bandwidth, None by default) is set by hand: for tests, fakes
    and fixed-load runs."""

    __slots__ = ("_name", "reading", "_bandwidth")

    def __init__(self, name: str = "static", reading: CpuReading = UNKNOWN_READING, *,
                 bandwidth: CfsBandwidth | None = None, **fields: Unpack[ReadingFields]) -> None:  # fmt: skip
        self._name = name
        self.reading: CpuReading = replace(reading, **fields) if fields else reading
        self._bandwidth = bandwidth

    @property
    def name(self) -> str:
        return self._name

    def bandwidth(self) -> CfsBandwidth | None:
        return self._bandwidth

    def set(self, **fields: Unpack[ReadingFields]) -> None:
        """Publish a new reading: the current one with the given fields replaced (e.g.
        ``set(utilization=0.9)``) and the next ``seq`` unless ``seq`` is given."""
        fields.setdefault("seq", self.reading.seq + 1)
        self.reading = replace(self.reading, **fields)
