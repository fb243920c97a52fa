"""A circuit breaker for the quota store: stop calling a store that keeps failing, probe it now and then.

``closed`` (calls go through) -> ``open`` after ``failures`` consecutive
failures: ``allow`` says no, so requests cost no wait on a dead store ->
after ``open_s``, one probe call is allowed at a time (``half_open``); its
success closes the breaker, its failure opens it for another ``open_s``.
Time comes from the caller (``now`` in seconds).
"""

from __future__ import annotations

import math

from flowctl.errors import ConfigError

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """See the module docstring. One event loop: no locking."""

    __slots__ = ("failures", "open_s", "_failed", "_open_until", "_probing", "_probe_at")

    def __init__(self, *, failures: int = 3, open_s: float = 0.5) -> None:
        if not (isinstance(failures, int) and failures >= 1):
            raise ConfigError(f"breaker failures must be an integer >= 1, got {failures!r}")
        if not (open_s > 0 and math.isfinite(open_s)):
            raise ConfigError(f"breaker open_s must be a positive number of seconds, got {open_s!r}")
        self.failures = failures
        self.open_s = float(open_s)
        self._failed = 0  # consecutive failures
        self._open_until = -math.inf  # while open: when a probe may go; -inf when closed
        self._probing = False
        self._probe_at = -math.inf

    @property
    def closed(self) -> bool:
        return self._open_until == -math.inf

    def state(self, now: float) -> str:
        """``closed``, ``open`` or ``half_open`` (a probe may go, or is under way)."""
        if self.closed:
            return "closed"
        return "half_open" if self._probing or now >= self._open_until else "open"

    def open_for_s(self, now: float) -> float:
        """Seconds until a probe may go (0 when closed or due)."""
        return 0.0 if self.closed else max(0.0, self._open_until - now)

    def allow(self, now: float) -> bool:
        """Whether a call may go now (closed; or open, due, and no probe under way)."""
        if self._open_until == -math.inf:
            return True
        if now < self._open_until:
            return False
        if self._probing and now < self._probe_at + self.open_s:  # a probe that never reported: give up on it
            return False
        self._probing = True
        self._probe_at = now
        return True

    def success(self) -> bool:
        """A call succeeded; returns True when this closed an open breaker."""
        was_open = self._open_until != -math.inf
        self._failed = 0
        self._open_until = -math.inf
        self._probing = False
        return was_open

    def trip(self, now: float) -> None:
        """Make the next failure open the breaker, whatever the count (the store was down at start-up)."""
        self._failed = max(self._failed, self.failures - 1)

    def failure(self, now: float) -> bool:
        """A call failed; returns True when this opened a closed breaker."""
        self._failed += 1
        was_closed = self._open_until == -math.inf
        if self._probing or not was_closed or self._failed >= self.failures:
            self._open_until = now + self.open_s
            self._probing = False
            return was_closed
        return False
