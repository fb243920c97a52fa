"""The CPU budget (opt-in): while the limiter is engaged, pace admissions so the group stays under its quota.

A concurrency limit cannot keep a CFS group out of throttling: a service that
is busy all the time at a limit of 1 still spends its quota early in each
period and is frozen for the rest of it (up to ``(1 - q) * 100 ms`` at ``q``
CPUs), and every request in flight then waits. The budget admits at most
``rate = scale * target * limit_cores / cpu_per_request_s`` requests per
second. ``cpu_per_request_s`` is ``CpuCost``'s, learned only from intervals
without sheds (the cost of a completion, not of answering sheds).

``scale`` closes the loop: while the budget binds (it shed since the reading
before), each reading multiplies it by ``sqrt(target / utilization)``, at
most ``STEP`` either way, so the group's measured utilization (shedding's
own CPU included, when the limiter runs in the group) settles at ``target``;
a reading in which the group was also throttled (``throttled_ratio >= 0.5``)
cuts it by ``THROTTLE_CUT`` more. ``scale`` stays within ``[MIN_SCALE,
MAX_SCALE]``; a reading that does not bind gives back ``THROTTLE_GIVE``
towards 1. (A feed-forward rate on a cost measured while shedding spiralled
down in-process: shedding's CPU raised the cost per completion, which lowered
the rate, to 12 requests/s at 0.3 CPU.) Throttling while the budget is not
binding is the arrivals' own burstiness at a load the service carries: it
does not count (counting it made the budget shed 17-21% at 0.9x capacity).

Admissions take tokens from a bucket refilled at ``rate`` and holding at most
``capacity = max(2, rate * burst_s)`` (20 ms of admissions by default: a
deeper bucket lets a burst spend a period's quota at once). A priority class
is admitted while the bucket keeps ``budget_level * capacity`` tokens after
its own: critical may borrow (level < 0), default needs a whole token,
sheddable only takes from a well-filled bucket (level > 0): an admission
level as in WeChat's DAGOR, which holds at any limit, unlike slot shares.

Pure: time and measurements are passed in.
"""

from __future__ import annotations

import math

from flowctl.errors import ConfigError
from flowctl.limiter.cost import CpuCost

__all__ = ["CpuBudget"]

THROTTLE_CUT = 0.1  # scale *= 1 - THROTTLE_CUT per throttled reading while binding
THROTTLE_GIVE = 0.01  # scale += THROTTLE_GIVE per reading that does not bind, back to 1
STEP = 0.15  # the closed loop moves the scale by at most this fraction per reading
MIN_SCALE = 0.2
MAX_SCALE = 1.5


class CpuBudget:
    """A token bucket whose rate keeps the group's CPU at ``target`` of its limit (see the module)."""

    __slots__ = ("target", "burst_s", "tau_s", "cost", "rate_per_s", "capacity", "scale", "_tokens", "_at")

    def __init__(self, target: float = 0.85, *, burst_s: float = 0.02, tau_s: float = 0.5) -> None:
        if not (0 < target <= 1.5 and math.isfinite(target)):
            raise ConfigError(f"cpu budget target must be in (0, 1.5], got {target!r}")
        if not (burst_s >= 0 and tau_s > 0):
            raise ConfigError(f"burst_s must be >= 0 and tau_s > 0, got {burst_s!r}, {tau_s!r}")
        self.target = float(target)
        self.burst_s = float(burst_s)
        self.tau_s = float(tau_s)
        self.cost = CpuCost(tau_s)
        self.rate_per_s: float | None = None  # None: unknown, admit everything
        self.capacity = 2.0
        self.scale = 1.0  # throttling feedback, in [MIN_SCALE, 1]
        self._tokens = 2.0
        self._at = -math.inf

    def observe(
        self,
        at: float,
        usage_cores: float | None,
        limit_cores: float | None,
        completed: int,
        throttled_ratio: float | None = None,
        *,
        consecutive: bool = True,
        binding: bool = False,
        learn: bool = True,
    ) -> None:
        """One CPU reading taken at ``at`` (usage and throttling over the interval since the reading
        before) and the completions so far. ``consecutive`` False: readings in between were not
        observed, so this one's usage does not cover the completions since the last: not a sample.
        ``binding``: the budget shed since the reading before (only then does throttling cut it)."""
        sample = self.cost.observe(at, usage_cores, completed, consecutive=consecutive, learn=learn and not binding)
        if sample and binding and usage_cores is not None and limit_cores:
            # Closed loop: the measured utilization steers the rate to the target (the cost learned
            # before shedding does not include the CPU that shedding itself takes in the group).
            step = (self.target / max(usage_cores / limit_cores, 1e-3)) ** 0.5
            self.scale *= min(1.0 + STEP, max(1.0 - STEP, step))
            if throttled_ratio is not None and throttled_ratio >= 0.5:
                self.scale *= 1.0 - THROTTLE_CUT
            self.scale = min(MAX_SCALE, max(MIN_SCALE, self.scale))
        elif sample and not binding and self.scale < 1.0:
            self.scale = min(1.0, self.scale + THROTTLE_GIVE)
        if usage_cores is None:
            return
        capacity = self.cost.capacity_per_s(limit_cores)
        if capacity is not None:
            self.rate_per_s = self.scale * self.target * capacity
            self.capacity = max(2.0, self.rate_per_s * self.burst_s)
        else:
            self.rate_per_s = None

    @property
    def cpu_per_request_s(self) -> float | None:
        """The learned CPU seconds per completed request (``CpuCost``)."""
        return self.cost.cpu_per_request_s

    def take(self, now: float, level: float) -> bool:
        """Take a token for an admission at ``now`` if the bucket keeps ``level * capacity`` after it."""
        rate = self.rate_per_s
        if rate is None:
            return True
        tokens = self._tokens + (now - self._at) * rate
        cap = self.capacity
        if tokens > cap:
            tokens = cap
        self._at = now
        if tokens - 1.0 >= level * cap:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False
