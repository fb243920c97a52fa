"""``OfferedLoad``: the onset of an overload, seen in the requests that arrive.

A CPU reading sees an overload only after the group has spent it (100-200 ms,
and in a quota'd group a freeze). The arrivals show it sooner: over a window
that holds ``window_requests`` requests at the group's CPU capacity
(``usable_cores / cpu_per_request_s``), Poisson arrivals at capacity bring
``expect = capacity x window`` requests, give or take ``sqrt(expect)``. A
window that brings more than ``expect + sigmas x sqrt(expect)`` is an
overload, not chance: at 0.9x of the CPU capacity one window of 10 requests in
about a thousand is that busy (20 or more arrivals where 9 are expected): once
in 100 s at a capacity of 100/s, once in 17 s at 600/s; at 3x the first window
is. Windows tumble: one closes at the first arrival after its end, so an idle
gap only lengthens the window it falls in (and its expectation). A window also
closes at the arrival after the one that takes it past ``over_count =
window_requests + sigmas x sqrt(window_requests)`` (19.5 by default: the 20th
arrival): more than a whole window at capacity brings, beyond chance, has
already come, and at 4x it comes in half the window's time. ``within`` says
whether the last window's arrivals were within the capacity give or take
chance (``expect + sqrt(expect)``): the period gate lets a request wait for
the next CFS period only then, when the next period has room for it. Pure:
the clock is passed in.
"""

from __future__ import annotations

import math

__all__ = ["OfferedLoad"]


class OfferedLoad:
    """Arrivals per tumbling window against the group's capacity (see the module).

    Admission counts each arrival (``count += 1``) after ``close`` when ``now >= until`` or ``count >
    over_count``."""

    __slots__ = ("sigmas", "window_requests", "capacity_per_s", "count", "start", "until", "within", "over_count")

    def __init__(self, sigmas: float | None, window_requests: float) -> None:
        self.sigmas = sigmas  # None: off (``close`` never says over)
        self.window_requests = window_requests
        self.capacity_per_s: float | None = None  # the group's CPU capacity, requests/s (None: unknown)
        self.count = 0  # arrivals in the window that runs
        self.start = -math.inf  # when it started (-inf: none yet)
        self.until = -math.inf  # when it ends
        self.within = False  # the last window's arrivals were within the capacity, give or take chance
        self.over_count = math.inf  # more arrivals than this make the running window an overload (inf: no verdict)

    def close(self, now: float) -> bool:
        """End the window that runs at ``now`` and start the next; True when the ended window's
        arrivals were over the capacity by more than ``sigmas`` standard deviations of chance."""
        cap, sigmas, start = self.capacity_per_s, self.sigmas, self.start
        over = within = False
        if cap and now > start > -math.inf:
            expect = cap * (now - start)
            within = self.count <= expect + math.sqrt(expect)
            over = sigmas is not None and self.count > expect + sigmas * math.sqrt(expect)
        self.within = within
        self.count = 0
        self.start = now
        # capacity unknown: nothing can be judged; look again a sampler interval later, not per arrival
        self.until = now + (self.window_requests / cap if cap else 0.1)
        n = self.window_requests
        self.over_count = n + sigmas * math.sqrt(n) if cap and sigmas is not None else math.inf
        return over
