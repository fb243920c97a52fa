"""A latency-only gradient limit in the style of Netflix Gradient2 (a benchmark peer).

Per completed request with round trip ``rt_s`` (the short RTT):

- the long RTT is a sample-count EMA of ``rt_s`` (plain mean over the first
  ``warmup_samples``, then weight ``2 / (long_window + 1)``); when it exceeds
  twice the short RTT it is decayed by 5% so it can recover after a slow period;
- when in-flight is below half the limit the service is app-limited and the
  limit is left alone;
- otherwise ``gradient = clamp(tolerance * long / short, 0.5, 1.0)`` and
  ``new = limit * gradient + queue_size``, smoothed
  ``limit = limit * (1 - smoothing) + new * smoothing`` and clamped to
  ``[min_limit, max_limit]``.

No CPU signal: it only sees latency. Known weakness (kept on purpose, it is a
peer): under modest overload the long RTT follows the short one, the gradient
stays near 1 and the ``+ queue_size`` term grows the limit up to ``max_limit``.
"""

from __future__ import annotations

from flowctl.errors import ConfigError
from flowctl.limit.base import LimitStats

__all__ = ["Gradient"]

_MIN_RT_S = 1e-9  # a zero RT (fake clocks) must not divide by zero


class Gradient:
    """Gradient2-style limit driven by short vs long RTT."""

    __slots__ = (
        "limit",
        "min_limit",
        "max_limit",
        "tolerance",
        "smoothing",
        "queue_size",
        "warmup_samples",
        "_long_weight",
        "_long_rt_s",
        "_samples",
        "_min_rt_s",
    )

    name = "gradient"

    def __init__(
        self,
        *,
        initial_limit: float = 20.0,
        min_limit: float = 1.0,
        max_limit: float = 200.0,
        tolerance: float = 1.5,
        smoothing: float = 0.2,
        queue_size: float = 4.0,
        long_window: int = 600,
        warmup_samples: int = 10,
    ) -> None:
        if not 1 <= min_limit <= initial_limit <= max_limit:
            raise ConfigError("Gradient needs 1 <= min_limit <= initial_limit <= max_limit")
        if not 0 < smoothing <= 1:
            raise ConfigError(f"smoothing must be in (0, 1], got {smoothing!r}")
        if not tolerance >= 1:
            raise ConfigError(f"tolerance must be >= 1, got {tolerance!r}")
        if long_window < 1 or warmup_samples < 0:
            raise ConfigError("long_window must be >= 1 and warmup_samples >= 0")
        self.limit = float(initial_limit)
        self.min_limit = float(min_limit)
        self.max_limit = float(max_limit)
        self.tolerance = float(tolerance)
        self.smoothing = float(smoothing)
        self.queue_size = float(queue_size)
        self.warmup_samples = int(warmup_samples)
        self._long_weight = 2.0 / (long_window + 1)
        self._long_rt_s = 0.0
        self._samples = 0
        self._min_rt_s: float | None = None

    def max_inflight(self, now: float) -> float:
        return self.limit

    def on_sample(self, now: float, rt_s: float, inflight: int, dropped: bool) -> None:
        short = rt_s if rt_s > _MIN_RT_S else _MIN_RT_S
        if self._min_rt_s is None or short < self._min_rt_s:
            self._min_rt_s = short
        self._samples += 1
        if self._samples <= self.warmup_samples:
            self._long_rt_s += (short - self._long_rt_s) / self._samples
        else:
            self._long_rt_s += self._long_weight * (short - self._long_rt_s)
        long = self._long_rt_s
        if long > 2.0 * short:
            long = self._long_rt_s = long * 0.95
        limit = self.limit
        if inflight < limit / 2:
            return
        gradient = self.tolerance * long / short
        gradient = 0.5 if gradient < 0.5 else 1.0 if gradient > 1.0 else gradient
        new = limit * gradient + self.queue_size
        new = limit * (1.0 - self.smoothing) + new * self.smoothing
        self.limit = self.min_limit if new < self.min_limit else self.max_limit if new > self.max_limit else new

    def stats(self, now: float) -> LimitStats:
        return LimitStats(max_inflight=self.limit, min_rt_s=self._min_rt_s, warm=self._samples > 0)

    def __repr__(self) -> str:
        return f"Gradient(limit={self.limit:.2f}, max_limit={self.max_limit:g})"
