"""The group's CPU time per completed request, learned from CPU readings and completion counts.

``cpu_per_request_s`` is the CPU the group spent over consecutive readings
divided by the requests completed in them (the cost of shedding included when
the limiter runs inside the group), smoothed with time constant ``tau_s``.
``limit_cores / cpu_per_request_s`` is then what the group can complete per
second at its quota: its capacity in container CPU truth, known at any load
(unlike a measured peak throughput, which only reaches capacity under overload).

Pure: time and measurements are passed in.
"""

from __future__ import annotations

import math

__all__ = ["CpuCost"]

_MIN_COMPLETIONS = 4  # completions per cost sample: fewer is noise
_MIN_SPAN_S = 0.05
_MAX_SPAN_S = 2.0  # a longer interval between readings is a gap, not a sample


class CpuCost:
    """CPU seconds per completed request (``cpu_per_request_s``, None until learned)."""

    __slots__ = ("tau_s", "cpu_per_request_s", "_obs_at", "_obs_done", "_acc_cpu_s", "_acc_done", "_acc_s")

    def __init__(self, tau_s: float = 0.5) -> None:
        self.tau_s = float(tau_s)
        self.cpu_per_request_s: float | None = None
        self._obs_at: float | None = None
        self._obs_done = 0
        self._acc_cpu_s = 0.0
        self._acc_done = 0
        self._acc_s = 0.0

    def observe(
        self, at: float, usage_cores: float | None, completed: int, *, consecutive: bool = True, learn: bool = True
    ) -> bool:
        """One reading taken at ``at`` (``usage_cores`` over the interval since the reading before)
        and the completions so far. ``consecutive`` False: readings in between were not observed,
        so this one's usage does not cover the completions since the last. ``learn`` False: the
        interval is a sample but not learned from (requests were shed in it: their CPU, when the
        limiter runs in the group, is not the cost of a completion). Returns whether the reading
        counted as a sample interval (a baseline, a gap or an unknown usage do not)."""
        prev_at, prev_done = self._obs_at, self._obs_done
        if usage_cores is None:  # an unknown reading starts nothing: the next one is a baseline
            self._obs_at = None
            return False
        self._obs_at, self._obs_done = at, completed
        if prev_at is None or not (0 < at - prev_at <= _MAX_SPAN_S) or not consecutive:
            return False
        if not learn:
            self._reset_acc()
            return True
        span = at - prev_at
        self._acc_cpu_s += usage_cores * span
        self._acc_done += completed - prev_done
        self._acc_s += span
        if self._acc_done >= _MIN_COMPLETIONS and self._acc_s >= _MIN_SPAN_S:
            sample = self._acc_cpu_s / self._acc_done
            old = self.cpu_per_request_s
            if old is None:
                self.cpu_per_request_s = sample
            else:
                alpha = 1.0 - math.exp(-self._acc_s / self.tau_s)
                self.cpu_per_request_s = old + alpha * (sample - old)
            self._reset_acc()
        elif self._acc_s > 5 * self.tau_s:  # too few completions to learn from: forget
            self._reset_acc()
        return True

    def _reset_acc(self) -> None:
        self._acc_cpu_s = 0.0
        self._acc_done = 0
        self._acc_s = 0.0

    def capacity_per_s(self, limit_cores: float | None) -> float | None:
        """Requests per second the group completes at ``limit_cores`` (None: cost or limit unknown)."""
        cost = self.cpu_per_request_s
        return limit_cores / cost if cost and limit_cores else None
