"""Exponential moving average over irregular time steps, with a time constant.

``alpha = 1 - exp(-dt / tau_s)``: a step change reaches 63% of its size after
``tau_s`` seconds, 95% after ``3 * tau_s``, whatever the sampling interval.
(Kratos' fixed ``0.95`` decay at 500 ms sampling is tau ~ 9.7 s.)
"""

from __future__ import annotations

import math

from flowctl.errors import ConfigError

__all__ = ["Ema"]


class Ema:
    """EMA with time constant ``tau_s`` seconds; ``value`` is None until the first update.

    ``ConfigError`` when ``tau_s`` is not a positive finite number.
    """

    __slots__ = ("tau_s", "value", "_last_at")

    def __init__(self, tau_s: float) -> None:
        if not 0 < tau_s < math.inf:
            raise ConfigError(f"tau_s: must be > 0 and finite, got {tau_s!r}")
        self.tau_s = tau_s
        self.value: float | None = None
        self._last_at: float | None = None

    def update(self, sample: float, now: float) -> float:
        """Fold ``sample`` taken at ``now`` (seconds) into the average and return it."""
        if self.value is None or self._last_at is None:
            self.value = sample
        else:
            dt = max(0.0, now - self._last_at)
            alpha = 1.0 - math.exp(-dt / self.tau_s)
            self.value += alpha * (sample - self.value)
        self._last_at = now
        return self.value

    def reset(self) -> None:
        """Forget the history (e.g. after a counter reset)."""
        self.value = None
        self._last_at = None
