"""The shedding policy of issue 13, rule by rule, on a fake clock: a hot state one spike cannot
start, admission levels per priority, and step response."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl.errors import ConfigError
from flowctl.limit.fixed import FixedLimit
from flowctl.limiter import Limiter, Rejection, Token
from flowctl.limiter.cost import CpuCost
from flowctl.signal import CpuReading, StaticSignal
from flowctl.limiter import LimiterSnapshot, Policy
from flowctl.limiter.policy import limiter_kwargs

INTERVAL_S = 0.1


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reading(clock: Clock, fast: float, smoothed: float | None = None, **kw: float) -> CpuReading:
    return CpuReading(at=clock.now, utilization=fast, utilization_smoothed=smoothed if smoothed is not None else 0.45,
                      seq=round(clock.now / INTERVAL_S), **kw)  # fmt: skip


def limiter(sig: StaticSignal, clock: Clock, n: float = 1, **kw: object) -> Limiter:
    kw.setdefault("queue_allowance", None)  # the ceiling has its own tests
    kw.setdefault("limit_refresh_s", 0.0)
    kw.setdefault("offered_sigmas", None)  # engaging on arrivals has its own tests (test_offered.py)
    return Limiter(sig, FixedLimit(n), clock=clock, **limiter_kwargs(kw))


def tick(sig: StaticSignal, clock: Clock, fast: float, smoothed: float | None = None, **kw: float) -> None:
    """The sampler's next reading, one interval later."""
    clock.now += INTERVAL_S
    sig.reading = reading(clock, fast, smoothed, **kw)


# -- a hot state needs evidence that lasts --------------------------------------------------


def test_two_hot_readings_are_not_enough_three_in_a_row_are() -> None:
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock)
    held = lim.acquire()
    tick(sig, clock, 0.95)  # one spike over 0.8
    assert isinstance(lim.acquire(), Token), "a single 100 ms spike must not shed"
    tick(sig, clock, 0.95)  # the second in a row: at 0.9x of a service with few requests a period, chance
    assert isinstance(lim.acquire(), Token), "two 100 ms spikes must not shed"
    tick(sig, clock, 0.95)  # the third in a row
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "cpu" and d.reason.signal_value == 0.95
    assert isinstance(held, Token)


def test_a_gap_between_hot_readings_restarts_the_streak() -> None:
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock, n=100)
    for _ in range(3):  # a few consecutive readings first
        tick(sig, clock, 0.2)
        lim.acquire().success()
    tick(sig, clock, 0.95)
    lim.acquire().success()
    clock.now += 5 * INTERVAL_S  # readings taken meanwhile were never observed
    tick(sig, clock, 0.95)
    lim.acquire().success()
    assert not observed(lim).hot


def test_the_smoothed_signal_is_hot_at_once() -> None:
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock)
    held = lim.acquire()
    tick(sig, clock, 0.5, smoothed=0.85)
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "cpu" and d.reason.signal_value == 0.85
    assert isinstance(held, Token)


def test_hot_samples_one_is_the_old_rule() -> None:
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock, hot_samples=1)
    held = lim.acquire()
    tick(sig, clock, 0.95)
    assert isinstance(lim.acquire(), Rejection)
    assert isinstance(held, Token)


def test_hot_samples_must_be_a_positive_integer() -> None:
    for bad in (0, -1, 1.5):
        with pytest.raises(ConfigError):
            limiter(StaticSignal(), Clock(), hot_samples=bad)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 2.0),  # fast utilization
            st.floats(0.0, 0.79),  # smoothed: never at the threshold
            st.lists(st.sampled_from(["acquire", "release"]), max_size=12),
        ),
        max_size=40,
    ),
    st.sampled_from([None, 0, 3]),
    st.sampled_from([0.0, 0.5]),
)
def test_a_limiter_that_is_never_hot_never_sheds(steps: list[tuple[float, float, list[str]]], queue: int | None,
                                                 busy_fraction: float) -> None:  # fmt: skip
    """Readings whose smoothed value stays under the threshold and whose fast value never reaches it
    twice in a row (nor once after a ceiling shed): whatever the in-flight count, nothing is shed
    (default policy) but at the always-on ceiling, while the smoothed utilization is at least half the
    threshold, and a ceiling shed starts no cool-off: the next request under the ceiling is admitted.
    Without a ceiling (``queue_allowance=None``) nothing at all is shed."""
    clock, sig = Clock(), StaticSignal("container")
    lim = Limiter(sig, FixedLimit(1), policy=Policy(limit_refresh_s=0.0, queue_allowance=queue, busy_fraction=busy_fraction,
                                                    offered_sigmas=None),  # arrivals 1 ms apart: not this test's rule
                  clock=clock)  # fmt: skip
    held: list[Token] = []
    prev_hot = queued = False  # queued: a ceiling shed that no observed reading has seen yet
    for fast, smoothed, ops in steps:
        if (prev_hot or queued) and fast >= 0.8:
            fast = 0.5  # never two hot fast readings in a row, nor one after a ceiling shed
        prev_hot = fast >= 0.8
        tick(sig, clock, fast, smoothed, usage_cores=fast * 0.5, limit_cores=0.5)
        lim.observe()  # every reading is seen, as under steady traffic
        queued = False  # this reading saw the last step's ceiling sheds
        busy = smoothed >= busy_fraction * 0.8 - 1e-12  # the last second (the 1 s EMA): Policy.busy_fraction
        for op in ops:
            clock.now += 0.001
            if op == "acquire":
                ceiling, before = lim.snapshot().priority_ceilings["default"], lim.inflight
                d = lim.acquire()
                if before < ceiling or not busy:
                    assert isinstance(d, Token), d
                    held.append(d)
                else:
                    assert queue is not None
                    queued = True
                    assert isinstance(d, Rejection) and d.reason.trigger == "queue", d
                    assert not d.reason.cool_off and not observed(lim).cool_off
            elif held:
                held.pop(0).success()
    assert set(observed(lim).shed_by_reason) <= {("default", "queue")}


# -- the cool-off ------------------------------------------------------------------------------


def test_a_clearly_cool_reading_ends_the_cool_off() -> None:
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock)
    held = lim.acquire()
    tick(sig, clock, 0.95)
    observed(lim)
    tick(sig, clock, 0.95)
    observed(lim)
    tick(sig, clock, 0.95)
    assert isinstance(lim.acquire(), Rejection)  # hot: shed over the limit, cool-off started
    tick(sig, clock, 0.7)  # under the threshold but not clearly cool: the cool-off holds
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "cool_off"
    tick(sig, clock, 0.3)  # clearly cool (< 0.75 * 0.8): the cool-off ends now
    assert isinstance(lim.acquire(), Token)
    assert isinstance(held, Token)


def test_cool_fraction_zero_keeps_the_whole_cool_off() -> None:
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock, cool_fraction=0.0)
    held = lim.acquire()
    tick(sig, clock, 0.95)
    observed(lim)
    tick(sig, clock, 0.95)
    observed(lim)
    tick(sig, clock, 0.95)
    assert isinstance(lim.acquire(), Rejection)
    tick(sig, clock, 0.1)
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "cool_off"
    assert isinstance(held, Token)


# -- step response ------------------------------------------------------------------------------


def test_a_quota_change_rescales_the_algorithm_at_the_next_reading() -> None:
    from flowctl.limit.bbr import Bbr

    clock, sig = Clock(), StaticSignal("container")
    bbr = Bbr(headroom=0)
    lim = Limiter(sig, bbr, policy=Policy(limit_refresh_s=0.0), clock=clock)
    for _ in range(30):  # 3 s at 100/s of 40 ms requests at 1.0 CPU: limit 4
        tick(sig, clock, 0.5, usage_cores=0.5, limit_cores=1.0)
        for _ in range(10):
            d = lim.acquire()
            assert isinstance(d, Token)
            clock.now += 0.004
            d.start = clock.now - 0.040
            d.success()
    assert observed(lim).max_inflight == 4
    tick(sig, clock, 1.0, usage_cores=0.5, limit_cores=0.5)  # resized to 0.5 CPU
    assert observed(lim).max_inflight == 2


def test_the_cost_learns_only_from_consecutive_readings() -> None:
    """Usage covers one sampler interval: after a gap (readings not observed, or the very first
    one), the completions since the last observation are not a cost sample."""
    c = CpuCost()
    c.observe(0.0, None, 0)  # the unknown first reading
    c.observe(1000.0, 0.5, 10)  # 1000 s later: not a sample (it was: 50 CPU-s per request)
    assert c.cpu_per_request_s is None
    c.observe(1000.1, 0.5, 20, consecutive=False)
    assert c.cpu_per_request_s is None
    c.observe(1000.2, 0.5, 30)
    assert c.cpu_per_request_s == pytest.approx(0.005)


def test_unnumbered_readings_count_in_a_row_only_once_the_interval_is_known() -> None:
    """A signal without ``seq``: two hot readings are in a row only when their gap is close to
    the shortest gap seen; before any gap is known, none is."""
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock, n=100)

    def unnumbered(fast: float) -> None:
        clock.now += INTERVAL_S
        sig.reading = CpuReading(at=clock.now, utilization=fast, utilization_smoothed=0.1)
        observed(lim)

    unnumbered(0.95)
    unnumbered(0.95)  # the first gap: not yet known to be one interval
    assert not observed(lim).hot
    unnumbered(0.95)  # same gap as the last one: in a row
    assert not observed(lim).hot  # two in a row
    unnumbered(0.95)
    assert observed(lim).hot


# -- the always-on ceiling ---------------------------------------------------------------------


def _busy(lim: Limiter, sig: StaticSignal, clock: Clock, *, n: int, fast: float, limit_cores: float = 0.5) -> None:
    """``n`` requests of 5 ms of CPU each complete, then the reading that saw them (observed)."""
    for _ in range(n):
        d = lim.acquire("critical")
        assert isinstance(d, Token)
        d.success()
    tick(sig, clock, fast, usage_cores=n * 0.005 / INTERVAL_S, limit_cores=limit_cores)
    observed(lim)  # the limiter observes every reading, as it does under steady traffic


def _learn_cost(lim: Limiter, sig: StaticSignal, clock: Clock, *, limit_cores: float = 0.5) -> None:
    """Three cool readings of 10 requests per 100 ms at 5 ms of CPU each: cost 5 ms, capacity 100/s."""
    for _ in range(3):
        _busy(lim, sig, clock, n=10, fast=0.5, limit_cores=limit_cores)


def test_the_ceiling_caps_an_onset_before_any_hot_reading() -> None:
    """A flood arrives between two cool readings: in-flight stops at pipe + queue_allowance (reason
    ``queue``) at once, and the shed starts no cool-off: the request after a release is admitted."""
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock, n=100, queue_allowance=3)
    _learn_cost(lim, sig, clock)
    snap = observed(lim)
    assert snap.cpu_per_request_s == pytest.approx(0.005)
    assert snap.priority_ceilings["default"] == 3  # FixedLimit has no min RT: pipe 0, the queue only
    got = [lim.acquire() for _ in range(10)]
    admitted = [d for d in got if isinstance(d, Token)]
    shed = [d for d in got if isinstance(d, Rejection)]
    assert len(admitted) == 3 and len(shed) == 7
    assert {d.reason.trigger for d in shed} == {"queue"} and not observed(lim).cool_off
    assert {d.reason.stage for d in shed} == {"ceiling"}
    admitted[0].success()
    assert isinstance(lim.acquire(), Token)


def test_without_a_ceiling_the_onset_is_admitted() -> None:
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock, n=100, queue_allowance=None)
    _learn_cost(lim, sig, clock)
    assert all(isinstance(lim.acquire(), Token) for _ in range(10))


def test_the_ceiling_is_off_until_the_cost_is_known() -> None:
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock, n=100, queue_allowance=3)
    tick(sig, clock, 0.1, usage_cores=0.05, limit_cores=0.5)
    assert observed(lim).priority_ceilings["default"] == math.inf
    assert all(isinstance(lim.acquire(), Token) for _ in range(20))


def _feed_50ms_requests(lim: Limiter, sig: StaticSignal, clock: Clock) -> None:
    """Five readings of 10 requests each, RT 50 ms, 5 ms of CPU each at 0.5 CPU (capacity 100/s)."""
    for _ in range(5):
        toks = [lim.acquire() for _ in range(10)]
        clock.now += 0.05
        for d in toks:
            d.success()  # RT 50 ms
        clock.now += 0.05
        sig.reading = reading(clock, 0.5, usage_cores=10 * 0.005 / INTERVAL_S, limit_cores=0.5)
        observed(lim)


def test_the_pipe_is_capacity_times_min_rt_and_follows_the_quota() -> None:
    """Bbr's min RT 50 ms at 100 requests/s of capacity: a pipe of 5, ceiling 5 + 2 sqrt(5) + 3 (the
    chance in-flight above the pipe, then the queue); critical's allowance is 3x. Half the quota halves
    the capacity. With ``pipe_sigmas=0``: the pipe plus the allowance alone."""
    from flowctl.limit.bbr import Bbr

    for sigmas in (2.0, 0.0):
        clock, sig = Clock(), StaticSignal("container")
        lim = Limiter(sig, Bbr(), policy=Policy(limit_refresh_s=0.0, queue_allowance=3, pipe_sigmas=sigmas),
                      clock=clock)  # fmt: skip
        _feed_50ms_requests(lim, sig, clock)
        snap = observed(lim)
        assert snap.cpu_per_request_s is not None and snap.min_rt_s is not None
        assert snap.min_rt_s == pytest.approx(0.05)
        pipe = 0.5 / snap.cpu_per_request_s * snap.min_rt_s
        assert 4 < pipe <= 5.5
        chance = pipe + sigmas * math.sqrt(pipe)
        assert snap.priority_ceilings == {"critical": math.ceil(chance + 9), "default": math.ceil(chance + 3),
                                          "sheddable": math.ceil(chance + 3)}  # fmt: skip
        tick(sig, clock, 0.5, usage_cores=0.0, limit_cores=0.25)
        half = pipe / 2 + sigmas * math.sqrt(pipe / 2)
        assert observed(lim).priority_ceilings["default"] == math.ceil(half + 3)


def test_critical_is_shed_only_at_its_ceiling_while_hot() -> None:
    """Hot at a limit of 1: default is shed at 1 in flight, critical (reserve) goes on to its ceiling."""
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock, n=1, queue_allowance=3)
    _learn_cost(lim, sig, clock)
    for _ in range(3):
        tick(sig, clock, 0.95, usage_cores=0.5, limit_cores=0.5)
        observed(lim)
    first = lim.acquire("critical")
    d = lim.acquire("default")
    assert isinstance(first, Token) and isinstance(d, Rejection) and d.reason.trigger == "cpu"
    ceiling = int(observed(lim).priority_ceilings["critical"])
    assert ceiling >= 9  # ceil(pipe + 9)
    crit = [lim.acquire("critical") for _ in range(ceiling)]
    assert [isinstance(c, Token) for c in crit] == [True] * (ceiling - 1) + [False]
    assert crit[-1].reason.trigger == "queue"  # type: ignore[union-attr]


def test_queue_allowance_is_checked() -> None:
    for bad in (-1, 1.5, "3"):
        with pytest.raises(ConfigError):
            limiter(StaticSignal(), Clock(), queue_allowance=bad)


def test_a_ceiling_shed_makes_one_hot_reading_enough() -> None:
    """One reading over the threshold is a spike; one after the ceiling shed is an onset: hot."""
    clock, sig = Clock(), StaticSignal("container")
    lim = limiter(sig, clock, n=1, queue_allowance=3)
    _learn_cost(lim, sig, clock)
    tick(sig, clock, 0.95, usage_cores=0.5, limit_cores=0.5)
    observed(lim)
    assert not observed(lim).hot  # a spike alone
    tick(sig, clock, 0.5, usage_cores=0.25, limit_cores=0.5)
    held = [lim.acquire() for _ in range(4)]
    assert isinstance(held[-1], Rejection) and held[-1].reason.trigger == "queue"
    for t in held[1:3]:
        t.success()
    tick(sig, clock, 0.95, usage_cores=0.5, limit_cores=0.5)
    d = lim.acquire()  # 1 in flight, at the limit of 1, hot: shed
    assert isinstance(d, Rejection) and d.reason.trigger == "cpu"


def test_a_loop_lag_shed_makes_one_hot_reading_enough() -> None:
    """Blocking handlers keep in-flight at 1, so the ceiling never sees their queue; the loop-lag
    trigger does, and its shed counts as the same evidence: one hot reading after it is hot."""
    from tests.test_limiter import FakeTrigger

    clock, sig = Clock(), StaticSignal("container")
    lag = FakeTrigger(threshold=0.05, bypass_inflight=True)
    lim = limiter(sig, clock, n=1, triggers=[lag])
    tick(sig, clock, 0.95, usage_cores=0.5, limit_cores=0.5)
    observed(lim)
    assert not observed(lim).hot  # a spike alone
    tick(sig, clock, 0.5, usage_cores=0.25, limit_cores=0.5)
    lag.value = 0.2
    d = lim.acquire("sheddable")
    assert isinstance(d, Rejection) and d.reason.trigger == "loop_lag"
    lag.value = 0.0
    tick(sig, clock, 0.95, usage_cores=0.5, limit_cores=0.5)
    held = lim.acquire()
    assert isinstance(held, Token)
    d = lim.acquire()  # 1 in flight, at the limit of 1, hot: shed
    assert isinstance(d, Rejection) and d.reason.trigger == "cpu"


def test_the_engaged_limit_keeps_a_core_busy_while_the_group_runs() -> None:
    """Bbr's L uses the average throughput, a quota's share of a core under throttling; while the
    group runs it runs at full speed, and round(min RT / CPU per request) requests keep that core
    busy. RT 50 ms at 5 ms of CPU each: a floor of 10 (L is 5 at 0.5 CPU); off: Bbr's own limit."""
    from flowctl.limit.bbr import Bbr

    def run(busy_floor: bool) -> dict[str, float]:
        clock, sig = Clock(), StaticSignal("container")
        lim = Limiter(sig, Bbr(), policy=Policy(limit_refresh_s=0.0, busy_floor=busy_floor), clock=clock)
        _feed_50ms_requests(lim, sig, clock)
        return observed(lim).priority_limits

    assert run(True)["default"] == 10
    assert run(False)["default"] == 5


def observed(lim: Limiter) -> LimiterSnapshot:
    """The snapshot after the limiter took in the latest reading (snapshot() itself only reads)."""
    lim.observe()
    return lim.snapshot()


def test_a_window_of_arrivals_over_capacity_engages_before_any_hot_reading() -> None:
    """Capacity 100/s (cost 5 ms at 0.5 CPU): 10 requests a window of 100 ms. A flood of 3x between two
    cool readings engages at the first window's end (cause ``offered``); the same 0.9x does not."""
    for rate, engaged in ((300.0, True), (90.0, False)):
        clock, sig = Clock(), StaticSignal("container")
        lim = limiter(sig, clock, n=100, offered_sigmas=3.0, queue_allowance=None)
        _learn_cost(lim, sig, clock)
        assert not observed(lim).engaged
        for _ in range(int(rate * 0.25)):  # a quarter of a second, evenly spaced: between two readings
            clock.now += 1.0 / rate
            d = lim.acquire()
            if isinstance(d, Token):
                d.success()
        snap = lim.snapshot()
        assert snap.engaged is engaged, (rate, snap.engagements)
        assert (snap.engagements["offered"] >= 1) is engaged
