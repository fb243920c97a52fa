"""The control loop's decisions: what HAProxy should admit, and what the Limiter learns from HAProxy.

The rule (``admission``): the haproxy engine admits what the Python engine
would, with HAProxy's queue in place of an immediate shed for what waits.
Per priority class the *room* is the requests it may find in service plus
queued and still be let in: while the limiter is engaged (hot, or cooling
off) ``min(class limit, class ceiling)``, otherwise the class ceiling (the
always-on Little's-law cap). As in the Limiter, a reserve class (critical)
is held at its ceiling alone, and so is every class while the period gate
paces the group (``sidecar.haproxy.pace``: then the gate, not the limit,
bounds the others inside each CFS period). The upstream's ``maxconn`` is the largest room
(critical's): as in the Python engine, a class is shed at its own room and
critical, the reserve, may keep more in service than the others. HAProxy's
queue (critical dequeued first) holds what passed the room check in the same
instant as others, and what is above a ``maxconn`` that was just lowered. A
limit or ceiling that is not known yet (infinite) leaves HAProxy at
``max_connections`` in service and ``max_clients`` admitted, as the Python
engine admits without bound then. Dry-run: nothing is capped (the figures are
still computed and shown). HAProxy's own sheds restart a cool-off of the
engine (``cool_off_s``), as every shed restarts the limiter's.

The learning (``Mirror``): the Limiter is fed as if it had admitted
HAProxy's requests. Every control tick, the responses the upstream sent
since the last tick are recorded as completed requests (``Limiter.completed``,
one batch: no admission stage runs for them) with the tick's RT (the mean of
the responses HAProxy sampled for it, ``sidecar.haproxy.loop``; else HAProxy's
connect plus response time, its average over the last 1024 requests in whole
ms), and the Limiter's in-flight is kept at the upstream's current sessions
(capped by the room, so it never refuses; the hold's releases are not
completions, so the CPU cost is not diluted by them). The
limit, the ceiling, the CPU cost per request and min RT then come out of the
same code as in the Python engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flowctl.limiter import Rejection, Slot

__all__ = ["Admission", "Limits", "Mirror", "Setting", "admission", "rt_seconds", "uncapped"]

MIN_RT_S = 0.0005  # HAProxy reports whole milliseconds: a 0 is read as half of one


class Limits(Protocol):
    """What ``admission`` reads of a ``LimiterSnapshot``."""

    @property
    def priority_limits(self) -> dict[str, float]: ...
    @property
    def priority_ceilings(self) -> dict[str, float]: ...
    @property
    def hot(self) -> bool: ...
    @property
    def cool_off(self) -> bool: ...
    @property
    def dry_run(self) -> bool: ...


class Admission(Protocol):
    """The slot API of ``flowctl.limiter.Limiter`` (the Python engine's proxy uses the same)."""

    def slot(self, resource: str = "default", priority: str | None = None) -> Slot: ...
    def admit(self, slot: Slot) -> float | Rejection: ...
    def success(self, slot: Slot, start: float) -> float: ...
    def ignore(self, slot: Slot, start: float) -> float: ...
    def completed(self, slot: Slot, count: int, rt_s: float, inflight: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Setting:
    """What HAProxy is told: the server's ``maxconn`` and each class's room (``admission.map``)."""

    maxconn: int
    rooms: Mapping[str, int] = field(default_factory=dict)
    engaged: bool = False
    capped: bool = True  # False in dry-run: the values are what would be set
    #: per class, what a shed of it says: (reason, stage), as the Python engine's 503 body
    why: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def _whole(value: float | None) -> int | None:
    if value is None or not math.isfinite(value):
        return None
    return max(1, math.ceil(value - 1e-9))


def admission(
    snap: Limits,
    *,
    priorities: Sequence[str],
    default: str,
    engaged: bool,
    max_connections: int,
    max_clients: int,
    reason: str = "cpu",
    reserve: Collection[str] = (),
    paced: bool = False,
) -> Setting:
    """The ``Setting`` for ``snap`` (the module docstring's rule); ``engaged`` already includes the engine's
    own cool-off, ``reason`` is what engages it (a hot trigger, ``cool_off``, or ``limit`` when ungated).
    A class in ``reserve`` (critical), and every class while the period gate ``paced`` the group, is held
    at its ceiling alone when one is known, as the Limiter sheds them. Every value is at least 1 (a 0
    maxconn is unlimited to HAProxy)."""
    rooms: dict[str, int] = {}
    why: dict[str, tuple[str, str]] = {}
    for p in priorities:
        ceiling = _whole(snap.priority_ceilings.get(p))
        limit = _whole(snap.priority_limits.get(p)) if engaged else None
        if ceiling is not None and (paced or p in reserve):
            limit = None
        if limit is not None and (ceiling is None or limit < ceiling):
            rooms[p], why[p] = min(limit, max_clients), (reason, "limit")
        else:
            rooms[p], why[p] = min(ceiling, max_clients) if ceiling is not None else max_clients, ("queue", "ceiling")
    maxconn = max(1, min(max(rooms.values(), default=max_clients), max_connections))
    return Setting(maxconn, rooms, engaged, capped=not snap.dry_run, why=why)


def uncapped(priorities: Sequence[str], *, max_connections: int, max_clients: int) -> Setting:
    """Nothing capped: dry-run, and the first config before any limit is known."""
    return Setting(max(1, max_connections), {p: max(1, max_clients) for p in priorities}, capped=False,
                   why={p: ("queue", "ceiling") for p in priorities})


def rt_seconds(ctime_ms: int, rtime_ms: int) -> float:
    """An admission's RT from HAProxy's averages: connect plus response time, at least ``MIN_RT_S``."""
    return max(MIN_RT_S, (ctime_ms + rtime_ms) / 1000.0)


class Mirror:
    """Feeds HAProxy's completed requests to a Limiter as admissions of the default class.

    Each tick: ``record`` the upstream's cumulative responses and the RT estimate (before the
    Limiter observes the CPU reading), then ``hold`` its current sessions up to the new room.
    ``held`` is how many admissions the Limiter counts in flight now; ``refused`` counts admissions
    the Limiter refused (it should not: the hold is capped by the room).
    """

    def __init__(self, limiter: Admission, *, resource: str = "default", clock: Callable[[], float] = time.monotonic) -> None:
        self._limiter = limiter
        self._slot = limiter.slot(resource, None)
        self._clock = clock
        self._last_total: int | None = None
        self.held = 0
        self._hold_max = 1 << 30  # the last hold's cap
        self.replayed_total = 0
        self.refused = 0

    def _admit(self) -> bool:
        got = self._limiter.admit(self._slot)
        if isinstance(got, Rejection):
            self.refused += 1
            return False
        self.held += 1
        return True

    def reset(self) -> None:
        """HAProxy restarted: its counters start over and its requests are gone (released as ignored)."""
        while self.held > 0:
            self._limiter.ignore(self._slot, self._clock())
            self.held -= 1
        self._last_total = None

    def record(self, completed_total: int, inflight: int, rt_s: float) -> int:
        """Feed the completions since the last call (one ``Limiter.completed`` batch, each leaving with
        ``inflight`` in service, capped as the hold was); returns how many. The control loop calls it
        before ``Limiter.observe``, so the CPU reading's interval and the completions counted for it
        end together (the cost is their ratio)."""
        if self._last_total is None or completed_total < self._last_total:
            if self._last_total is not None:
                self.reset()
            self._last_total = completed_total
            return 0
        done = completed_total - self._last_total
        self._last_total = completed_total
        if done:
            self._limiter.completed(self._slot, done, rt_s, max(1, min(inflight, self._hold_max)))
            self.replayed_total += done
        return done

    def hold(self, inflight: int, hold_max: int) -> None:
        """Keep ``min(inflight, hold_max)`` admissions held: the Limiter's in-flight is the upstream's
        sessions, capped by the room so it never refuses. Releases are ``ignore``: not completions."""
        self._hold_max = hold_max
        target = max(0, min(inflight, hold_max))
        while self.held < target and self._admit():
            pass
        while self.held > target:
            self._limiter.ignore(self._slot, self._clock())
            self.held -= 1
