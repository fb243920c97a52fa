"""``Engagement``: the limiter's one state, engaged or not (docs/limiter.md, "How it decides").

Enter: a hot reading (engaged until a reading that is not hot), or a shed that restarts the
cool-off, or a long CFS freeze of the group (engaged ``cool_off_s`` after it). Leave:
``cool_off_s`` after the last such event with no hot reading since; a clearly cool reading
(``HotGate.clearly_cool``) ends the cool-off at once. Pure: the clock is passed in.
"""

from __future__ import annotations

import math

__all__ = ["Engagement"]


class Engagement:
    """``until``: engaged while ``now < until`` (inf while hot; else the cool-off's end).
    ``cool_off_until``: the last restart + ``cool_off_s`` (-inf before the first).
    ``entries``: how often it went from not engaged to engaged, by cause (``hot``, ``shed``, ``freeze``, ``offered``)."""

    __slots__ = ("cool_off_s", "cool_off_until", "entries", "until")

    def __init__(self, cool_off_s: float) -> None:
        self.cool_off_s = cool_off_s
        self.cool_off_until = -math.inf
        self.until = -math.inf
        self.entries = {"hot": 0, "shed": 0, "freeze": 0, "offered": 0}

    def restart(self, now: float, cause: str = "shed") -> None:
        """A shed (not a ceiling shed), a long freeze or an overload of arrivals (``cause``): engaged for
        ``cool_off_s`` from ``now``."""
        if now >= self.until:
            self.entries[cause] += 1
        self.cool_off_until = until = now + self.cool_off_s
        if until > self.until:
            self.until = until

    def reading(self, now: float, hot: bool, clearly_cool: bool) -> None:
        """A new reading: hot engages until the next reading; otherwise the cool-off runs on, or ends
        at once when the reading is ``clearly_cool``."""
        if hot:
            if now >= self.until:
                self.entries["hot"] += 1
            self.until = math.inf
            return
        if clearly_cool and now < self.cool_off_until:
            self.cool_off_until = now
        self.until = self.cool_off_until

    def always(self) -> None:
        """No CPU gate: engaged for good (a plain concurrency limiter)."""
        self.until = math.inf

    def forget_hot(self) -> None:
        """The signal or the policy changed: the cool-off stands, the last hot verdict does not."""
        self.until = self.cool_off_until

    def cooling(self, now: float) -> bool:
        return now < self.cool_off_until
