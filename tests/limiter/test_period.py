"""The period gate (flowctl/limiter/period.py) on a fake clock and fake counters, and its place in the Limiter."""

from __future__ import annotations

import math
from typing import Any

import pytest

from flowctl.limit.fixed import FixedLimit
from flowctl.limiter import Limiter, Rejection, Token
from flowctl.limiter.period import PeriodGate
from flowctl.signal import CpuReading, StaticSignal
from flowctl.limiter import DEFAULT_POLICY, Policy
from flowctl.limiter.policy import limiter_kwargs

PERIOD = 0.1
QUOTA = 0.05  # 0.5 CPU


def gate(margin: float = 0.0) -> PeriodGate:
    g = PeriodGate(Policy(period_margin=margin))
    g.set_quota(QUOTA, PERIOD, cores=1)
    return g


def test_admits_while_the_period_has_quota_for_the_request_and_refuses_after() -> None:
    g = gate()
    g.update(0.0, 10.0, 100, 0)
    assert g.allows(0.0, 0, 0.005)
    g.update(0.03, 10.040, 100, 0)  # 40 ms used; in-flight 1 still needs 5 ms, this one 5 ms more
    assert g.allows(0.03, 0, 0.005)  # 40 + 5 <= 50
    assert g.allows(0.03, 1, 0.005)  # 40 + 10 <= 50
    assert not g.allows(0.03, 2, 0.005)  # 40 + 15 > 50
    assert g.shed_in_period


def test_not_engaged_it_counts_only_the_in_flight_beyond_the_slack() -> None:
    """Not strict (not engaged): the whole quota, no margin; the in-flight requests beyond ``slack`` (what
    Poisson arrivals put in flight by chance at capacity) are counted, the rest are not; inf: none."""
    g = gate(margin=0.2)
    g.update(0.0, 10.0, 100, 0)
    g.update(0.03, 10.030, 100, 0)  # 30 ms used: 20 ms left, four requests of 5 ms
    assert g.allows(0.03, 5, 0.005, strict=False, slack=2.0)  # (5 + 1 - 2) x 5 = 20 ms: fits
    assert not g.allows(0.03, 6, 0.005, strict=False, slack=2.0)  # 25 ms does not
    assert not g.allows(0.03, 4, 0.005, strict=False, slack=0.0)  # every in-flight counted: 25 ms
    assert g.allows(0.03, 50, 0.005, strict=False, slack=math.inf)  # only a spent quota sheds
    assert not g.allows(0.03, 2, 0.005)  # engaged: every in-flight counted, 30 + 15 ms > 50 ms x (1 - 0.2)


def test_a_new_period_starts_from_the_usage_at_its_boundary() -> None:
    g = gate()
    g.update(0.0, 10.0, 100, 0)
    g.update(0.04, 10.049, 100, 0)
    assert not g.allows(0.04, 0, 0.005)
    # The boundary fell between the reads at 0.04 and 0.06: half of the 2 ms used between them is new.
    g.update(0.06, 10.051, 101, 0)
    assert g.used_s() == pytest.approx(0.001)
    assert g.allows(0.06, 0, 0.005)


def test_work_that_spills_into_the_next_period_is_not_counted_in_this_one() -> None:
    g = gate()
    g.update(0.0, 10.0, 100, 0)
    g.update(0.097, 10.045, 100, 0)  # 45 ms used, 3 ms of wall time left on one core
    assert g.allows(0.097, 3, 0.005)  # 45 + min(20, 3) <= 50
    g = gate()
    g.update(0.0, 10.0, 100, 0)
    g.update(0.05, 10.045, 100, 0)  # the same usage with 50 ms left: the in-flight work runs in this period
    assert not g.allows(0.05, 3, 0.005)


def test_a_throttled_period_raises_the_margin_and_a_clean_one_in_which_it_shed_lowers_it() -> None:
    g = gate(margin=0.1)
    g.update(0.0, 10.0, 100, 0)
    g.update(0.02, 10.02, 100, 0)
    assert g.allows(0.02, 0, 0.005)  # the gate paces this period (the limiter is engaged)
    g.update(0.12, 10.05, 101, 1)  # the period ended throttled
    assert g.margin == pytest.approx(0.1 + DEFAULT_POLICY.margin_up)
    g.update(0.121, 10.0505, 101, 1)
    assert g.allows(0.121, 0, 0.005, strict=False)  # not paced: the load alone spent the quota
    g.update(0.19, 10.08, 102, 2)
    assert g.margin == pytest.approx(0.1 + DEFAULT_POLICY.margin_up)  # which says nothing about the margin
    assert not g.allows(0.19, 20, 0.005)  # shed in this period
    g.update(0.29, 10.09, 103, 2)  # not throttled, and the gate shed: give some back
    assert g.margin == pytest.approx(0.1 + DEFAULT_POLICY.margin_up - DEFAULT_POLICY.margin_down)
    g.update(0.39, 10.12, 104, 2)  # not throttled, nothing shed: unchanged
    assert g.margin == pytest.approx(0.1 + DEFAULT_POLICY.margin_up - DEFAULT_POLICY.margin_down)


def test_the_margin_keeps_part_of_the_quota() -> None:
    g = gate(margin=0.2)
    g.update(0.0, 10.0, 100, 0)
    g.update(0.01, 10.036, 100, 0)
    assert g.allows(0.01, 0, 0.004)  # 36 + 4 <= 40
    assert not g.allows(0.01, 0, 0.005)  # 36 + 5 > 40


@pytest.mark.parametrize(("level", "fits_ms"), [(-1.0, 50.0), (0.0, 40.0), (0.5, 30.0)])
def test_priority_levels_critical_may_use_the_whole_quota_sheddable_three_quarters(level: float, fits_ms: float) -> None:
    g = gate(margin=0.2)
    g.update(0.0, 10.0, 100, 0)
    g.update(0.01, 10.0 + (fits_ms - 1) / 1000, 100, 0)
    assert g.allows(0.01, 0, 0.001, level)
    assert not g.allows(0.01, 0, 0.002, level)


def test_no_quota_or_no_read_admits_everything() -> None:
    g = PeriodGate()
    assert g.allows(0.0, 100, 1.0)
    g.update(0.0, 10.0, 100, 0)
    assert g.allows(0.0, 100, 1.0)  # still no quota
    g.set_quota(QUOTA, PERIOD)
    assert g.allows(0.0, 100, 1.0)  # a new quota forgets the reads: nothing known yet


def test_an_idle_timer_starts_a_new_period_from_the_last_read() -> None:
    g = gate()
    g.update(0.0, 10.0, 100, 0)
    g.update(0.01, 10.045, 100, 0)
    assert not g.allows(0.01, 0, 0.01)
    # No period counted for 0.2 s (the group idled; its bandwidth timer stopped): a new period.
    g.update(0.21, 10.046, 100, 0)
    assert g.used_s() == pytest.approx(0.001)
    assert g.allows(0.21, 0, 0.01)


# -- in the Limiter ------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeBandwidth:
    """A group with QUOTA per PERIOD, as the container view's ``CfsBandwidth`` gives it; the test
    moves its counters with ``spend`` and ``freeze``."""

    def __init__(self, clock: Clock, own_group: bool = False) -> None:
        self.clock = clock
        self.own_group = own_group
        self.usage_s, self.periods, self.throttled, self.throttled_s = 10.0, 100, 0, 0.0
        self.reads = 0

    def spend(self, cpu_s: float) -> None:
        """The group uses ``cpu_s`` over the next millisecond (the gate reads at most every 0.5 ms)."""
        self.usage_s += cpu_s
        self.clock.now += 0.001

    def freeze(self, seconds: float) -> None:
        """The period ends throttled: the group was frozen ``seconds``, which pass on the clock."""
        self.clock.now += seconds
        self.periods += 1
        self.throttled += 1
        self.throttled_s += seconds

    def quota(self) -> tuple[float, float] | None:
        return QUOTA, PERIOD

    def read(self) -> tuple[float, int, int, float | None]:
        self.reads += 1
        return self.usage_s, self.periods, self.throttled, self.throttled_s


def paced_limiter(clock: Clock, limit: int = 10, *, own_group: bool = False, period_gate: bool = True,
                  **options: Any) -> tuple[Limiter, StaticSignal, FakeBandwidth]:  # fmt: skip
    """A limiter whose signal's view has a group with QUOTA per PERIOD (the period gate follows it
    from the first reading on), and a learned cost of 5 ms per request."""
    bw = FakeBandwidth(clock, own_group)
    sig = StaticSignal(name="container", bandwidth=bw)
    lim = Limiter(sig, FixedLimit(limit), clock=clock,
                  **limiter_kwargs({"limit_refresh_s": 0.0, "period_gate": period_gate, **options}))  # fmt: skip
    lim._cost.cpu_per_request_s = 0.005
    return lim, sig, bw


def engaged_limiter(clock: Clock, period_gate: bool) -> tuple[Limiter, FakeBandwidth]:
    lim, sig, bw = paced_limiter(clock, 1, period_gate=period_gate, queue_allowance=10)
    sig.reading = CpuReading(at=clock.now, utilization=1.0, utilization_smoothed=1.0, limit_cores=0.5, seq=1)
    lim.acquire()  # observe a hot reading
    clock.now += 0.01
    sig.reading = CpuReading(at=clock.now, utilization=1.0, utilization_smoothed=1.0, limit_cores=0.5, seq=2)
    return lim, bw


def test_the_gate_follows_the_bandwidth_the_signals_view_has_and_is_off_without_one() -> None:
    clock = Clock()
    lim, sig, _ = paced_limiter(clock)
    sig.reading = CpuReading(at=clock.now, utilization=0.3, utilization_smoothed=0.3, limit_cores=0.5, seq=1)
    lim.acquire()
    assert lim.period_gate is not None and lim.period_gate.quota_s == QUOTA
    blind = Limiter(StaticSignal(name="host", utilization=0.3, limit_cores=2.0, seq=1), FixedLimit(10), clock=clock)
    blind.acquire()
    assert blind.period_gate is not None and blind.period_gate.quota_s is None


def test_while_engaged_the_period_gate_paces_and_only_the_ceiling_bounds_inflight() -> None:
    clock = Clock()
    lim, bw = engaged_limiter(clock, period_gate=True)
    lim._inflight = 0
    admitted = [lim.acquire() for _ in range(3)]  # limit 1, but the period has room for 3 x 5 ms
    assert not any(isinstance(d, Rejection) for d in admitted)
    bw.spend(0.04)  # 40 ms used: in-flight 3 need 15 ms more
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "cpu_period" and d.reason.stage == "period"
    assert lim.snapshot().as_dict()["shed_by_stage"] == {"period": {"engaged": 1}}
    bw.periods += 1  # a new period
    clock.now += 0.05
    assert not isinstance(lim.acquire(), Rejection)


def test_without_the_period_gate_the_engaged_limit_sheds_as_before() -> None:
    clock = Clock()
    lim, _ = engaged_limiter(clock, period_gate=False)
    lim._inflight = 0
    first = lim.acquire()
    assert not isinstance(first, Rejection)
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger != "cpu_period"


def test_not_engaged_it_sheds_once_the_quota_left_cannot_cover_the_work_in_flight_never_critical_and_starts_no_cool_off() -> None:
    clock = Clock()
    lim, sig, bw = paced_limiter(clock, queue_allowance=None)
    sig.reading = CpuReading(at=clock.now, utilization=0.5, utilization_smoothed=0.5, limit_cores=0.5, seq=1)
    held = [lim.acquire() for _ in range(6)]  # 6 x 5 ms in flight: the 50 ms quota covers them
    assert not any(isinstance(d, Rejection) for d in held)
    bw.spend(0.020)  # 20 ms used + 7 x 5 ms > 50 ms: the 7th would wait through a freeze
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "cpu_period"
    assert not d.reason.cool_off and lim.snapshot().cool_off is False  # queue evidence, not a cool-off
    assert lim._queue_sheds == 1
    assert lim.snapshot().as_dict()["shed_by_stage"] == {"period": {"not_engaged": 1}}
    critical = lim.acquire(priority="critical")  # a reserve class: only its ceiling sheds it
    assert not isinstance(critical, Rejection)
    for token in held[:3]:
        assert isinstance(token, Token)
        token.success()
    assert not isinstance(lim.acquire(), Rejection)  # 20 ms + (4 in flight + 1) x 5 ms fits: no margin, no level
    bw.periods += 1  # a new period
    clock.now += 0.01
    assert not isinstance(lim.acquire(), Rejection)


def test_the_overhead_beyond_completions_is_learned_per_period_and_reserved_for_the_rest_of_it() -> None:
    g = gate()
    g.update(0.0, 10.0, 100, 0, done=0, cpu_per_request_s=0.004)
    # One period: 40 ms used, 5 completions x 4 ms = 20 ms: 20 ms of overhead (answering sheds, say).
    g.update(0.099, 10.0396, 100, 0, done=5, cpu_per_request_s=0.004)
    g.allows(0.099, 4, 0.004)  # the gate paces this period
    g.update(0.101, 10.0404, 101, 0, done=5, cpu_per_request_s=0.004)  # the boundary: 10.040 at 0.1
    assert g.overhead_s == pytest.approx(0.020)  # up at once: an overload's sheds start all together
    # The next: 30 ms used, 5 completions: 10 ms of overhead; down as an EMA, half way.
    g.update(0.199, 10.0696, 101, 0, done=10, cpu_per_request_s=0.004)
    g.update(0.201, 10.0704, 102, 0, done=10, cpu_per_request_s=0.004)
    assert g.overhead_s == pytest.approx(0.015)
    # 15 ms x (the part of the period left) is reserved.
    g.update(0.201, 10.0804, 102, 0, done=10, cpu_per_request_s=0.004)
    assert g.allows(0.201, 0, 0.004)  # 10 + 4 + 14.9 <= 50
    g.update(0.201, 10.1054, 102, 0, done=10, cpu_per_request_s=0.004)
    assert not g.allows(0.201, 0, 0.004)  # 35 + 4 + 14.9 > 50
    assert g.allows(0.29, 0, 0.004)  # near the period's end little of it is still to come: 35 + 4 + 1.5


def test_while_engaged_a_reserve_class_is_not_paced() -> None:
    clock = Clock()
    lim, bw = engaged_limiter(clock, period_gate=True)
    lim._inflight = 0
    bw.spend(0.049)
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "cpu_period"
    assert not isinstance(lim.acquire(priority="critical"), Rejection)


def test_no_more_than_half_the_quota_is_reserved_for_the_overhead() -> None:
    """A closed-loop flood in-process: reserving all that answering sheds spends would admit nothing
    (a livelock); with half reserved, requests early in each period are still admitted."""
    g = gate()
    g.update(0.0, 10.0, 100, 0)
    g.update(0.001, 10.001, 100, 0)  # 1 ms into the period, 1 ms used
    g.overhead_s = 0.045  # answering sheds spends 45 of the 50 ms quota
    assert g.allows(0.001, 0, 0.005)  # 1 + 25 x 0.99 + 5 <= 50: the reserve is capped at 25 ms
    g.update(0.03, 10.022, 100, 0)  # 22 ms used 30 ms in, 2 in flight: 22 + 25 x 0.7 + 3 x 5 > 50
    assert not g.allows(0.03, 2, 0.005)
    g.update(0.101, 10.05, 101, 1)  # a throttled period does not raise the margin then
    assert g.margin == pytest.approx(0.0)


def test_a_settled_cool_reading_ends_the_pacing_a_dip_does_not() -> None:
    """Pacing sheds restart the cool-off; a reading cool in both its fast and smoothed values ends
    it (the gate keeps the group near its quota, so that means the load fell), a 100 ms dip not."""
    clock = Clock()
    lim, bw = engaged_limiter(clock, period_gate=True)
    lim._inflight = 0
    bw.spend(0.049)
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "cpu_period"
    assert lim.snapshot().cool_off
    clock.now += 0.1  # a dip: fast cool, smoothed still warm (0.7): pacing holds
    lim.signal.reading = CpuReading(at=clock.now, utilization=0.3, utilization_smoothed=0.7, limit_cores=0.5, seq=3)  # type: ignore[misc]
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "cpu_period"
    clock.now += 0.1  # settled cool: no longer engaged, the gate sheds only a spent quota
    lim.signal.reading = CpuReading(at=clock.now, utilization=0.3, utilization_smoothed=0.3, limit_cores=0.5, seq=4)  # type: ignore[misc]
    assert not isinstance(lim.acquire(), Rejection)
    assert not lim.snapshot().cool_off


def test_the_counters_are_read_at_most_every_half_millisecond() -> None:
    """A read, update and check cost ~9 us on cgroup v1: at 10k requests/s they are not read per request."""
    clock = Clock()
    lim, bw = engaged_limiter(clock, period_gate=True)
    lim._inflight = 0
    reads = bw.reads
    held = [lim.acquire() for _ in range(3)]  # the same instant: one read
    assert bw.reads == reads + 1 and not any(isinstance(d, Rejection) for d in held)
    clock.now += 0.0002
    bw.usage_s += 0.049  # unseen until the next read
    held.append(lim.acquire())
    assert bw.reads == reads + 1 and not isinstance(held[-1], Rejection)
    clock.now += 0.0004
    d = lim.acquire()
    assert bw.reads == reads + 2 and isinstance(d, Rejection) and d.reason.trigger == "cpu_period"


def test_a_freeze_right_after_a_read_is_returned_one_after_an_idle_gap_is_not() -> None:
    g = gate()
    assert g.update(0.0, 10.0, 100, 0, throttled_s=1.0) == 0.0  # a first read: nothing to compare with
    # 40 ms later the group was frozen 30 ms and a period ended throttled: reads bracket the freeze
    assert g.update(0.07, 10.04, 101, 1, throttled_s=1.03) == pytest.approx(0.03)
    assert g.update(0.08, 10.045, 101, 1, throttled_s=1.03) == 0.0  # no new freeze
    # a freeze long after the last read: the process was idle before it, nothing waited through it
    assert g.update(0.5, 10.09, 105, 2, throttled_s=1.06) == 0.0
    assert g.update(0.6, 10.13, 106, 3, throttled_s=None) == 0.0  # the kernel does not say how long


class FrozenHook:
    """A bypass trigger that never fires and records the freezes it is told of."""

    name = "lag"
    threshold = 1.0
    bypass_inflight = True

    def __init__(self) -> None:
        self.since: list[float] = []
        self.quiet_until = -math.inf

    def check(self, now: float) -> float | None:
        return None

    def frozen(self, since: float) -> None:
        self.since.append(since)


@pytest.mark.parametrize("own_group", [True, False])
def test_a_freeze_of_its_own_group_engages_and_is_told_to_the_loop_lag_trigger_even_with_nothing_in_flight(
    own_group: bool,
) -> None:
    clock = Clock()
    hook = FrozenHook()
    # own_group: in-process, the group read is the one this process runs in
    lim, sig, bw = paced_limiter(clock, own_group=own_group, triggers=[hook])
    sig.reading = CpuReading(at=clock.now, utilization=0.3, utilization_smoothed=0.3, limit_cores=0.5, seq=1)
    assert not isinstance(lim.acquire(), Rejection)  # not engaged, nothing in flight: a first read
    reads = bw.reads
    clock.now += 0.001
    assert not isinstance(lim.acquire(), Rejection)  # within 5 ms of that read: no read
    assert bw.reads == reads
    clock.now += 0.01
    bw.spend(0.04)
    bw.freeze(0.03)  # a blocking handler spent the quota; the group was frozen 30 ms
    lim.acquire()
    if own_group:
        assert bw.reads == reads + 1
        assert hook.since == [pytest.approx(clock.now - 0.03)]
        assert lim.snapshot().cool_off  # the load did not fit: engaged, the gate paces from now on
    else:  # a sidecar's target: its freezes are not this process's, and it does not read idle
        assert bw.reads == reads and hook.since == [] and not lim.snapshot().cool_off


def test_a_throttled_period_whose_overhead_jumped_does_not_raise_the_margin() -> None:
    """The onset of an overload in-process: its first sheds were not reserved. The overhead learns
    them at once; the margin, for what the rest misses, stays."""
    g = gate(margin=0.1)
    g.update(0.0, 10.0, 100, 0, done=0, cpu_per_request_s=0.004)
    g.update(0.099, 10.0496, 100, 0, done=7, cpu_per_request_s=0.004)
    g.allows(0.099, 0, 0.004)  # paced, so only the overhead's jump keeps the margin
    g.update(0.101, 10.0504, 101, 1, done=7, cpu_per_request_s=0.004)  # 50 ms, 28 of them completions
    assert g.margin == pytest.approx(0.1) and g.overhead_s == pytest.approx(0.022)
    g.update(0.199, 10.0996, 101, 1, done=14, cpu_per_request_s=0.004)
    g.allows(0.199, 0, 0.004)  # paced
    g.update(0.201, 10.1004, 102, 2, done=14, cpu_per_request_s=0.004)  # throttled again, the overhead as reserved
    assert g.margin == pytest.approx(0.15)


def test_a_short_freeze_is_lag_but_does_not_engage() -> None:
    """A 10 ms freeze at the end of a busy period (Poisson noise at 0.9x) is told to the loop-lag
    trigger, which judges it by its own threshold, but starts no cool-off."""
    clock = Clock()
    hook = FrozenHook()
    lim, sig, bw = paced_limiter(clock, own_group=True, triggers=[hook])
    sig.reading = CpuReading(at=clock.now, utilization=0.3, utilization_smoothed=0.3, limit_cores=0.5, seq=1)
    lim.acquire()
    clock.now += 0.07
    lim.acquire()  # a read 70 ms into the period
    bw.spend(0.05)
    bw.freeze(0.01)
    lim.acquire()
    assert hook.since == [pytest.approx(clock.now - 0.01)]
    assert not lim.snapshot().cool_off


def test_a_long_freeze_of_a_sidecars_target_engages_without_telling_the_loop_lag_trigger() -> None:
    clock = Clock()
    hook = FrozenHook()
    lim, sig, bw = paced_limiter(clock, triggers=[hook])  # not our own group: a sidecar reads its target's
    sig.reading = CpuReading(at=clock.now, utilization=0.5, utilization_smoothed=0.5, limit_cores=0.5, seq=1)
    held = lim.acquire()  # in flight: the gate reads
    clock.now += 0.01
    lim.acquire().success()
    bw.spend(0.04)
    bw.freeze(0.04)
    lim.acquire().success()
    held.success()
    assert lim.snapshot().cool_off and hook.since == []


def test_not_pacing_the_overhead_is_an_ema_one_busy_period_does_not_set_it() -> None:
    g = gate()
    g.update(0.0, 10.0, 100, 0, done=0, cpu_per_request_s=0.004)
    g.update(0.099, 10.0396, 100, 0, done=5, cpu_per_request_s=0.004)  # 20 ms beyond 5 completions
    g.update(0.101, 10.0404, 101, 0, done=5, cpu_per_request_s=0.004)
    assert g.overhead_s == pytest.approx(0.010)  # half way: not pacing, no jump


def _gate_with_a_budget(budget: float, margin: float = 0.0) -> PeriodGate:
    g = gate(margin)
    g.wait_budget_s = budget
    g.update(0.0, 10.0, 100, 0)
    return g


def test_a_request_that_would_wait_within_the_budget_for_the_next_period_is_admitted() -> None:
    """``wait_budget_s``: a request that does not fit in this period waits for the next one (the rest of this
    period, then every request in flight ahead of it at its whole cost); within the budget that is a short
    queue, admitted."""
    g = _gate_with_a_budget(0.012)
    g.update(0.09, 10.046, 100, 0)  # 46 ms used, 10 ms of the period left
    assert g.allows(0.09, 0, 0.005)  # 5 ms does not fit: 1 ms over, waits 10 + 1 ms <= 12 ms
    assert not g.allows(0.09, 1, 0.005)  # 6 ms over: waits 16 ms
    g = _gate_with_a_budget(0.012)
    g.update(0.05, 10.046, 100, 0)  # the same usage with 50 ms left: it would wait through the freeze
    assert not g.allows(0.05, 0, 0.005)
    g = _gate_with_a_budget(0.0)
    g.update(0.09, 10.046, 100, 0)
    assert not g.allows(0.09, 0, 0.005)  # no budget: everything that does not fit is shed


def test_a_period_throttled_by_the_work_it_let_wait_does_not_raise_the_margin() -> None:
    g = _gate_with_a_budget(0.012, margin=0.1)
    g.update(0.09, 10.041, 100, 0)
    assert g.allows(0.09, 0, 0.005)  # 1 ms over 45 ms (50 x 0.9): admitted to wait 10 + 1 ms
    g.update(0.11, 10.052, 101, 1)  # the period ended throttled, as the gate chose
    assert g.margin == pytest.approx(0.1)


def test_requests_wait_for_the_next_period_only_while_arrivals_are_within_the_capacity() -> None:
    """The limiter sets the gate's wait budget to ``wait_rts`` min RTs when a window of arrivals closes within
    the capacity, and to 0 when it closes over it: under overload nothing waits."""
    clock = Clock()
    lim, sig, bw = paced_limiter(clock)
    sig.reading = CpuReading(at=clock.now, utilization=0.3, utilization_smoothed=0.3, limit_cores=0.5, seq=1)
    lim.acquire().success()  # observes the reading: a capacity of 0.5 cores / 5 ms = 100/s, windows of 100 ms
    assert lim._period is not None
    gate = lim._period.gate
    lim._wait_s = 0.02  # as 2 min RTs of 10 ms would set it
    assert lim._offered.capacity_per_s == pytest.approx(100.0)
    for _ in range(5):  # 5 arrivals in a window: within
        lim.acquire().success()
        clock.now += 0.02
    clock.now += 0.01
    lim.acquire().success()  # closes the window
    assert gate.wait_budget_s == 0.02
    for _ in range(40):  # 40 arrivals in 100 ms at a capacity of 10: over
        lim.acquire().success()
        clock.now += 0.0025
    clock.now += 0.01
    lim.acquire().success()
    assert gate.wait_budget_s == 0.0


def test_the_lag_budget_loosens_only_while_arrivals_are_within_the_capacity() -> None:
    """The limiter tells the lag stage each window's verdict (``OfferedLoad.within``): a 13 ms handler's budget is
    two requests' CPU (26 ms) after a window within the capacity, the 15 ms cap after one over it; the snapshot
    shows both the budget and the verdict."""
    clock = Clock()
    lim, sig, bw = paced_limiter(clock)
    lim._cost.cpu_per_request_s = 0.013
    sig.reading = CpuReading(at=clock.now, utilization=0.3, utilization_smoothed=0.3, limit_cores=0.5, seq=1)
    lim.acquire().success()  # observes the reading: a capacity of 0.5 cores / 13 ms = 38.5/s, windows of 260 ms
    assert lim.snapshot().lag_budget_s == pytest.approx(0.015)
    for _ in range(5):  # 5 arrivals in a window: within
        lim.acquire().success()
        clock.now += 0.06
    lim.acquire().success()  # closes the window
    snap = lim.snapshot()
    assert snap.arrivals_within and snap.lag_budget_s == pytest.approx(0.026)
    for _ in range(60):  # 60 arrivals in 270 ms at a capacity of 10: over
        lim.acquire().success()
        clock.now += 0.0045
    lim.acquire().success()
    snap = lim.snapshot()
    assert not snap.arrivals_within and snap.lag_budget_s == pytest.approx(0.015)
