"""A rolling window of time buckets: completed requests and their mean RT.

Time is cut into buckets of ``window_s / buckets`` seconds (default 10 s in
100 buckets of 100 ms), numbered ``floor(now / bucket_s)``. Each bucket keeps
the number of requests that completed in it and the sum of their round-trip
times in float seconds (no millisecond rounding). Statistics cover the
``buckets`` *completed* buckets before the current one (the current bucket is
still filling and would under-count): exactly ``window_s`` seconds of history.

Memory is fixed: a ring of ``buckets + 1`` slots. The bucket being filled is
kept in three scalars (``add`` is an increment while ``now`` stays in it) and
copied into its ring slot when time moves on or ``stats`` is asked for.
``now`` must not decrease between calls to ``add`` (a monotonic clock); an
earlier ``now`` still counts, in the bucket being filled.

Min RT is a service time, so it is not learned from a queue. A sample whose
``inflight`` (including itself) exceeded ``servers`` (the requests the service
runs at once without waiting: the limiter sets it to its usable cores, rounded
up) shared the CPU with others and is left out of it. Once an unqueued sample
has been seen, min RT is the lowest per-bucket mean of unqueued samples in the
window, or the last one known when the window has none (a long overload admits
no unqueued request: its RTs are queueing, not service). Before any unqueued
sample, it is the lowest per-bucket mean of all samples, as without ``servers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flowctl.errors import ConfigError

__all__ = ["RollingWindow", "WindowStats"]


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Best bucket figures over the completed window; ``min_rt_s`` None when no bucket had a sample.

    - ``max_pass``: most requests completed in one bucket.
    - ``min_rt_s``: lowest per-bucket mean RT of unqueued samples (see the module docstring).
    - ``samples``: requests completed in the whole window.
    """

    max_pass: int
    min_rt_s: float | None
    samples: int


_NO_BUCKET = -(1 << 62)
_EMPTY = WindowStats(max_pass=0, min_rt_s=None, samples=0)


class RollingWindow:
    """Fixed-size ring of buckets; ``add`` is O(1), ``stats`` is cached per bucket."""

    __slots__ = (
        "bucket_s",
        "buckets",
        "_per_s",
        "_slots",
        "_epoch",
        "_count",
        "_rt_sum",
        "_cache_at",
        "_cache",
        "_pend_idx",
        "_pend_end",
        "_pend_count",
        "_pend_rt_sum",
        "servers",
        "_quiet_count",
        "_quiet_sum",
        "_pend_quiet_count",
        "_pend_quiet_sum",
        "_last_quiet_min",
    )

    def __init__(self, window_s: float = 10.0, buckets: int = 100) -> None:
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ConfigError(f"window_s must be > 0, got {window_s!r}")
        if buckets < 1:
            raise ConfigError(f"buckets must be >= 1, got {buckets!r}")
        self.buckets = int(buckets)
        self.bucket_s = float(window_s) / self.buckets
        self._per_s = 1.0 / self.bucket_s
        self._slots = self.buckets + 1  # the completed window plus the filling bucket
        self._epoch: list[int] = [_NO_BUCKET] * self._slots
        self._count: list[int] = [0] * self._slots
        self._rt_sum: list[float] = [0.0] * self._slots
        self._cache_at: int | None = None
        self._cache: WindowStats = _EMPTY
        # The bucket being filled. _pend_end = -inf: the first add starts a bucket.
        self._pend_idx = _NO_BUCKET
        self._pend_end = -math.inf
        self._pend_count = 0
        self._pend_rt_sum = 0.0
        self.servers = math.inf  # in-flight at or under this (itself included): the request did not queue
        self._quiet_count: list[int] = [0] * self._slots
        self._quiet_sum: list[float] = [0.0] * self._slots
        self._pend_quiet_count = 0
        self._pend_quiet_sum = 0.0
        self._last_quiet_min: tuple[int, float] | None = None  # (bucket, mean) of the freshest low unqueued bucket

    @property
    def window_s(self) -> float:
        return self.bucket_s * self.buckets

    def bucket_index(self, now: float) -> int:
        """The absolute number of the bucket holding time ``now``."""
        return math.floor(now * self._per_s)

    def add(self, now: float, rt_s: float) -> None:
        """Count one request that completed at ``now`` after ``rt_s`` seconds."""
        self.add_sample(now, rt_s, 0, False)

    def add_sample(self, now: float, rt_s: float, inflight: int, dropped: bool) -> None:
        """``add`` in the shape of ``LimitAlgorithm.on_sample``: a dropped request is not counted;
        one with ``inflight`` over ``servers`` counts for throughput, not for min RT. An algorithm
        can hand out this bound method as its own ``on_sample`` (one call per request)."""
        if dropped:
            return
        if now >= self._pend_end:
            self.roll(now)
        self._pend_count += 1
        self._pend_rt_sum += rt_s
        if inflight <= self.servers:
            self._pend_quiet_count += 1
            self._pend_quiet_sum += rt_s

    def roll(self, now: float) -> None:
        """Slow path of ``add_sample``: ``now`` is past the bucket being filled; start a new, empty one."""
        self._flush()
        idx = math.floor(now * self._per_s)
        self._pend_idx = idx
        self._pend_end = (idx + 1) * self.bucket_s
        if now >= self._pend_end:  # float edge: now * per_s rounded down across the boundary
            self._pend_idx = idx = idx + 1
            self._pend_end = (idx + 1) * self.bucket_s
        self._pend_count = 0
        self._pend_rt_sum = 0.0
        self._pend_quiet_count = 0
        self._pend_quiet_sum = 0.0

    def _flush(self) -> None:
        """Copy the bucket being filled into its ring slot (overwrite: idempotent)."""
        if self._pend_count:
            slot = self._pend_idx % self._slots
            self._epoch[slot] = self._pend_idx
            self._count[slot] = self._pend_count
            self._rt_sum[slot] = self._pend_rt_sum
            self._quiet_count[slot] = self._pend_quiet_count
            self._quiet_sum[slot] = self._pend_quiet_sum
            if self._pend_quiet_count:  # the freshest unqueued figure, kept when the window has none
                mean = self._pend_quiet_sum / self._pend_quiet_count
                last = self._last_quiet_min
                if last is None or mean < last[1] or self._pend_idx - last[0] > self.buckets:
                    self._last_quiet_min = (self._pend_idx, mean)

    def stats(self, now: float) -> WindowStats:
        """Max pass count and min mean RT over the completed buckets before ``now``'s bucket."""
        cur = self.bucket_index(now)
        if cur == self._cache_at:
            return self._cache
        self._flush()
        max_pass = 0
        min_rt: float | None = None
        quiet_min: float | None = None
        samples = 0
        epoch, count, rt_sum, slots = self._epoch, self._count, self._rt_sum, self._slots
        quiet_count, quiet_sum = self._quiet_count, self._quiet_sum
        for idx in range(cur - self.buckets, cur):
            slot = idx % slots
            if epoch[slot] != idx:
                continue
            n = count[slot]
            samples += n
            if n > max_pass:
                max_pass = n
            mean = rt_sum[slot] / n
            if min_rt is None or mean < min_rt:
                min_rt = mean
            q = quiet_count[slot]
            if q:
                mean = quiet_sum[slot] / q
                if quiet_min is None or mean < quiet_min:
                    quiet_min = mean
        if min_rt is not None and self._last_quiet_min is not None:
            # unqueued samples seen: queued ones say nothing of the service time
            min_rt = quiet_min if quiet_min is not None else self._last_quiet_min[1]
        self._cache_at = cur
        self._cache = WindowStats(max_pass=max_pass, min_rt_s=min_rt, samples=samples)
        return self._cache

    def reset(self) -> None:
        """Forget every bucket."""
        self._epoch[:] = [_NO_BUCKET] * self._slots
        self._count[:] = [0] * self._slots
        self._rt_sum[:] = [0.0] * self._slots
        self._cache_at = None
        self._cache = _EMPTY
        self._pend_idx = _NO_BUCKET
        self._pend_end = -math.inf
        self._pend_count = 0
        self._pend_rt_sum = 0.0
        self._quiet_count[:] = [0] * self._slots
        self._quiet_sum[:] = [0.0] * self._slots
        self._pend_quiet_count = 0
        self._pend_quiet_sum = 0.0
        self._last_quiet_min = None
