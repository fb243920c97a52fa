"""The seam between admission and limit algorithms: ``LimitAlgorithm``.

An algorithm is pure: it is fed completed requests (``on_sample``) and asked
for the current concurrency limit (``max_inflight``), always with ``now`` in
seconds passed in. No clock, no asyncio, no I/O. Both calls are on the
limiter's hot path and must be O(1) amortized.

Optional: ``rescale(ratio)``. The limiter calls it when the CPU limit moves by
more than 10% (``ratio`` = new / old), so an algorithm whose history belongs
to the old quota can start over (``Bbr`` does). ``set_servers(n)``: the
service runs ``n`` requests at once without queueing (its usable cores,
rounded up), so an algorithm can leave queued samples out of its min RT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["LimitAlgorithm", "LimitStats"]


@dataclass(frozen=True, slots=True)
class LimitStats:
    """An algorithm's state for snapshots; None means unknown or not measured by it.

    ``warm`` is False while the algorithm runs on its cold-start value (no data yet).
    """

    max_inflight: float
    min_rt_s: float | None = None
    max_pass_per_s: float | None = None
    warm: bool = True


@runtime_checkable
class LimitAlgorithm(Protocol):
    """Computes a concurrency limit from completed requests' round-trip times."""

    @property
    def name(self) -> str:
        """Short name for snapshots and bench labels, e.g. ``"bbr"``."""
        ...

    def max_inflight(self, now: float) -> float:
        """The concurrency limit at ``now`` (seconds); always >= 1."""
        ...

    def on_sample(self, now: float, rt_s: float, inflight: int, dropped: bool) -> None:
        """Record one completed request: round trip ``rt_s`` seconds, ending at ``now``.

        ``inflight`` is the in-flight count just before this request left;
        ``dropped`` is True when the request timed out or was dropped downstream.
        """
        ...

    def stats(self, now: float) -> LimitStats:
        """The current limit and the measurements behind it (for snapshots, not the hot path)."""
        ...
