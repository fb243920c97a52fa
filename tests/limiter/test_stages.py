"""Each admission stage alone (flowctl.limiter.stages, flowctl.limiter.engagement), fed by hand with
a clock value passed in: no Limiter, no sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from flowctl.limiter.engagement import Engagement
from flowctl.limiter.gate import HotGate
from flowctl.limiter.partitions import DEFAULT_PRIORITIES, Partitions
from flowctl.limiter.policy import Policy
from flowctl.limiter.stages import CeilingStage, LagStage, LimitStage, PeriodStage
from flowctl.signal import CpuReading, StaticSignal


def partitions() -> Partitions:
    return Partitions(DEFAULT_PRIORITIES, "default", 10)


# -- engagement: one rule in, one rule out ----------------------------------------------------


def test_engagement_enters_on_hot_or_a_shed_and_leaves_after_the_cool_off() -> None:
    e = Engagement(1.0)
    assert not (10.0 < e.until)
    e.reading(10.0, hot=True, clearly_cool=False)
    assert e.until == math.inf  # hot: engaged until a reading that is not
    e.reading(10.1, hot=False, clearly_cool=False)
    assert e.until == -math.inf  # no shed yet: no cool-off to run
    e.restart(10.2)
    assert e.until == 11.2 and e.cooling(11.1) and not e.cooling(11.2)
    e.reading(10.3, hot=False, clearly_cool=True)  # a clearly cool reading ends it at once
    assert e.until == 10.3 and not e.cooling(10.3)


def test_engagement_counts_its_entries_by_cause_not_its_renewals() -> None:
    e = Engagement(1.0)
    e.reading(1.0, hot=True, clearly_cool=False)  # enters: hot
    e.reading(1.1, hot=True, clearly_cool=False)  # stays hot: not an entry
    e.restart(1.2)  # a shed while hot: a renewal
    e.reading(1.3, hot=False, clearly_cool=False)  # the cool-off runs to 2.2
    e.restart(2.0, "freeze")  # still engaged: a renewal
    e.restart(3.5, "freeze")  # after the cool-off ended at 3.0: an entry
    e.restart(5.0)  # after 4.5: an entry by a shed
    e.restart(7.0, "offered")  # after 6.0: an entry by a window of arrivals over capacity
    assert e.entries == {"hot": 1, "shed": 1, "freeze": 1, "offered": 1}


def test_engagement_restart_never_shortens_a_hot_state() -> None:
    e = Engagement(1.0)
    e.reading(5.0, hot=True, clearly_cool=False)
    e.restart(5.1)
    assert e.until == math.inf and e.cool_off_until == 6.1
    e.forget_hot()
    assert e.until == 6.1


# -- 1. ceiling ---------------------------------------------------------------------------------


def test_ceiling_is_pipe_plus_its_chance_excess_plus_the_allowance() -> None:
    parts = partitions()
    stage = CeilingStage(Policy(queue_allowance=3, pipe_sigmas=2.0))
    # 0.5 cores / 5 ms per request = 100/s; min RT 90 ms: a pipe of 9, sqrt 3
    assert stage.update(parts, 100.0, 0.09, 0.005, 0.5) is True  # the busy floor moved: 0.09 / 0.005 x 1 = 18
    assert parts.ceilings() == {"critical": 9 + 6 + 9, "default": 9 + 6 + 3, "sheddable": 9 + 6 + 3}
    assert stage.chance == 9 + 6  # the in-flight by chance: the period stage's slack when not engaged
    assert stage.busy_floor == 18.0
    # a forgotten window (min RT None): the last one stands
    assert stage.update(parts, 100.0, None, 0.005, 0.5) is False
    assert parts.ceilings()["default"] == 18
    # unknown capacity or no allowance: no ceiling
    CeilingStage(Policy(queue_allowance=None)).update(parts, 100.0, 0.09, 0.005, 0.5)
    assert parts.ceilings()["default"] == math.inf


# -- 2. limit -----------------------------------------------------------------------------------


def test_limit_stage_sheds_over_the_share_only_with_a_reason() -> None:
    parts = partitions()
    parts.set_limit(4)
    sig = StaticSignal("container", CpuReading(at=1.0, utilization=0.5, utilization_smoothed=0.5, seq=1))
    gate = HotGate(sig, Policy(), 0.0)
    gate.observe(sig.reading)
    e = Engagement(1.0)
    stage = LimitStage(gate, e, "bbr")
    default = parts.by_name["default"]
    assert stage.shed(2.0, default, 4, pacing=False) is None  # not hot, no cool-off: nothing to say
    e.restart(2.0)
    hot = stage.shed(2.5, default, 4, pacing=False)
    assert hot is not None and hot[0] == "cool_off"
    assert stage.shed(2.5, default, 3, pacing=False) is None  # under the share
    sig.set(at=1.1, utilization=0.95, utilization_smoothed=0.9)
    gate.observe(sig.reading)
    hot = stage.shed(2.5, default, 4, pacing=False)
    assert hot is not None and hot[0] == "cpu"
    parts.set_ceiling(2.0, 3)
    assert stage.shed(2.5, default, 4, pacing=True) is None  # a quota'd group: the period gate owns it
    assert stage.shed(2.5, parts.by_name["critical"], 100, pacing=False) is None  # reserve: only its ceiling


# -- 3. period ----------------------------------------------------------------------------------


@dataclass
class FakeBandwidth:
    """One group of 0.5 CPU per 100 ms; its counters set by hand."""

    usage_s: float = 0.0
    periods: int = 0
    throttled: int = 0
    throttled_s: float = 0.0
    reads: list[float] = field(default_factory=list)

    @property
    def own_group(self) -> bool:
        return False

    def quota(self) -> tuple[float, float] | None:
        return (0.05, 0.1)

    def read(self) -> tuple[float, int, int, float | None] | None:
        self.reads.append(self.usage_s)
        return self.usage_s, self.periods, self.throttled, self.throttled_s


def test_period_stage_paces_engaged_and_sheds_a_spent_quota_always() -> None:
    bw = FakeBandwidth()
    sig = StaticSignal("container", bandwidth=bw)
    policy = Policy()
    stage = PeriodStage(policy)
    stage.follow(0.0, sig, 0.5, ())
    assert stage.pacing and stage.gate.quota_s == 0.05
    froze: list[tuple[float, float]] = []
    at = lambda now, s: froze.append((now, s))  # noqa: E731
    assert not stage.shed(0.001, 0, 0, 0.005, 0.0, False, at)  # a fresh period
    bw.usage_s = 0.040  # 40 of 50 ms spent: with 1 + 1 x 5 ms to come, over the engaged allowance (1 - margin 0.1); not the quota
    assert not stage.shed(0.05, 1, 0, 0.005, 0.0, False, at)
    assert stage.shed(0.051, 1, 0, 0.005, 0.0, True, at)
    assert stage.shed_at == 0.051
    bw.usage_s = 0.0505  # the whole quota: shed engaged or not
    assert stage.shed(0.06, 1, 0, 0.005, 0.0, False, at)
    bw.periods, bw.usage_s = 1, 0.05  # the next period began
    assert not stage.shed(0.101, 0, 1, 0.005, 0.0, False, at)
    assert froze == []


def test_period_stage_is_off_without_a_group_or_when_the_group_cannot_spend_its_quota() -> None:
    stage = PeriodStage(Policy())
    stage.follow(0.0, StaticSignal("host"), 2.0, ())
    assert not stage.pacing
    stage.follow(2.0, StaticSignal("container", bandwidth=FakeBandwidth()), 0.3, ())  # 0.3 usable < 0.5 quota
    assert not stage.pacing


# -- 4. lag -------------------------------------------------------------------------------------


class Lag:
    name = "loop_lag"
    threshold = 0.015
    bypass_inflight = True
    quiet_until = 0.0

    def __init__(self, value: float | None) -> None:
        self.value = value

    def check(self, now: float) -> float | None:
        return self.value


def test_lag_stage_scales_the_threshold_by_the_class() -> None:
    parts = partitions()
    stage = LagStage()
    stage.set((Lag(0.035),))
    hot = stage.shed(1.0, parts.by_name["default"])  # 2 x 15 ms
    assert hot == ("loop_lag", "loop_lag", 0.035, 0.03)
    assert stage.shed(1.0, parts.by_name["critical"]) is None  # 5 x 15 ms
    stage.set((Lag(None),))
    assert stage.shed(1.0, parts.by_name["sheddable"]) is None


def test_lag_stage_counts_its_budget_in_requests_cpu_between_the_trigger_threshold_and_the_cap() -> None:
    parts = partitions()
    stage = LagStage(lag_requests=4.0, lag_cap_s=0.015)
    fast = Lag(0.012)
    fast.threshold = 0.005  # the least lag that sheds (LoopLagMonitor's default)
    stage.set((fast,))
    stage.scale_to(0.002)  # 4 requests of 2 ms CPU: 8 ms
    assert stage.shed(1.0, parts.by_name["default"]) is None  # 2 x 8 ms
    assert stage.shed(1.0, parts.by_name["sheddable"]) == ("loop_lag", "loop_lag", 0.012, 0.008)
    stage.scale_to(0.0005)  # 2 ms: under the trigger's threshold, which is then the floor
    assert stage.shed(1.0, parts.by_name["default"]) == ("loop_lag", "loop_lag", 0.012, 0.01)
    stage.scale_to(0.005)  # 20 ms: capped at 15 ms
    assert stage.shed(1.0, parts.by_name["sheddable"]) is None
    fast.value = 0.03
    assert stage.shed(1.0, parts.by_name["default"]) == ("loop_lag", "loop_lag", 0.03, 0.03)
    stage.scale_to(None)  # the cost unknown: the cap
    assert stage.shed(1.0, parts.by_name["default"]) == ("loop_lag", "loop_lag", 0.03, 0.03)
    fast.value = 0.012
    stage.scale_to(0.002, min_rt_s=0.011)  # 8 ms of CPU, but an unqueued request takes 11 ms: the budget is 11 ms
    assert stage.shed(1.0, parts.by_name["sheddable"]) == ("loop_lag", "loop_lag", 0.012, 0.011)
    stage.scale_to(0.002, min_rt_s=0.001)  # a min RT under the CPU budget changes nothing
    assert stage.shed(1.0, parts.by_name["sheddable"]) == ("loop_lag", "loop_lag", 0.012, 0.008)
    off = LagStage(lag_requests=None)
    off.set((Lag(0.035),))
    off.scale_to(0.005)
    assert off.shed(1.0, parts.by_name["default"]) == ("loop_lag", "loop_lag", 0.035, 0.03)  # 2 x its 15 ms


def test_lag_stage_budget_is_at_least_within_requests_cpu_only_while_arrivals_fit_the_capacity() -> None:
    """``relax(within)``: while the last window of arrivals was within the capacity the cap is at least
    ``within_requests`` requests' CPU (still at most ``lag_requests``'); over it, the cap holds."""
    parts = partitions()
    stage = LagStage(lag_requests=3.0, lag_cap_s=0.015, within_requests=2.0)
    lag = Lag(0.02)
    lag.threshold = 0.005
    stage.set((lag,))
    stage.scale_to(0.013)  # a 13 ms handler: 3 x 13 = 39 ms, capped at 15 ms
    assert stage.base_s == pytest.approx(0.015)
    assert stage.shed(1.0, parts.by_name["sheddable"]) == ("loop_lag", "loop_lag", 0.02, 0.015)
    stage.relax(True)  # within the capacity: 2 x 13 = 26 ms
    assert stage.base_s == pytest.approx(0.026)
    assert stage.shed(1.0, parts.by_name["sheddable"]) is None
    stage.scale_to(0.02)  # a new cost keeps the verdict: 2 x 20 = 40 ms
    assert stage.base_s == pytest.approx(0.04)
    stage.scale_to(0.002)  # a fast handler: 3 x 2 = 6 ms either way (never more than lag_requests' CPU)
    assert stage.base_s == pytest.approx(0.006)
    stage.scale_to(None)  # the cost unknown: the cap
    assert stage.base_s == pytest.approx(0.015)
    stage.scale_to(0.013)
    stage.relax(False)  # over the capacity: back to the cap
    assert stage.base_s == pytest.approx(0.015)
    off = LagStage(lag_requests=3.0, lag_cap_s=0.015, within_requests=None)
    off.scale_to(0.013)
    off.relax(True)
    assert off.base_s == pytest.approx(0.015)


def test_a_capacity_too_large_to_use_means_no_ceiling_not_an_error() -> None:
    """A CPU cost too small to divide by makes the pipe infinite (hypothesis found it): no ceiling is
    known then, and an infinite limit is an infinite share, instead of an OverflowError."""
    parts = partitions()
    CeilingStage(Policy()).update(parts, 1e308, 10.0, 1e-300, 1.0)
    assert set(parts.ceilings().values()) == {math.inf}
    parts.set_limit(math.inf)
    assert set(parts.limits().values()) == {math.inf}
