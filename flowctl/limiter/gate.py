"""The hot gate: is the service saturated now? CPU signal against thresholds, plus non-bypass triggers.

The limiter sheds only while hot (or in its cool-off) and over the limit; this
module answers the first half. ``Thresholds`` is the frozen configuration;
``HotGate`` evaluates it against the signal's current reading.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from flowctl.errors import ConfigError
from flowctl.limiter.triggers import Trigger
from flowctl.signal import CpuReading, CpuSignal

__all__ = ["Hot", "HotGate", "Thresholds", "cpu_value"]

_log = logging.getLogger("flowctl.limiter")

_UNKNOWN_CPU_WARN_AFTER_S = 5.0

Hot = tuple[str, str, float | None, float | None]
"""What fired: ``(trigger, signal_name, value, threshold)``."""


def _ratio(key: str, value: Any, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not (isinstance(value, (int, float)) and 0 < value and math.isfinite(value)):
        raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When the limiter is hot (ratios of the reading; None = that signal is off).

    - ``cpu_threshold``: utilization of the effective CPU limit (fast or smoothed, the higher).
    - ``throttled_threshold``: ``throttled_ratio`` (fraction of CFS periods throttled).
    - ``pressure_threshold``: ``pressure_ratio`` (PSI some).
    - ``cpu_gate``: False makes the limiter always hot: a plain concurrency limiter.
    """

    cpu_threshold: float = 0.8
    throttled_threshold: float | None = None
    pressure_threshold: float | None = None
    cpu_gate: bool = True

    def __post_init__(self) -> None:
        _ratio("cpu_threshold", self.cpu_threshold, allow_none=False)
        _ratio("throttled_threshold", self.throttled_threshold, allow_none=True)
        _ratio("pressure_threshold", self.pressure_threshold, allow_none=True)
        object.__setattr__(self, "cpu_threshold", float(self.cpu_threshold))
        for key in ("throttled_threshold", "pressure_threshold"):
            v = getattr(self, key)
            if v is not None:
                object.__setattr__(self, key, float(v))
        object.__setattr__(self, "cpu_gate", bool(self.cpu_gate))


def cpu_value(r: CpuReading) -> float | None:
    """The reading's utilization compared with the threshold: the higher of fast and smoothed."""
    fast = r.utilization
    slow = r.utilization_smoothed
    return fast if slow is None or (fast is not None and fast >= slow) else slow


class HotGate:
    """Evaluates ``Thresholds`` and non-bypass triggers against ``signal``'s current reading.

    ``cool_reading`` is the last reading found not hot with no trigger configured: until the
    signal publishes a new reading (or the configuration changes) it needs no re-evaluation.
    """

    def __init__(self, signal: CpuSignal, thresholds: Thresholds, created_at: float) -> None:
        self._created_at = created_at
        self._warned_unknown_cpu = False
        self.triggers: tuple[Trigger, ...] = ()
        self.signal = signal
        self.thresholds = thresholds

    @property
    def signal(self) -> CpuSignal:
        return self._signal

    @signal.setter
    def signal(self, signal: CpuSignal) -> None:
        self._signal = signal
        self.signal_name = signal.name  # read once, when set
        self.cool_reading: CpuReading | None = None

    @property
    def thresholds(self) -> Thresholds:
        return self._thresholds

    @thresholds.setter
    def thresholds(self, value: Thresholds) -> None:
        self._thresholds = value
        self.cool_reading = None

    def set_triggers(self, triggers: tuple[Trigger, ...]) -> None:
        self.triggers = triggers
        self.cool_reading = None

    def first_hot(self, now: float) -> Hot | None:
        """The first hot signal (ungated ``limit``, cpu, throttled, pressure, triggers), or None."""
        th = self._thresholds
        if not th.cpu_gate:
            return None  # the caller sheds with reason "limit"
        r = self._signal.reading
        value = cpu_value(r)
        if value is not None and value >= th.cpu_threshold:
            return ("cpu", self.signal_name, value, th.cpu_threshold)
        if value is None:
            self._warn_unknown_cpu(now)
        if value is None or self.triggers or th.throttled_threshold or th.pressure_threshold:
            hot = self._beyond_cpu(now, r, every=False)
            if hot:
                return hot[0]
        if value is not None and not self.triggers:
            self.cool_reading = r  # not hot until the reading or the config changes
        return None

    def every_hot(self, now: float) -> list[str]:
        """Every signal that is hot now, by trigger name (for snapshots; no warnings)."""
        r = self._signal.reading
        value = cpu_value(r)
        hot = ["cpu"] if value is not None and value >= self._thresholds.cpu_threshold else []
        hot.extend(h[0] for h in self._beyond_cpu(now, r, every=True))
        return hot

    def _beyond_cpu(self, now: float, r: CpuReading, *, every: bool) -> list[Hot]:
        """What besides CPU utilization is hot (throttled, pressure, non-bypass triggers), in that order;
        only the first unless ``every``."""
        hot: list[Hot] = []
        name = self.signal_name
        th = self._thresholds.throttled_threshold
        if th is not None and r.throttled_ratio is not None and r.throttled_ratio >= th:
            hot.append(("throttled", name, r.throttled_ratio, th))
            if not every:
                return hot
        pt = self._thresholds.pressure_threshold
        if pt is not None and r.pressure_ratio is not None and r.pressure_ratio >= pt:
            hot.append(("pressure", name, r.pressure_ratio, pt))
            if not every:
                return hot
        for t in self.triggers:
            v = t.check(now)
            if v is not None and v >= t.threshold:
                hot.append((t.name, t.name, v, t.threshold))
                if not every:
                    return hot
        return hot

    def _warn_unknown_cpu(self, now: float) -> None:
        """Warn once when the CPU signal still has no reading a while after start."""
        if not self._warned_unknown_cpu and now - self._created_at >= _UNKNOWN_CPU_WARN_AFTER_S:
            self._warned_unknown_cpu = True
            _log.warning(
                "flowctl limiter: CPU signal %r has no reading %.0f s after start while in-flight exceeds "
                "the limit; CPU counts as not hot (is the sampler started?)",
                self.signal_name,
                now - self._created_at,
            )
