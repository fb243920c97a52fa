"""``Pacer``: the period gate of the haproxy engine, as a per-class room HAProxy checks on every request.

CFS gives the app's group ``quota_s`` of CPU per period; once it is spent the
group is frozen until the next period, and every request in service waits
through the freeze (up to 70 ms at 0.3 CPU). A concurrency cap does not
prevent it (one request at a time still spends the quota early), and a 100 ms
control tick cannot see it in time. The Python engine asks the Limiter's
period gate at each admission; HAProxy cannot ask, so this engine turns the
same gate (``flowctl.limiter.period.PeriodGate``, the same policy values) into
a number HAProxy can check by itself:

    cap(class) = how many requests of the class may be in service plus queued
                 now, such that the period's quota still covers them

found by asking the gate ``allows(now, k, cost, level)`` for growing ``k``.
The engine reads the group's counters every ``PACE_S`` while the group is
busy, and sends a class's room as ``min(room, cap)`` to ``admission.map``
whenever it changes (a few ``set map`` per period): HAProxy compares it with
the live ``srv_conn + queue`` of each request, as it does the room.

As in the Python engine: while the limiter is engaged the gate is strict
(the period's quota less the learned margin, times the class's level factor,
counting the in-flight requests' cost); not engaged it only closes a period
whose whole quota is spent (cap 0); a reserve class (critical) is never capped;
a freeze of ``Policy.freeze_engages`` of the period or more engages the
engine at once (a cool-off), without waiting for a hot CPU reading.

Difference: the gate's *overhead* term (the group's CPU beyond its
completions' cost) is not learned here, because the completions are known only
at the 100 ms tick; the margin, learned from throttled periods, covers the
app's own idle work. A probe that finds ``cap < room`` counts for the margin
as a shed in that period (HAProxy's sheds are seen only at the tick).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from flowctl.limiter.period import PeriodGate
from flowctl.limiter.policy import Policy
from flowctl.signal import CfsBandwidth

__all__ = ["IDLE_PACE_S", "PACE_S", "Pacer"]

PACE_S = 0.001  # read interval while the group uses CPU (the Limiter reads at most every 0.5 ms per admission)
IDLE_PACE_S = 0.005  # while it does not (Policy.idle_read_s): a freeze is still seen


class Pacer:
    """The period gate of one group, read by hand, giving each class's cap (see the module). Not thread-safe."""

    def __init__(self, policy: Policy, levels: Mapping[str, float]) -> None:
        """``levels``: the priority level of each class the gate may cap (reserve classes left out)."""
        self.gate = PeriodGate(policy)
        self.levels = dict(levels)
        self.freeze_engages = policy.freeze_engages
        self.bandwidth: CfsBandwidth | None = None
        self.reads = 0
        self.freezes = 0  # freezes that engaged the engine
        self._usage: float | None = None

    @property
    def active(self) -> bool:
        """The watched group has a quota of its own that its processes can spend: there is something to pace."""
        return self.bandwidth is not None and self.gate.quota_s is not None

    def follow(self, bandwidth: CfsBandwidth | None, limit_cores: float | None) -> None:
        """Point the gate at ``bandwidth`` (the watched group's, or None) and re-read its quota, as the
        Limiter does once a second: no quota, or fewer usable cores than the quota (CFS never freezes
        such a group), turns pacing off."""
        if bandwidth is not self.bandwidth:
            self.gate.set_quota(None, None)
            self.bandwidth = bandwidth
            self._usage = None
        quota = bandwidth.quota() if bandwidth is not None else None
        if quota is not None and limit_cores and limit_cores < quota[0] / quota[1] - 1e-9:
            quota = None
        cores = math.ceil(limit_cores - 1e-9) if limit_cores else 1
        if quota is None:
            self.gate.set_quota(None, None)
        else:
            self.gate.set_quota(quota[0], quota[1], cores)

    def read(self, now: float) -> tuple[bool, bool]:
        """Read the group's counters into the gate: (the group used CPU since the last read, a freeze
        long enough to engage ended just before this read)."""
        if self.bandwidth is None:
            return False, False
        counters = self.bandwidth.read()
        if counters is None:
            return False, False
        usage_s, periods, throttled, throttled_s = counters
        self.reads += 1
        busy = self._usage is not None and usage_s > self._usage
        self._usage = usage_s
        frozen = self.gate.update(now, usage_s, periods, throttled, 0, None, throttled_s)
        period = self.gate.period_s
        engage = bool(period and frozen >= self.freeze_engages * period)
        self.freezes += engage
        return busy, engage

    def caps(self, now: float, rooms: Mapping[str, int], cost_s: float | None, engaged: bool,
             slack: float | None = None) -> dict[str, int]:  # fmt: skip
        """Each paced class's cap, at most its room: the most requests in service plus queued the gate
        admits, as the Limiter's period stage does (engaged: strict; else the whole quota, counting
        only the in-flight beyond ``slack``, the snapshot's ``chance_inflight``; None: unknown, none)."""
        out: dict[str, int] = {}
        gate = self.gate
        for p, level in self.levels.items():
            room = rooms.get(p)
            if room is None:
                continue
            # the gate admits the (k+1)-th request while allows(now, k): monotone in k, so bisect
            lo, hi = 0, room  # allows(lo - 1) holds (vacuously for 0); the answer is in [lo, hi]
            while lo < hi:
                mid = (lo + hi) // 2
                if gate.allows(now, mid, cost_s, level, strict=engaged, slack=math.inf if slack is None else slack):
                    lo = mid + 1
                else:
                    hi = mid
            out[p] = lo
        return out

    def describe(self) -> dict[str, object]:
        g = self.gate
        return {"active": self.active, "quota_s": g.quota_s, "period_s": g.period_s, "margin": g.margin,
                "used_s": g.used_s(), "reads": self.reads, "freezes_engaged": self.freezes}  # fmt: skip
