"""``Limiter``: admission in four stages, in order (docs/limiter.md, "How it decides"):
``ceiling``, ``limit`` (engaged), ``period``, ``lag`` (``flowctl.limiter.stages``). The limiter
is *engaged* (``flowctl.limiter.engagement``) while hot (``HotGate``: the CPU reading against the
``Policy``, judged once per new reading) and for ``cool_off_s`` after the last shed that is not a
ceiling shed. One admission path: ``admit(slot)``; ``acquire`` is ``admit`` plus a ``Token``, and
a Token's releases are the limiter's ``success / ignore / dropped``.
"""

from __future__ import annotations

import math

from flowctl.limiter.base import LimiterBase
from flowctl.limiter.decisions import Decision, DryRunStart, Rejection, Token, new_reason
from flowctl.limiter.gate import Hot
from flowctl.limiter.partitions import Slot
from flowctl.limiter.snapshot import LimiterSnapshot, snapshot_of

__all__ = ["Limiter"]

_new_token = object.__new__  # Token(...) without the __init__ frame, on acquire's admitted path
_new_dry_start = float.__new__


class Limiter(LimiterBase):
    """BBR-style admission gated by a CPU signal, with priorities, triggers and reasons.

    ``Limiter(signal=None, algorithm=None, *, policy, priorities, triggers, dry_run, clock)``.
    ``signal=None`` creates the container CPU signal (``flowctl.cpu.make_signal``)
    without starting it: the caller owns sampling (``async with limiter.signal``).
    Until the signal has a reading, CPU is unknown and counts as not hot.
    ``algorithm`` defaults to ``flowctl.limit.bbr.Bbr()``. ``Policy(cpu_gate=False)``
    makes the limiter "always hot": a plain concurrency limiter (reason ``"limit"``),
    as the Fixed and Gradient peers run in the benchmarks.

    Not thread-safe: use it from one thread (one event loop). Per-request work is a
    few integer updates; counters are exported by reading ``snapshot()`` at scrape time.
    """

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

        The stages run in order (``flowctl.limiter.stages``): ceiling, limit (engaged), period, lag.
        An admitted request must be released exactly once with ``success``, ``ignore`` or
        ``dropped`` given the same slot and that time: nothing releases it for the caller. A
        dry-run "would shed" is admitted: its time is a ``DryRunStart`` carrying the reason.
        """
        now = self._clock()
        gate = self._gate
        if gate._signal.reading is not gate.seen:
            self._observe(now)
        offered = self._offered
        period = self._period
        if now >= offered.until or offered.count > offered.over_count:
            if offered.close(now) and gate._policy.cpu_gate:
                self._engagement.restart(now, "offered")  # arrivals over capacity by more than chance
            if period is not None:  # a request waits for the next period only while arrivals fit the capacity
                period.gate.wait_budget_s = self._wait_s if offered.within else 0.0
            self._lag.relax(offered.within)  # the lag budget: looser while arrivals fit the capacity
        offered.count += 1
        inflight = self._inflight
        part = slot.partition
        if self._may_shed:  # stages 1-3 shed only while the group looks busy (Policy.busy_fraction)
            if inflight >= part.ceiling:  # 1. ceiling
                self._queue_sheds += 1
                return self._shed(now, slot, inflight, ("queue", gate.signal_name, inflight, part.ceiling), False,
                                  "ceiling")  # fmt: skip
            pacing = period is not None and period.pacing and self._policy.cpu_gate
            engaged = now < self._engagement.until
            if engaged:  # 2. limit
                if inflight and now >= self._refresh_at:
                    self._refresh(now)
                hot = self._limit_stage.shed(now, part, inflight, pacing)
                if hot is not None:
                    return self._shed(now, slot, inflight, hot)
            if pacing and not part.reserve and (engaged or inflight or period.idle_read_due(now)):  # type: ignore[union-attr]
                # 3. period
                if period.shed(now, inflight, self._admits - inflight, self._cost.cpu_per_request_s,  # type: ignore[union-attr]
                               part.level, engaged, self._froze, self._ceiling.chance):  # fmt: skip
                    if not engaged:
                        self._queue_sheds += 1
                    gp = period.gate  # type: ignore[union-attr]
                    return self._shed(now, slot, inflight, ("cpu_period", gate.signal_name, gp.used_s(), gp.quota_s),
                                      engaged, "period")  # fmt: skip
            if not engaged and inflight >= part.limit and (gate.triggers or gate.seen.utilization is None):  # type: ignore[union-attr]
                if now >= self._refresh_at:
                    self._refresh(now)
                hot = self._limit_stage.triggered(now) if inflight >= part.limit else None
                if hot is not None:
                    return self._shed(now, slot, inflight, hot)
        elif period is not None and period.idle_read_due(now):
            frozen = period.read(now, self._admits - inflight, self._cost.cpu_per_request_s)
            if frozen:  # not busy: no shed, but a freeze still tells the lag stage
                self._froze(now, frozen)
        if self._lag.polled:  # 4. lag
            hot = self._lag.shed(now, part)
            if hot is not None:
                self._queue_sheds += 1  # a late event loop: work queues too
                return self._shed(now, slot, inflight, hot, True, "lag")
        self._inflight = inflight + 1
        self._admits += 1
        slot.admitted += 1
        return now

    def success(self, slot: Slot, start: float) -> float:
        """Release a request admitted at ``start``; it completed: its RT feeds the algorithm.
        Returns that RT in seconds (``start`` to now, on the limiter's clock)."""
        now = self._clock()
        inflight = self._inflight
        self._inflight = inflight - 1
        slot.released += 1
        slot.completed += 1
        rt_s = now - start
        self._on_sample(now, rt_s, inflight, False)
        return rt_s

    def completed(self, slot: Slot, count: int, rt_s: float, inflight: int) -> None:
        """Record ``count`` requests that another admitter (a data plane such as HAProxy) admitted and
        completed, each after ``rt_s`` seconds, with ``inflight`` in service as they left: the algorithm
        and the CPU cost learn from them as from ``success``. No stage runs and the limiter's own
        in-flight count is left as it is. O(count), a few times cheaper per request than admit+success."""
        if count <= 0:
            return
        now = self._clock()
        slot.admitted += count
        slot.released += count
        slot.completed += count
        self._admits += count
        on_sample = self._on_sample
        for _ in range(count):
            on_sample(now, rt_s, inflight, False)

    def ignore(self, slot: Slot, start: float) -> float:
        """Release a request admitted at ``start``; it failed for its own reasons: the RT is not
        fed to the algorithm, nor is it a completion for the CPU cost. Returns the RT all the same
        (for the caller's metrics)."""
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
        slot.completed += 1
        self._on_sample(now, now - start, inflight, True)
        return now - start

    def _observe(self, now: float) -> None:
        """A new CPU reading: judge it (hot or not), learn the CPU cost, set the ceiling (once per reading)."""
        gate = self._gate
        r = gate._signal.reading
        hot = gate.observe(r, self._queue_sheds != self._queue_sheds_seen)
        self._queue_sheds_seen = self._queue_sheds
        self._may_shed = gate.busy or not gate.policy.cpu_gate
        period = self._period
        if not gate.policy.cpu_gate:
            self._engagement.always()
        else:
            # While the period gate sheds, only a settled cool reading ends the cool-off early.
            settled = period is not None and period.shed_at >= self._observed_at
            cool = hot is None and self._engagement.cooling(now) and gate.clearly_cool(r, settled=settled)
            self._engagement.reading(now, hot is not None, cool)
        self._observed_at = now
        cores = r.cores  # the usable cores: the quota, or less when the group cannot use it all
        if cores:
            last = self._limit_cores
            if last and abs(cores / last - 1.0) > self._policy.rescale_fraction and self._rescale is not None:
                self._rescale(cores / last)
                self._refresh_at = -math.inf
            if cores != last and self._set_servers is not None:
                self._set_servers(math.ceil(cores - 1e-9))  # min RT from requests that did not queue
            self._limit_cores = cores
        done = shed = 0
        for slot in self._partitions.slots.values():
            done += slot.completed  # not ``ignore`` releases: the haproxy engine's Mirror makes many
            shed += slot.shed + slot.dry_run_shed
        quiet, self._sheds_seen = shed == self._sheds_seen, shed  # nothing shed since the last reading
        cost = self._cost
        cost.observe(r.at, r.usage_cores, done, consecutive=gate.consecutive, learn=quiet)
        capacity = cost.capacity_per_s(cores)
        self._offered.capacity_per_s = capacity
        min_rt = self.algorithm.stats(now).min_rt_s if capacity is not None else None
        self._lag.scale_to(cost.cpu_per_request_s, min_rt)
        if self._ceiling.update(self._partitions, capacity, min_rt, cost.cpu_per_request_s, cores):
            self._refresh_at = -math.inf
        if self._ceiling.min_rt_s is not None:
            self._wait_s = self._policy.wait_rts * self._ceiling.min_rt_s
        if period is not None and now >= period.quota_at:
            period.follow(now, gate.signal, cores, self._lag.triggers)

    def _froze(self, now: float, frozen_s: float) -> None:
        """The group was frozen ``frozen_s`` until about ``now`` (its period's quota was spent): when
        it took ``Policy.freeze_engages`` of the period or more, the load does not fit, so the limiter
        engages (as a shed does) and paces from the next period on (a short freeze at the end of a
        busy period is Poisson noise: at 0.9x it happens). When the group is our own (in-process),
        the loop-lag trigger counts any freeze as lag, so the requests read right after it, which
        waited through it, are shed as late when it was long enough."""
        period = self._period
        assert period is not None
        period_s = period.gate.period_s
        if period_s and frozen_s >= self._policy.freeze_engages * period_s:
            self._engagement.restart(now, "freeze")
        for hook in period.freeze_hooks:
            hook(now - frozen_s)

    def _shed(self, now: float, slot: Slot, inflight: int, hot: Hot, cool: bool = True,
              stage: str = "limit") -> Rejection | DryRunStart:  # fmt: skip
        """Record a shed (a Rejection) or a dry-run would-shed (admitted at ``now``, a
        ``DryRunStart``) of what fired (``hot``), restart the cool-off (unless ``cool`` is False:
        a ceiling shed, an idle period shed), build the reason."""
        trigger, signal_name, value, threshold = hot
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
        engagement = self._engagement
        key = (stage, now < engagement.until)
        self._shed_by_stage[key] = self._shed_by_stage.get(key, 0) + 1
        reason = new_reason(dict(trigger=trigger, stage=stage, signal_name=signal_name, signal_value=value,
                                 threshold=threshold, inflight=inflight, max_inflight=self._limit, priority=part.name,
                                 resource=slot.resource, cool_off=engagement.cooling(now), retry_after_s=retry,
                                 dry_run=dry_run, priority_limit=limit))  # fmt: skip
        if cool:
            engagement.restart(now)
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
        period = self._period if self._period is not None and self._period.pacing else None
        return snapshot_of(
            now,
            self.algorithm,
            self._partitions,
            self._gate,
            self.triggers,
            inflight=self._inflight,
            engaged_until=self._engagement.until,
            cool_off_until=self._engagement.cool_off_until,
            dry_run=self.dry_run,
            tokens_leaked=self._tokens_leaked,
            cpu_per_request_s=self._cost.cpu_per_request_s,
            period=period.gate if period is not None else None,
            chance_inflight=self._ceiling.chance,
            shed_by_stage=self._shed_by_stage,
            engagements=self._engagement.entries,
            lag_budget_s=self._lag.base_s if self._lag.lag_requests is not None else None,
            arrivals_within=self._offered.within,
        )

    def __repr__(self) -> str:
        return (
            f"Limiter(signal={self._gate.signal_name!r}, algorithm={self.algorithm!r}, "
            f"cpu_threshold={self._policy.cpu_threshold}, inflight={self._inflight}, dry_run={self.dry_run})"
        )
