"""A fixed concurrency limit: the classic semaphore, as a peer for benchmarks."""

from __future__ import annotations

from flowctl.errors import ConfigError
from flowctl.limit.base import LimitStats

__all__ = ["FixedLimit"]


class FixedLimit:
    """``max_inflight`` is always ``n``; samples are ignored."""

    __slots__ = ("n",)

    name = "fixed"

    def __init__(self, n: float) -> None:
        if not n >= 1:
            raise ConfigError(f"FixedLimit n must be >= 1, got {n!r}")
        self.n = float(n)

    def max_inflight(self, now: float) -> float:
        return self.n

    def on_sample(self, now: float, rt_s: float, inflight: int, dropped: bool) -> None:
        return None

    def stats(self, now: float) -> LimitStats:
        return LimitStats(max_inflight=self.n)

    def __repr__(self) -> str:
        return f"FixedLimit({self.n:g})"
