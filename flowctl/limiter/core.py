"""``Limiter``: admission in four stages, in order (docs/limiter.md, "How it decides").

1. ``ceiling`` (always; reason ``queue``): in-flight has reached the class's ceiling, the group's
   CPU capacity (usable cores / CPU per request) times min RT plus ``Policy.queue_allowance``
   requests (``_set_ceiling``). It needs no CPU reading and starts no cool-off.
2. ``limit`` (engaged; reason: what is hot, ``cool_off``, or ``limit`` when ungated): in-flight would
   exceed the class's share of the algorithm's limit (floored by ``busy_floor``). A ``reserve``
   class (critical) is not shed here.
3. ``period`` (reason ``cpu_period``): the group's current CFS period has no quota left for the
   request (``PeriodGate``; engaged it paces, not engaged only a spent quota sheds).
4. ``lag``: a bypass ``Trigger`` (the event loop's lag) at its threshold times the class's
   ``trigger_scale``, engaged or not.

The limiter is *engaged* while hot (``HotGate``: the CPU reading against the ``Policy``, judged once
per new reading; a long CFS freeze too) and for ``cool_off_s`` after the last shed that is not a
ceiling shed; a clearly cool reading ends that early. One admission path: ``admit(slot)``;
``acquire`` is ``admit`` plus a ``Token``, and a Token's releases are the limiter's
``success / ignore / dropped``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from flowctl.errors import ConfigError
from flowctl.limit.base import LimitAlgorithm
from flowctl.limiter.cost import CpuCost
from flowctl.limiter.decisions import Decision, DryRunStart, Rejection, Token, new_reason
from flowctl.limiter.gate import Hot, HotGate, cpu_value
from flowctl.limiter.period import PeriodGate
from flowctl.limiter.partitions import DEFAULT_PRIORITIES, Partitions, PriorityClass, Slot
from flowctl.limiter.policy import DEFAULT_POLICY, Policy
from flowctl.limiter.snapshot import LimiterSnapshot
from flowctl.limiter.triggers import PolledTrigger, Trigger, polled
from flowctl.signal import BandwidthSignal, CfsBandwidth, CpuSignal

__all__ = ["Limiter"]

_new_token = object.__new__  # Token(...) without the __init__ frame, on acquire's admitted path
_new_dry_start = float.__new__


def _default_signal() -> CpuSignal:
    """The container CPU signal (a Sampler), created but not started: its owner starts it."""
    from flowctl.cpu import make_signal

    return make_signal("container")


def _default_algorithm() -> LimitAlgorithm:
    from flowctl.limit.bbr import Bbr

    return Bbr()


class Limiter:
    """BBR-style admission gated by a CPU signal, with priorities, triggers and reasons.

    ``signal=None`` creates the container CPU signal (``flowctl.cpu.make_signal``)
    without starting it: the caller owns sampling (``async with limiter.signal``).
    Until the signal has a reading, CPU is unknown and counts as not hot.
    ``algorithm`` defaults to ``flowctl.limit.bbr.Bbr()``. ``cpu_gate=False``
    makes the limiter "always hot": a plain concurrency limiter (reason
    ``"limit"``), as the Fixed and Gradient peers run in the benchmarks.

    Not thread-safe: use it from one thread (one event loop). Per-request work is a
    few integer updates; counters are exported by reading ``snapshot()`` at scrape time.
    """

    def __init__(
        self,
        signal: CpuSignal | None = None,
        algorithm: LimitAlgorithm | None = None,
        *,
        policy: Policy = DEFAULT_POLICY,
        priorities: Mapping[str, PriorityClass] = DEFAULT_PRIORITIES,
        triggers: Sequence[Trigger] = (),
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a flowctl.limiter.Policy, got {policy!r}")
        self._partitions = Partitions(priorities, policy.default_priority, policy.max_resources)
        self._lookup = self._partitions.lookup
        self.dry_run = bool(dry_run)
        self._clock = clock
        self._created_at = clock()
        self._gate = HotGate(_default_signal() if signal is None else signal, policy, self._created_at)
        self.algorithm: LimitAlgorithm = _default_algorithm() if algorithm is None else algorithm
        self._max_inflight = self.algorithm.max_inflight
        self._on_sample = self.algorithm.on_sample
        self._rescale: Callable[[float], None] | None = getattr(self.algorithm, "rescale", None)
        self._set_servers: Callable[[float], None] | None = getattr(self.algorithm, "set_servers", None)
        self._limit_cores: float | None = None  # the last reading's usable cores, to see changes
        self._bypass: tuple[Trigger, ...] = ()
        self._freeze_hooks: tuple[Callable[[float], None], ...] = ()  # set while the gate reads its own group
        self._own_group = False
        self._polled: tuple[PolledTrigger, ...] = ()  # what admit polls: each has quiet_until
        self._limit = -1.0
        self._busy_floor = 0.0  # the engaged limit's floor: round(min RT / CPU per request x cores)
        self._rate: float | None = None
        self._rate_stale = True
        self._refresh_at = -math.inf
        self._inflight = 0
        self._cool_off_until = -math.inf  # last drop + cool_off_s; -inf until the first drop
        self._engaged_until = -math.inf  # +inf while hot, else the cool-off's end
        self._period_shed_at = -math.inf  # the last period-gate shed
        self._sheds_seen = 0  # sheds (and dry-run would-sheds) as of the last observed reading
        self._queue_sheds = 0  # ceiling and bypass-trigger sheds, and how many the last reading had seen
        self._queue_sheds_seen = 0
        self._observed_at = -math.inf  # when the last new reading was observed
        self._cost = CpuCost()
        self._min_rt_s: float | None = None  # the last known, for the ceiling's pipe
        self._bandwidth: CfsBandwidth | None = None  # the signal's group, read per paced admission
        self._quota_at = -math.inf  # when to re-read the group's own quota
        self._pacing = False  # the period gate has a quota to pace by
        self._admits = 0  # admissions ever (completions = admissions - in-flight), for the gate's overhead
        self._tokens_leaked = 0
        self._period: PeriodGate | None = None
        self._policy = policy
        self._apply(policy)
        self._refresh(self._created_at)
        for t in triggers:
            self.add_trigger(t)

    # -- configuration ------------------------------------------------------------

    @property
    def signal(self) -> CpuSignal:
        """The CPU signal the gate reads (its name is read once, when set)."""
        return self._gate.signal

    @signal.setter
    def signal(self, signal: CpuSignal) -> None:
        self._gate.signal = signal
        self._engaged_until = self._cool_off_until

    @property
    def policy(self) -> Policy:
        """Every constant of admission (``flowctl.limiter.Policy``). Setting a new one applies it at
        once; ``default_priority`` and ``max_resources`` cannot change after construction."""
        return self._policy

    @policy.setter
    def policy(self, value: Policy) -> None:
        if not isinstance(value, Policy):
            raise ConfigError(f"policy must be a flowctl.limiter.Policy, got {value!r}")
        old = self._policy
        if (value.default_priority, value.max_resources) != (old.default_priority, old.max_resources):
            raise ConfigError("default_priority and max_resources are fixed when the Limiter is built")
        self._policy = value
        self._apply(value)
        self._engaged_until = self._cool_off_until

    def _apply(self, policy: Policy) -> None:
        """Copy the policy into the attributes the hot path reads."""
        self._gate.policy = policy
        self._may_shed = True  # the gate starts over: busy until readings say otherwise
        self._cool_off_s = policy.cool_off_s
        self._retry_floor_s = max(policy.cool_off_s, policy.min_retry_after_s)
        self.limit_refresh_s = policy.limit_refresh_s
        self.queue_allowance = policy.queue_allowance
        self.busy_floor = policy.busy_floor
        if policy.period_gate:
            if self._period is None:
                self._period = PeriodGate(policy)
                self._quota_at = -math.inf
        else:
            self._period = None
            self._pacing = self._own_group = False
        self._refresh_at = -math.inf

    @property
    def period_gate(self) -> PeriodGate | None:
        """The period gate pacing admissions while engaged (None: off), for its state."""
        return self._period

    @property
    def cool_off_s(self) -> float:
        """Seconds after the last shed during which in-flight above the limit is still shed."""
        return self._cool_off_s

    @property
    def max_resources(self) -> int:
        return self._partitions.max_resources

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        """Every configured trigger, non-bypass first."""
        return self._gate.triggers + self._bypass

    def add_trigger(self, trigger: Trigger) -> None:
        """Add an extra shedding signal (its ``bypass_inflight`` is read now)."""
        if not isinstance(trigger, Trigger):
            raise ConfigError(f"{trigger!r} does not implement the Trigger protocol")
        if trigger.bypass_inflight:
            self._bypass = (*self._bypass, trigger)
            self._polled = polled(self._bypass)
            self._set_freeze_hooks()
        else:
            self._gate.set_triggers((*self._gate.triggers, trigger))

    def remove_trigger(self, trigger: Trigger) -> None:
        """Remove a trigger added before (no-op when absent)."""
        self._gate.set_triggers(tuple(t for t in self._gate.triggers if t is not trigger))
        self._bypass = tuple(t for t in self._bypass if t is not trigger)
        self._polled = polled(self._bypass)
        self._set_freeze_hooks()

    @property
    def inflight(self) -> int:
        """Admitted and not yet released requests, tokens and slot admits (all priorities and resources)."""
        return self._inflight

    @property
    def priorities(self) -> tuple[str, ...]:
        """The configured priority class names (``PRIORITIES`` unless ``priorities=`` was given)."""
        return tuple(self._partitions.by_name)

    @property
    def default_priority(self) -> str:
        """The class a request is counted in when its priority is None or unknown."""
        return self._partitions.default.name

    # -- admission ----------------------------------------------------------------

    def slot(self, resource: str = "default", priority: str | None = None) -> Slot:
        """The handle ``admit`` takes for this pair, resolved once. ``priority`` None means the
        ``default_priority``; a name that is not a configured class counts as the default class.
        Names are bounded: past ``max_resources`` resources, new ones share ``OTHER_RESOURCE``."""
        slot = self._lookup.get((resource, priority))
        return slot if slot is not None else self._partitions.resolve(resource, priority)

    def acquire(self, priority: str | None = None, resource: str = "default") -> Decision:
        """Admit (a ``Token``) or shed (a ``Rejection`` with its ``Reason``). Never raises.

        ``admit`` plus a Token: for callers that cannot keep a slot (see ``slot``).
        """
        slot = self._lookup.get((resource, priority))
        if slot is None:
            slot = self._partitions.resolve(resource, priority)
        start = self.admit(slot)
        if start.__class__ is float:
            # Token(self, slot, start) without the __init__ frame
            token = _new_token(Token)
            token._limiter = self
            token._slot = slot
            token.start = start
            token.reason = None
            return token
        if isinstance(start, DryRunStart):
            return Token(self, slot, float(start), start.reason)
        return start  # type: ignore[return-value]

    def admit(self, slot: Slot) -> float | Rejection:
        """The admission time (a float, clock seconds) or a ``Rejection``. Never raises.

        An admitted request must be released exactly once with ``success``, ``ignore`` or
        ``dropped`` given the same slot and that time: nothing releases it for the caller. A
        dry-run "would shed" is admitted: its time is a ``DryRunStart`` carrying the reason.
        """
        now = self._clock()
        gate = self._gate
        if gate._signal.reading is not gate.seen:
            self._observe(now)
        inflight = self._inflight
        if self._may_shed:  # stages 1-3 shed only while the group looks busy (Policy.busy_fraction)
            if inflight >= slot.partition.ceiling:
                self._queue_sheds += 1
                return self._shed(now, slot, inflight, "queue", gate.signal_name, inflight, slot.partition.ceiling,
                                  False, "ceiling")  # fmt: skip
            if now < self._engaged_until:
                decision = self._engaged(now, slot, inflight)
                if decision is not None:
                    return decision
            elif inflight or (self._own_group and now >= self._period.read_at + self._policy.idle_read_s):  # type: ignore[union-attr]
                if self._pacing and not slot.partition.reserve:
                    decision = self._paced(now, slot, inflight, False)
                    if decision is not None:
                        return decision
                if inflight >= slot.partition.limit and (gate.triggers or gate.seen.utilization is None):  # type: ignore[union-attr]
                    decision = self._triggered(now, slot, inflight)
                    if decision is not None:
                        return decision
        elif self._own_group and now >= self._period.read_at + self._policy.idle_read_s:  # type: ignore[union-attr]
            self._read_bandwidth(now, inflight)  # not busy: no shed, but a freeze still tells the lag stage
        for t in self._polled:  # the loop-lag trigger (written out: no helper frame)
            if now >= t.quiet_until:  # else its check would return None: no call
                v = t.check(now)
                if v is not None:
                    threshold = t.threshold * slot.partition.trigger_scale
                    if v >= threshold:
                        self._queue_sheds += 1  # a late event loop: work queues too
                        return self._shed(now, slot, inflight, t.name, t.name, v, threshold, True, "lag")
        self._inflight = inflight + 1
        self._admits += 1
        slot.admitted += 1
        return now

    def success(self, slot: Slot, start: float) -> float:
        """Release a request admitted at ``start``; it completed: its RT feeds the algorithm.

        Returns that RT in seconds (``start`` to now, on the limiter's clock).
        """
        now = self._clock()
        inflight = self._inflight
        self._inflight = inflight - 1
        slot.released += 1
        rt_s = now - start
        self._on_sample(now, rt_s, inflight, False)
        return rt_s

    def ignore(self, slot: Slot, start: float) -> float:
        """Release a request admitted at ``start``; it failed for its own reasons: the RT is not
        fed to the algorithm. Returns the RT all the same (for the caller's metrics)."""
        self._inflight -= 1
        slot.released += 1
        return self._clock() - start

    def dropped(self, slot: Slot, start: float) -> float:
        """Release a request admitted at ``start``; it timed out or was dropped downstream: the
        algorithm is told. Returns its RT in seconds."""
        now = self._clock()
        inflight = self._inflight
        self._inflight = inflight - 1
        slot.released += 1
        rt_s = now - start
        self._on_sample(now, rt_s, inflight, True)
        return rt_s

    def _observe(self, now: float) -> None:
        """A new CPU reading: judge it (hot or not), learn the CPU cost, set the ceiling (once per reading)."""
        gate = self._gate
        r = gate._signal.reading
        hot = gate.observe(r, self._queue_sheds != self._queue_sheds_seen)
        self._queue_sheds_seen = self._queue_sheds
        self._may_shed = gate.busy or not gate.policy.cpu_gate
        pacing = self._period_shed_at >= self._observed_at  # and the period gate
        if not gate.policy.cpu_gate:
            self._engaged_until = math.inf
        elif hot is not None:
            self._engaged_until = math.inf
        else:
            if now < self._cool_off_until and gate.clearly_cool(r, settled=pacing):
                self._cool_off_until = now  # clearly cool: the load fits
            self._engaged_until = self._cool_off_until
        self._observed_at = now
        limit_cores = r.cores  # the usable cores: the quota, or less when the group cannot use it all
        if limit_cores:
            last = self._limit_cores
            if last and abs(limit_cores / last - 1.0) > self._policy.rescale_fraction and self._rescale is not None:
                self._rescale(limit_cores / last)
                self._refresh_at = -math.inf
            if limit_cores != last and self._set_servers is not None:
                self._set_servers(math.ceil(limit_cores - 1e-9))  # min RT from requests that did not queue
            self._limit_cores = limit_cores
        done = shed = 0
        for slot in self._partitions.slots.values():
            done += slot.released
            shed += slot.shed + slot.dry_run_shed
        quiet, self._sheds_seen = shed == self._sheds_seen, shed  # nothing shed since the last reading
        self._cost.observe(r.at, r.usage_cores, done, consecutive=gate.consecutive, learn=quiet)
        self._set_ceiling(now, limit_cores)
        if self._period is not None and now >= self._quota_at:
            self._follow_bandwidth(now, limit_cores)

    def _follow_bandwidth(self, now: float, limit_cores: float | None) -> None:
        """Point the period gate at the CFS bandwidth the signal's view has, and re-read its own
        quota (once a second).

        The view supplies it (``BandwidthSignal.bandwidth``): only the container view has a group
        to read; the host and lxcfs views, a signal without ``bandwidth``, or a group without a quota
        of its own turn the gate off until this finds one. So does a group whose usable cores are
        under its quota: its processes cannot spend the quota, so CFS never freezes it."""
        self._quota_at = now + 1.0
        period = self._period
        assert period is not None
        signal = self._gate.signal
        bandwidth = signal.bandwidth() if isinstance(signal, BandwidthSignal) else None
        if bandwidth is not self._bandwidth:  # another group (or none): the gate starts over
            period.set_quota(None, None)
            self._bandwidth = bandwidth
        quota = bandwidth.quota() if bandwidth is not None else None
        cores = math.ceil(limit_cores - 1e-9) if limit_cores else 1
        if quota is not None and limit_cores and limit_cores < quota[0] / quota[1] - 1e-9:
            quota = None  # the group cannot spend its quota (one Python process in 1.5 CPU): no CFS freeze to pace
        if quota is None:
            period.set_quota(None, None)
        else:
            period.set_quota(quota[0], quota[1], cores)
        self._pacing = period.quota_s is not None and self._gate.policy.cpu_gate
        # The group is the one this process runs in (in-process, not a sidecar's target): its freezes are ours.
        self._own_group = self._pacing and bandwidth is not None and bandwidth.own_group
        self._set_freeze_hooks()

    def _set_freeze_hooks(self) -> None:
        """The bypass triggers told of a CFS freeze of our own group (``frozen(since)``: a loop-lag monitor)."""
        hooks = (getattr(t, "frozen", None) for t in self._bypass) if self._own_group else ()
        self._freeze_hooks = tuple(h for h in hooks if callable(h))

    def _set_ceiling(self, now: float, limit_cores: float | None) -> None:
        """The always-on ceiling from the group's CPU capacity (Little's law) plus the queue allowance.

        ``pipe = capacity_per_s * min_rt_s``: the in-flight the group carries at its CPU capacity
        (``limit_cores / cpu_per_request_s``) without queueing; each request beyond it waits about
        ``cpu_per_request_s / limit_cores`` more. The ceiling bounds that wait to ``queue_allowance``
        requests' worth, at once: it needs no hot reading, so the onset of an overload is capped
        before the CPU signal can show it (100-200 ms), and it sheds nothing at a load the group
        carries without queueing that deep. Also sets the busy floor of the engaged limit:
        ``round(min_rt_s / cpu_per_request_s * ceil(limit_cores))``, the requests that keep the
        group's cores busy while it runs (CFS runs a throttled group at full speed, then freezes it).
        """
        capacity = self._cost.capacity_per_s(limit_cores)
        pipe = None
        if capacity is not None:
            min_rt = self.algorithm.stats(now).min_rt_s
            if min_rt is None:  # a forgotten window (a quota change): the RT from before still holds
                min_rt = self._min_rt_s
            self._min_rt_s = min_rt
            pipe = capacity * min_rt if min_rt is not None else 0.0
            cost = self._cost.cpu_per_request_s
            if self.busy_floor and self._gate.policy.cpu_gate and min_rt is not None and cost and limit_cores:
                # While a throttled group runs, it runs at full speed on up to ceil(limit) cores.
                floor = float(round(min_rt / cost * math.ceil(limit_cores - 1e-9)))
                if floor != self._busy_floor:
                    self._busy_floor = floor
                    self._refresh_at = -math.inf
        self._partitions.set_ceiling(pipe if self.queue_allowance is not None else None, self.queue_allowance,
                                     self._policy.pipe_sigmas)

    def _engaged(self, now: float, slot: Slot, inflight: int) -> float | Rejection | None:
        """Hot or cooling off: shed over the priority's limit, or when the period gate has no quota left; else None."""
        if inflight and now >= self._refresh_at:
            self._refresh(now)
        part = slot.partition
        gate = self._gate
        pacing = self._pacing and gate.policy.cpu_gate
        paced = part.ceiling != math.inf and pacing
        if inflight >= part.limit and not paced and (not part.reserve or part.ceiling == math.inf):
            if not gate.policy.cpu_gate:
                return self._shed(now, slot, inflight, "limit", self.algorithm.name, None, None)
            hot: Hot | None = gate.hot
            if hot is None and gate.triggers:
                hot = gate.trigger_hot(now)
            if hot is not None:
                return self._shed(now, slot, inflight, *hot)
            if now < self._cool_off_until:
                th = gate.policy.cpu_threshold
                return self._shed(now, slot, inflight, "cool_off", gate.signal_name, cpu_value(gate.signal.reading), th)
        if pacing and not part.reserve:
            decision = self._paced(now, slot, inflight, True)
            if decision is not None:
                return decision
        return None

    def _paced(self, now: float, slot: Slot, inflight: int, engaged: bool) -> Rejection | DryRunStart | None:
        """The period gate: shed when the group's current CFS period has no quota left for this request.

        Engaged: with the gate's margin and the class's level, as pacing; the shed restarts the
        cool-off (pacing holds through a reading that dips under the threshold), and while the
        gate sheds, only a reading whose smoothed value is clearly cool too ends it early (one
        100 ms dip would end pacing mid-overload): the gate keeps the group near its quota, not
        cool, so a settled cool reading means the load fell. Not engaged: only
        when the period's whole quota is spent (a request admitted now would wait for the next
        period); that is queue evidence for the hot gate and starts no cool-off. A reserve class
        (critical) is never shed here: only at its ceiling."""
        period = self._period
        assert period is not None
        cost = self._cost.cpu_per_request_s
        if now >= period.read_at + self._policy.bandwidth_read_s:
            self._read_bandwidth(now, inflight)
        if period.allows(now, inflight, cost, slot.partition.level, strict=engaged):
            return None
        if not engaged:
            self._queue_sheds += 1
        return self._shed(now, slot, inflight, "cpu_period", self._gate.signal_name, period.used_s(), period.quota_s,
                          engaged, "period")  # fmt: skip

    def _read_bandwidth(self, now: float, inflight: int) -> None:
        """Read the group's counters into the period gate; a freeze they show goes to ``_froze``."""
        period, bandwidth = self._period, self._bandwidth
        if period is None or bandwidth is None:
            return
        counters = bandwidth.read()
        if counters is not None:
            usage_s, periods, throttled, throttled_s = counters
            cost = self._cost.cpu_per_request_s
            frozen = period.update(now, usage_s, periods, throttled, self._admits - inflight, cost, throttled_s)
            if frozen:
                self._froze(now, frozen, period.period_s)

    def _froze(self, now: float, frozen_s: float, period_s: float | None) -> None:
        """The group was frozen ``frozen_s`` until about ``now`` (its period's quota was spent):
        when it took ``Policy.freeze_engages`` of the period or more, the load does not fit, so the
        limiter engages (a cool-off, as a shed starts one) and paces from the next period on (a
        short freeze at the end of a busy period is Poisson noise: at 0.9x it happens). When the
        group is our own (in-process), the loop-lag trigger counts any freeze as lag (``frozen``),
        so the requests read right after it, which waited through it, are shed as late when it
        was long enough."""
        if period_s and frozen_s >= self._policy.freeze_engages * period_s:
            self._cool_off_until = until = now + self._cool_off_s
            if until > self._engaged_until:
                self._engaged_until = until
        for hook in self._freeze_hooks:
            hook(now - frozen_s)

    def _triggered(self, now: float, slot: Slot, inflight: int) -> float | Rejection | None:
        """Not engaged but over the limit: shed if a non-bypass trigger fires (warn if CPU is unknown)."""
        if now >= self._refresh_at:
            self._refresh(now)
        if inflight < slot.partition.limit:
            return None
        gate = self._gate
        gate.warn_unknown_cpu(now)
        hot = gate.trigger_hot(now) if gate.triggers else None
        if hot is not None:
            return self._shed(now, slot, inflight, *hot)
        return None

    def _shed(
        self,
        now: float,
        slot: Slot,
        inflight: int,
        trigger: str,
        signal_name: str,
        value: float | None,
        threshold: float | None,
        cool: bool = True,
        stage: str = "limit",
    ) -> Rejection | DryRunStart:
        """Record a shed (a Rejection) or a dry-run would-shed (admitted at ``now``, a
        ``DryRunStart``), restart the cool-off (unless ``cool`` is False: a ceiling shed), build
        the reason."""
        part = slot.partition
        limit = part.limit
        # Retry-After: the cool-off (shedding goes on that long after this drop), or the
        # time to drain the excess in-flight at the best observed rate if longer; >= 0.1 s.
        retry = self._retry_floor_s
        excess = inflight + 1 - limit
        if excess > 0:
            if self._rate_stale:  # once per limit refresh, and only when shedding
                self._rate_stale = False
                self._rate = self.algorithm.stats(now).max_pass_per_s
            rate = self._rate
            if rate and excess / rate > retry:
                retry = excess / rate
        dry_run = self.dry_run
        reason = new_reason(
            {
                "trigger": trigger,
                "stage": stage,
                "signal_name": signal_name,
                "signal_value": value,
                "threshold": threshold,
                "inflight": inflight,
                "max_inflight": self._limit,
                "priority": part.name,
                "resource": slot.resource,
                "cool_off": now < self._cool_off_until,
                "retry_after_s": retry,
                "dry_run": dry_run,
                "priority_limit": limit,
            }
        )
        if trigger == "cpu_period":
            self._period_shed_at = now
        if cool:
            self._cool_off_until = until = now + self._cool_off_s
            if until > self._engaged_until:
                self._engaged_until = until
        if not dry_run:
            slot.shed += 1
            by = slot.shed_by
            by[trigger] = by.get(trigger, 0) + 1
            return Rejection(reason)
        slot.dry_run_shed += 1
        by = slot.dry_by
        by[trigger] = by.get(trigger, 0) + 1
        self._inflight = inflight + 1
        start: DryRunStart = _new_dry_start(DryRunStart, now)
        start.reason = reason
        return start

    def _refresh(self, now: float) -> None:
        """Re-read the algorithm's limit (at most every ``limit_refresh_s``) and the class limits."""
        self._refresh_at = now + self.limit_refresh_s
        self._rate_stale = True
        limit = self._max_inflight(now)
        if limit < self._busy_floor:
            limit = self._busy_floor
        if limit != self._limit:
            self._limit = limit
            self._partitions.set_limit(limit)

    # -- state --------------------------------------------------------------------

    def observe(self) -> None:
        """Take in the signal's latest reading (if not yet seen) and re-read the algorithm's limit, as
        admission does on its own before deciding; for callers with no request to admit (tests)."""
        now = self._clock()
        if self._gate._signal.reading is not self._gate.seen:
            self._observe(now)
        self._refresh(now)

    def snapshot(self) -> LimiterSnapshot:
        """A consistent copy of the current state (O(resources x priorities), not for the hot path).

        Only reads: a scrape never feeds admission (the reading the limiter last observed, the
        limit it last refreshed)."""
        now = self._clock()
        stats = self.algorithm.stats(now)
        by_prio = {name: 0 for name in self._partitions.by_name}
        by_res: dict[str, int] = {}
        requests: dict[tuple[str, str, str], int] = {}
        shed_by: dict[tuple[str, str], int] = {}
        dry_by: dict[tuple[str, str], int] = {}
        for slot in self._partitions.slots.values():
            prio = slot.partition.name
            res = slot.resource
            for trigger, n in slot.shed_by.items():
                shed_by[(res, trigger)] = shed_by.get((res, trigger), 0) + n
            for trigger, n in slot.dry_by.items():
                dry_by[(res, trigger)] = dry_by.get((res, trigger), 0) + n
            by_prio[prio] += slot.inflight
            by_res[res] = by_res.get(res, 0) + slot.inflight
            requests[(res, prio, "admitted")] = slot.admitted
            requests[(res, prio, "shed")] = slot.shed
            requests[(res, prio, "dry_run_shed")] = slot.dry_run_shed
        hot = self._gate.every_hot(now)
        trig: dict[str, float | None] = {}
        for t in self.triggers:
            v = t.check(now)
            trig[t.name] = v
            if v is not None and v >= t.threshold and t.name not in hot:
                hot.append(t.name)
        cool_until = None if self._cool_off_until == -math.inf else self._cool_off_until
        return LimiterSnapshot(
            at=now,
            inflight=self._inflight,
            inflight_by_priority=by_prio,
            inflight_by_resource=by_res,
            max_inflight=stats.max_inflight,
            priority_limits=self._partitions.limits(),
            min_rt_s=stats.min_rt_s,
            max_pass_per_s=stats.max_pass_per_s,
            warm=stats.warm,
            algorithm=self.algorithm.name,
            cpu=self._gate.signal.reading,
            signal_name=self._gate.signal_name,
            hot=bool(hot),
            hot_triggers=tuple(hot),
            cool_off=now < self._cool_off_until,
            cool_off_until=cool_until,
            requests=requests,
            shed_by_reason=shed_by,
            dry_run_shed_by_reason=dry_by,
            dry_run=self.dry_run,
            tokens_leaked=self._tokens_leaked,
            triggers=trig,
            priority_ceilings=self._partitions.ceilings(),
            cpu_per_request_s=self._cost.cpu_per_request_s,
            period_margin=self._period.margin if self._period is not None and self._pacing else None,
            period_overhead_s=self._period.overhead_s if self._period is not None and self._pacing else None,
        )

    def __repr__(self) -> str:
        return (
            f"Limiter(signal={self._gate.signal_name!r}, algorithm={self.algorithm!r}, "
            f"cpu_threshold={self._policy.cpu_threshold}, inflight={self._inflight}, dry_run={self.dry_run})"
        )
