"""Extra shedding signals polled at admission time (``Trigger``), and how bypass ones are polled."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, cast, runtime_checkable

__all__ = ["PolledTrigger", "Trigger", "polled"]


@runtime_checkable
class Trigger(Protocol):
    """An extra shedding signal (e.g. event-loop lag), polled at admission time.

    ``check(now)`` returns the current value when firing (value >= threshold),
    else None; it must be cheap when the trigger has ``bypass_inflight=True``
    (it is then called on every admission). A non-bypass trigger counts as
    "hot" like the CPU signal; a bypass trigger sheds even when in-flight is
    within the limit (blocking handlers keep in-flight at 1).
    ``bypass_inflight`` is read once, when the trigger is added.

    A bypass trigger may also have a numeric ``quiet_until`` attribute (clock
    seconds; whether it has one is read when it is added): the limiter then
    skips ``check(now)`` while ``now < quiet_until``, so the trigger promises
    that such a call would return None and has nothing to do (``LoopLagMonitor``
    sets it after each check; -inf means "ask"). Without it, ``check`` runs on
    every admission.

    A bypass trigger may also have a ``frozen(since)`` method: an in-process
    limiter whose period gate reads its own group calls it when the group was
    frozen by CFS from ``since`` (clock seconds) until about now, so the
    requests read now have waited that long (``LoopLagMonitor`` counts it as lag).
    """

    @property
    def name(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    @property
    def bypass_inflight(self) -> bool: ...

    def check(self, now: float) -> float | None: ...


class PolledTrigger(Trigger, Protocol):
    """A bypass trigger as admission polls it: with a numeric ``quiet_until``."""

    quiet_until: float


class _AlwaysDue:
    """A bypass trigger without ``quiet_until``, seen through one that is always due."""

    __slots__ = ("_trigger", "quiet_until")

    bypass_inflight = True

    def __init__(self, trigger: Trigger) -> None:
        self._trigger = trigger
        self.quiet_until = -math.inf

    @property
    def name(self) -> str:
        return self._trigger.name

    @property
    def threshold(self) -> float:
        return self._trigger.threshold

    def check(self, now: float) -> float | None:
        return self._trigger.check(now)


def polled(triggers: Sequence[Trigger]) -> tuple[PolledTrigger, ...]:
    """Bypass triggers as admission polls them: each with a numeric ``quiet_until`` (read now)."""
    return tuple(
        cast(PolledTrigger, t) if isinstance(getattr(t, "quiet_until", None), (int, float)) else _AlwaysDue(t)
        for t in triggers
    )
