"""The hot gate: is the service saturated now? CPU signal against the policy's thresholds, plus
non-bypass triggers.

The limiter sheds only while engaged (hot, or in its cool-off); this module
answers whether it is hot. ``HotGate`` judges each new reading once
(``observe``) against the ``Policy`` and polls non-bypass triggers.

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

from flowctl.limiter.policy import Policy
from flowctl.limiter.triggers import Trigger
from flowctl.signal import CpuReading, CpuSignal

__all__ = ["Hot", "HotGate", "clearly_cool", "cpu_value"]

_log = logging.getLogger("flowctl.limiter")

_UNKNOWN_CPU_WARN_AFTER_S = 5.0

Hot = tuple[str, str, float | None, float | None]
"""What fired: ``(trigger, signal_name, value, threshold)``."""


def cpu_value(r: CpuReading) -> float | None:
    """The reading's utilization compared with the threshold: the higher of fast and smoothed."""
    fast = r.utilization
    slow = r.utilization_smoothed
    return fast if slow is None or (fast is not None and fast >= slow) else slow


def clearly_cool(policy: Policy, r: CpuReading, *, settled: bool = False) -> bool:
    """The reading is well under the threshold (see ``Policy.cool_fraction``): a cool-off that began
    on a spike need not run its course. ``settled``: the smoothed value must be well under it too
    (while the period gate paces, one 100 ms reading can dip: the Limiter and the haproxy engine
    both pass it then)."""
    fast, slow = r.utilization, r.utilization_smoothed
    cool = policy.cool_fraction * policy.cpu_threshold
    if fast is None or fast >= cool:
        return False
    return slow is None or slow < (cool if settled else policy.cpu_threshold)


class HotGate:
    """Judges each new reading of ``signal`` against the ``Policy`` (``observe``) and polls triggers.

    ``hot`` is the verdict on the last observed reading (None = not hot); ``seen`` that reading.
    """

    def __init__(self, signal: CpuSignal, policy: Policy, created_at: float) -> None:
        self._created_at = created_at
        self._warned_unknown_cpu = False
        self.triggers: tuple[Trigger, ...] = ()
        self.signal = signal
        self.policy = policy

    @property
    def signal(self) -> CpuSignal:
        return self._signal

    @signal.setter
    def signal(self, signal: CpuSignal) -> None:
        self._signal = signal
        self.signal_name = signal.name  # read once, when set
        self._forget()

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, value: Policy) -> None:
        self._policy = value
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
        self.busy = True  # the group looks busy enough to shed (see ``Policy.busy_fraction``); unknown: True

    def set_triggers(self, triggers: tuple[Trigger, ...]) -> None:
        self.triggers = triggers

    def observe(self, r: CpuReading, queued: bool = False) -> Hot | None:
        """Judge reading ``r`` (call once per new reading); sets and returns ``hot``. ``queued``:
        the in-flight ceiling or a bypass trigger (the event loop's lag) shed since the reading
        before, so one fast reading over the threshold is enough (two independent signals agree:
        the CPU is busy and work queues)."""
        self.seen = r
        th = self._policy
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
        self._track_busy(slow)
        hot: Hot | None = None
        if self._streak >= th.hot_samples or (queued and self._streak):
            hot = ("cpu", self.signal_name, fast, limit)
        elif slow is not None and slow >= limit:
            hot = ("cpu", self.signal_name, slow, limit)
        else:
            hot = next(iter(self._optional_hot(r)), None)
        self.hot = hot
        return hot

    def _track_busy(self, slow: float | None) -> None:
        """``busy``: the smoothed utilization is at least ``busy_fraction * cpu_threshold`` (True while
        unknown)."""
        th = self._policy
        self.busy = slow is None or slow >= th.busy_fraction * th.cpu_threshold - 1e-12

    def _optional_hot(self, r: CpuReading) -> list[Hot]:
        """The optional signals (throttled, then pressure) at or over their thresholds in ``r``."""
        th = self._policy
        hot: list[Hot] = []
        tt, pt = th.throttled_threshold, th.pressure_threshold
        if tt is not None and r.throttled_ratio is not None and r.throttled_ratio >= tt:
            hot.append(("throttled", self.signal_name, r.throttled_ratio, tt))
        if pt is not None and r.pressure_ratio is not None and r.pressure_ratio >= pt:
            hot.append(("pressure", self.signal_name, r.pressure_ratio, pt))
        return hot

    def clearly_cool(self, r: CpuReading, *, settled: bool = False) -> bool:
        """``clearly_cool`` under this gate's policy."""
        return clearly_cool(self._policy, r, settled=settled)

    def trigger_hot(self, now: float) -> Hot | None:
        """The first non-bypass trigger firing at ``now``, or None."""
        for t in self.triggers:
            v = t.check(now)
            if v is not None and v >= t.threshold:
                return (t.name, t.name, v, t.threshold)
        return None

    def every_hot(self, now: float) -> list[str]:
        """Every signal that is hot, by trigger name, as of the last observed reading (for snapshots;
        triggers polled)."""
        hot = []
        if self.hot is not None and self.hot[0] == "cpu":
            hot.append("cpu")
        if self.seen is not None:
            hot.extend(h[0] for h in self._optional_hot(self.seen))
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
