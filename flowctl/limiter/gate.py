"""The hot gate: is the service saturated now? CPU signal against thresholds, plus non-bypass triggers.

The limiter sheds only while hot (or in its cool-off); this module answers
whether it is hot. ``Thresholds`` is the frozen configuration; ``HotGate``
judges each new reading once (``observe``) and polls non-bypass triggers.

One spike is not saturation. The CPU is hot when the smoothed utilization
(EMA, tau 1 s) reaches the threshold, or when the fast one (the last sampler
interval, 100 ms) reaches it on ``hot_samples`` readings in a row, or on one
reading when the in-flight ceiling or a bypass trigger (loop lag) shed since
the reading before (work queued while the CPU was busy: the onset of an
overload, not a spike). Measured
here before this rule: at 0.9x capacity with the container at 40% of its
quota, single 100 ms samples over 0.8 started 1 s cool-offs that shed 26-28%
of healthy traffic (Kratos' issue #59 in another form).
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
    - ``hot_samples``: consecutive fast readings at or over ``cpu_threshold`` that make
      the CPU hot (1 = any single reading, the old rule; the smoothed signal counts at once).
    - ``cool_fraction``: a reading whose fast utilization is under ``cool_fraction *
      cpu_threshold`` (0.6 at the defaults) and whose smoothed one is under the threshold is
      clearly cool: it ends a cool-off early. 0 = the cool-off always runs its course.
    """

    cpu_threshold: float = 0.8
    throttled_threshold: float | None = None
    pressure_threshold: float | None = None
    cpu_gate: bool = True
    hot_samples: int = 2
    cool_fraction: float = 0.75

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
        if not (isinstance(self.cool_fraction, (int, float)) and 0 <= self.cool_fraction < 1):
            raise ConfigError(f"cool_fraction must be in [0, 1), got {self.cool_fraction!r}")
        if not (isinstance(self.hot_samples, int) and self.hot_samples >= 1):
            raise ConfigError(f"hot_samples must be an integer >= 1, got {self.hot_samples!r}")


def cpu_value(r: CpuReading) -> float | None:
    """The reading's utilization compared with the threshold: the higher of fast and smoothed."""
    fast = r.utilization
    slow = r.utilization_smoothed
    return fast if slow is None or (fast is not None and fast >= slow) else slow


class HotGate:
    """Judges each new reading of ``signal`` against ``Thresholds`` (``observe``) and polls triggers.

    ``hot`` is the verdict on the last observed reading (None = not hot); ``seen`` that reading.
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
        self._forget()

    @property
    def thresholds(self) -> Thresholds:
        return self._thresholds

    @thresholds.setter
    def thresholds(self, value: Thresholds) -> None:
        self._thresholds = value
        self._forget()

    def _forget(self) -> None:
        """Judge the next reading afresh (the signal or the configuration changed)."""
        self.seen: CpuReading | None = None
        self.hot: Hot | None = None
        self._streak = 0
        self._streak_at = -math.inf
        self._streak_seq = -1
        self._min_gap_s = math.inf
        self.consecutive = False

    def set_triggers(self, triggers: tuple[Trigger, ...]) -> None:
        self.triggers = triggers

    def observe(self, r: CpuReading, queued: bool = False) -> Hot | None:
        """Judge reading ``r`` (call once per new reading); sets and returns ``hot``. ``queued``:
        the in-flight ceiling or a bypass trigger (the event loop's lag) shed since the reading
        before, so one fast reading over the threshold is enough (two independent signals agree:
        the CPU is busy and work queues)."""
        self.seen = r
        th = self._thresholds
        limit = th.cpu_threshold
        fast = r.utilization
        # The streak counts consecutive readings over the threshold: by ``seq`` when the signal
        # numbers its readings, else by time (a gap over 1.5x the shortest seen breaks it).
        prev_seq, prev_at = self._streak_seq, self._streak_at
        gap = r.at - prev_at
        if r.seq:
            consecutive = r.seq == prev_seq + 1
        else:  # until a gap is known (two readings seen), nothing counts as in a row
            consecutive = 0 < gap <= 1.5 * self._min_gap_s < math.inf
            if 0 < gap < self._min_gap_s and prev_at > -math.inf:
                self._min_gap_s = gap
        self.consecutive = consecutive  # this reading directly follows the last one observed
        if fast is not None and fast >= limit:
            self._streak = self._streak + 1 if consecutive else 1
        else:
            self._streak = 0
        self._streak_at = r.at
        self._streak_seq = r.seq
        slow = r.utilization_smoothed
        hot: Hot | None = None
        if self._streak >= th.hot_samples or (queued and self._streak):
            hot = ("cpu", self.signal_name, fast, limit)
        elif slow is not None and slow >= limit:
            hot = ("cpu", self.signal_name, slow, limit)
        else:
            hot = next(iter(self._optional_hot(r)), None)
        self.hot = hot
        return hot

    def _optional_hot(self, r: CpuReading) -> list[Hot]:
        """The optional signals (throttled, then pressure) at or over their thresholds in ``r``."""
        th = self._thresholds
        hot: list[Hot] = []
        tt, pt = th.throttled_threshold, th.pressure_threshold
        if tt is not None and r.throttled_ratio is not None and r.throttled_ratio >= tt:
            hot.append(("throttled", self.signal_name, r.throttled_ratio, tt))
        if pt is not None and r.pressure_ratio is not None and r.pressure_ratio >= pt:
            hot.append(("pressure", self.signal_name, r.pressure_ratio, pt))
        return hot

    def clearly_cool(self, r: CpuReading, *, settled: bool = False) -> bool:
        """The reading is well under the threshold (see ``Thresholds.cool_fraction``): a cool-off
        that began on a spike need not run its course. ``settled``: the smoothed value must be
        well under it too (while the period gate paces, one 100 ms reading can dip)."""
        th = self._thresholds
        fast, slow = r.utilization, r.utilization_smoothed
        cool = th.cool_fraction * th.cpu_threshold
        if fast is None or fast >= cool:
            return False
        return slow is None or slow < (cool if settled else th.cpu_threshold)

    def trigger_hot(self, now: float) -> Hot | None:
        """The first non-bypass trigger firing at ``now``, or None."""
        for t in self.triggers:
            v = t.check(now)
            if v is not None and v >= t.threshold:
                return (t.name, t.name, v, t.threshold)
        return None

    def every_hot(self, now: float) -> list[str]:
        """Every signal that is hot now, by trigger name (for snapshots; triggers polled)."""
        r = self._signal.reading
        hot = []
        if self.seen is r and self.hot is not None and self.hot[0] == "cpu":
            hot.append("cpu")
        hot.extend(h[0] for h in self._optional_hot(r))
        for t in self.triggers:
            v = t.check(now)
            if v is not None and v >= t.threshold:
                hot.append(t.name)
        return hot

    def warn_unknown_cpu(self, now: float) -> None:
        """Warn once when the CPU signal still has no reading a while after start."""
        if self._signal.reading.utilization is not None or self._warned_unknown_cpu:
            return
        if now - self._created_at >= _UNKNOWN_CPU_WARN_AFTER_S:
            self._warned_unknown_cpu = True
            _log.warning(
                "flowctl limiter: CPU signal %r has no reading %.0f s after start while in-flight exceeds "
                "the limit; CPU counts as not hot (is the sampler started?)",
                self.signal_name,
                now - self._created_at,
            )
