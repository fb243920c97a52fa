"""The admission stages after the first check, each a small decision over its own state with the clock
passed in (docs/limiter.md, "How it decides"). ``Limiter.admit`` runs them in order:

1. ``CeilingStage`` (always; reason ``queue``): sets each class's in-flight ceiling from the group's
   CPU capacity; admit compares in-flight with it.
2. ``LimitStage`` (engaged): in-flight over the class's share of the algorithm's limit.
3. ``PeriodStage`` (reason ``cpu_period``): the group's current CFS period has no quota left.
4. ``LagStage``: a bypass trigger (the event loop's lag) at its threshold times the class's scale.

A stage that sheds returns what fired, a ``Hot`` ``(trigger, signal_name, value, threshold)``;
``Limiter`` turns it into a ``Rejection``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from flowctl.limiter.engagement import Engagement
from flowctl.limiter.gate import Hot, HotGate, cpu_value
from flowctl.limiter.partitions import Partition, Partitions
from flowctl.limiter.period import PeriodGate
from flowctl.limiter.policy import Policy
from flowctl.limiter.triggers import PolledTrigger, Trigger, polled
from flowctl.signal import BandwidthSignal, CfsBandwidth, CpuSignal

__all__ = ["CeilingStage", "LagStage", "LimitStage", "PeriodStage"]


class CeilingStage:
    """Stage 1: the always-on ceiling from the group's CPU capacity (Little's law).

    ``pipe = capacity_per_s * min_rt_s``: the in-flight the group carries at its CPU capacity
    (``usable_cores / cpu_per_request_s``) without queueing. Each class's ceiling is ``pipe +
    pipe_sigmas * sqrt(pipe)`` (the excess Poisson arrivals bring by chance) plus ``queue_allowance``
    requests (times the class's share when over 1): it needs no hot reading, so the onset of an
    overload is capped before the CPU signal can show it (100-200 ms). Also the busy floor of the
    engaged limit: ``round(min_rt_s / cpu_per_request_s * ceil(usable_cores))``, the requests that
    keep the group's cores busy while it runs (CFS runs a throttled group at full speed, then
    freezes it)."""

    __slots__ = ("policy", "min_rt_s", "busy_floor", "chance")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.min_rt_s: float | None = None  # the last known, for the pipe
        self.busy_floor = 0.0
        self.chance = math.inf  # pipe + pipe_sigmas * sqrt(pipe): in flight by chance at capacity (inf: unknown)

    def update(self, partitions: Partitions, capacity_per_s: float | None, min_rt_s: float | None,
               cost_s: float | None, usable_cores: float | None) -> bool:  # fmt: skip
        """Set every class's ceiling; True when the busy floor changed (the limit must be re-read)."""
        policy = self.policy
        pipe = None
        changed = False
        if capacity_per_s is not None:
            if min_rt_s is None:  # a forgotten window (a quota change): the RT from before still holds
                min_rt_s = self.min_rt_s
            self.min_rt_s = min_rt_s
            pipe = capacity_per_s * min_rt_s if min_rt_s is not None else 0.0
            if not math.isfinite(pipe):  # a cost too small to divide by: no capacity known
                pipe = None
            elif policy.busy_floor and policy.cpu_gate and min_rt_s is not None and cost_s and usable_cores:
                floor = float(round(min_rt_s / cost_s * math.ceil(usable_cores - 1e-9)))
                changed, self.busy_floor = floor != self.busy_floor, floor
        self.chance = math.inf if pipe is None else pipe + policy.pipe_sigmas * math.sqrt(pipe)
        allowance = policy.queue_allowance
        partitions.set_ceiling(self.chance if pipe is not None and allowance is not None else None, allowance)
        return changed


class LimitStage:
    """Stage 2 (engaged): shed when in-flight is at the class's share of the limit and the gate says
    why (hot, or in the cool-off after a shed). A reserve class (critical) is shed here only while its
    ceiling is unknown; while the period gate paces (a quota'd group, ceiling known), this stage
    yields to it: the gate owns the limit there."""

    __slots__ = ("gate", "engagement", "algorithm_name")

    def __init__(self, gate: HotGate, engagement: Engagement, algorithm_name: str) -> None:
        self.gate, self.engagement, self.algorithm_name = gate, engagement, algorithm_name

    def shed(self, now: float, part: Partition, inflight: int, pacing: bool) -> Hot | None:
        if inflight < part.limit or (pacing and part.ceiling != math.inf):
            return None
        if part.reserve and part.ceiling != math.inf:
            return None
        gate = self.gate
        if not gate.policy.cpu_gate:
            return ("limit", self.algorithm_name, None, None)
        hot = gate.hot
        if hot is None and gate.triggers:
            hot = gate.trigger_hot(now)
        if hot is not None:
            return hot
        if self.engagement.cooling(now):
            return ("cool_off", gate.signal_name, cpu_value(gate.signal.reading), gate.policy.cpu_threshold)
        return None

    def triggered(self, now: float) -> Hot | None:
        """Not engaged, over the limit: a non-bypass trigger firing (warn once if CPU is unknown)."""
        gate = self.gate
        gate.warn_unknown_cpu(now)
        return gate.trigger_hot(now) if gate.triggers else None


class PeriodStage:
    """Stage 3: the period gate (``PeriodGate``) on the CFS bandwidth of the signal's group.

    The view supplies the group (``BandwidthSignal.bandwidth``): only the container view has one; the
    host and lxcfs views, a signal without ``bandwidth``, or a group without a quota of its own turn
    the stage off until ``follow`` finds one. So does a group whose usable cores are under its quota:
    its processes cannot spend the quota, so CFS never freezes it. ``own_group``: the group is the one
    this process runs in (in-process, not a sidecar's target), so its freezes are ours."""

    __slots__ = ("policy", "gate", "bandwidth", "quota_at", "pacing", "own_group", "shed_at", "freeze_hooks")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.gate = PeriodGate(policy)
        self.bandwidth: CfsBandwidth | None = None
        self.quota_at = -math.inf  # when to re-read the group's own quota
        self.pacing = False  # a quota to pace by, and the CPU gate on
        self.own_group = False
        self.shed_at = -math.inf  # the last shed of this stage
        self.freeze_hooks: tuple[Callable[[float], None], ...] = ()

    def follow(self, now: float, signal: CpuSignal, usable_cores: float | None, bypass: tuple[Trigger, ...]) -> None:
        """Point the gate at the signal's group and re-read its quota (once a second)."""
        self.quota_at = now + 1.0
        gate = self.gate
        bandwidth = signal.bandwidth() if isinstance(signal, BandwidthSignal) else None
        if bandwidth is not self.bandwidth:  # another group (or none): the gate starts over
            gate.set_quota(None, None)
            self.bandwidth = bandwidth
        quota = bandwidth.quota() if bandwidth is not None else None
        cores = math.ceil(usable_cores - 1e-9) if usable_cores else 1
        if quota is not None and usable_cores and usable_cores < quota[0] / quota[1] - 1e-9:
            quota = None  # the group cannot spend its quota (one Python process in 1.5 CPU): no freeze to pace
        if quota is None:
            gate.set_quota(None, None)
        else:
            gate.set_quota(quota[0], quota[1], cores)
        self.pacing = gate.quota_s is not None and self.policy.cpu_gate
        self.own_group = self.pacing and bandwidth is not None and bandwidth.own_group
        self.set_hooks(bypass)

    def set_hooks(self, bypass: tuple[Trigger, ...]) -> None:
        """The bypass triggers told of a freeze of our own group (``frozen(since)``: a loop-lag monitor)."""
        hooks = (getattr(t, "frozen", None) for t in bypass) if self.own_group else ()
        self.freeze_hooks = tuple(h for h in hooks if callable(h))

    def idle_read_due(self, now: float) -> bool:
        """In-process, read the group's counters this often even with nothing to pace (to see freezes)."""
        return self.own_group and now >= self.gate.read_at + self.policy.idle_read_s

    def read(self, now: float, completions: int, cost_s: float | None) -> float | None:
        """Read the group's counters into the gate; the freeze they show, if any (seconds)."""
        bandwidth = self.bandwidth
        counters = bandwidth.read() if bandwidth is not None else None
        if counters is None:
            return None
        usage_s, periods, throttled, throttled_s = counters
        return self.gate.update(now, usage_s, periods, throttled, completions, cost_s, throttled_s) or None

    def shed(self, now: float, inflight: int, completions: int, cost_s: float | None, level: float,
             engaged: bool, froze: Callable[[float, float], None], slack: float = math.inf) -> bool:  # fmt: skip
        """True when the current period has no quota left for this request. Engaged: with the gate's
        margin and the class's level (pacing). Not engaged: the whole quota, counting the in-flight
        beyond ``slack`` (``CeilingStage.chance``) only."""
        gate = self.gate
        if now >= gate.read_at + self.policy.bandwidth_read_s:
            frozen = self.read(now, completions, cost_s)
            if frozen:
                froze(now, frozen)
        if gate.allows(now, inflight, cost_s, level, strict=engaged, slack=slack):
            return False
        self.shed_at = now
        return True


class LagStage:
    """Stage 4: the bypass triggers (the event loop's lag), engaged or not. Each is polled only when
    its ``quiet_until`` has passed; a class is shed at its scale times ``base_s`` or the trigger's
    threshold, whichever is higher. ``base_s`` (``scale_to``): ``Policy.lag_requests`` requests' CPU, at
    most the cap, which it is while the cost is unknown, and at least one min RT; 0 without
    ``lag_requests``. The cap is ``Policy.lag_cap_s``, and while the last window of arrivals was within
    the capacity (``within``) at least ``Policy.lag_within_requests`` requests' CPU."""

    __slots__ = ("triggers", "polled", "lag_requests", "lag_cap_s", "within_requests", "within", "base_s",
                 "_tight_s", "_loose_s")  # fmt: skip

    def __init__(self, lag_requests: float | None = None, lag_cap_s: float = 0.015,
                 within_requests: float | None = None) -> None:  # fmt: skip
        self.triggers: tuple[Trigger, ...] = ()
        self.polled: tuple[PolledTrigger, ...] = ()
        self.lag_requests = lag_requests
        self.lag_cap_s = lag_cap_s
        self.within_requests = within_requests
        self.within = False  # the last window of arrivals was within the capacity (``relax``)
        self.base_s = self._tight_s = self._loose_s = lag_cap_s if lag_requests is not None else 0.0

    def relax(self, within: bool) -> None:
        """A window of arrivals closed: ``within`` the capacity (``OfferedLoad.within``) or not."""
        self.within = within
        self.base_s = self._loose_s if within else self._tight_s

    def scale_to(self, cost_s: float | None, min_rt_s: float | None = None) -> None:
        """The CPU one request costs and the min RT (seconds; None: unknown). The budget is at least one
        min RT: a wait as long as an unqueued request takes is within the p99 target's scale (a handler
        that waits on I/O has a min RT well over its CPU)."""
        n, cap, m = self.lag_requests, self.lag_cap_s, self.within_requests
        if n is None:
            tight = loose = 0.0
        else:
            tight = loose = cap if cost_s is None else min(cap, n * cost_s)
            if cost_s is not None and m is not None:
                loose = min(max(cap, m * cost_s), n * cost_s)
            if min_rt_s is not None:
                tight, loose = max(tight, min_rt_s), max(loose, min_rt_s)
        self._tight_s, self._loose_s = tight, loose
        self.base_s = loose if self.within else tight

    def set(self, triggers: tuple[Trigger, ...]) -> None:
        self.triggers = triggers
        self.polled = polled(triggers)

    def shed(self, now: float, part: Partition) -> Hot | None:
        for t in self.polled:
            if now >= t.quiet_until:  # else its check would return None: no call
                v = t.check(now)
                if v is not None:
                    base = self.base_s
                    if t.threshold > base:
                        base = t.threshold
                    threshold = base * part.trigger_scale
                    if v >= threshold:
                        return (t.name, t.name, v, threshold)
        return None
