"""Limiter rules, one test per rule, with a fake clock and a static CPU signal."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from flowctl.errors import ConfigError
from flowctl.limit.bbr import Bbr
from flowctl.cpu.ema import Ema
from flowctl.limit.fixed import FixedLimit
from flowctl.limit.gradient import Gradient
from flowctl.limiter import (
    DEFAULT_PRIORITIES,
    OTHER_RESOURCE,
    Limiter,
    PriorityClass,
    Reason,
    Rejection,
    Token,
    Trigger,
)
from flowctl.signal import CpuReading, StaticSignal
from flowctl.limiter import LimiterSnapshot, Policy
from flowctl.limiter.policy import limiter_kwargs


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt_s: float) -> None:
        self.now += dt_s


@dataclass
class FakeTrigger:
    name: str = "loop_lag"
    threshold: float = 0.05
    bypass_inflight: bool = False
    value: float = 0.0
    calls: int = 0

    def check(self, now: float) -> float | None:
        self.calls += 1
        return self.value if self.value >= self.threshold else None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sig() -> StaticSignal:
    return StaticSignal("container", utilization=0.5, utilization_smoothed=0.5)


# The group reads 0.5 (busy enough to shed: Policy.busy_fraction, not hot). The concurrency rules below are tested on their own: any single hot reading counts (hot_samples=1),
# a cool-off always runs its course (cool_fraction=0) and no CPU budget. tests/limiter/test_policy.py tests those two rules.
RULES: dict[str, object] = {"hot_samples": 1, "cool_fraction": 0.0, "limit_refresh_s": 0.0}
RULES_POLICY = Policy(hot_samples=1, cool_fraction=0.0, limit_refresh_s=0.0)


def make(sig: StaticSignal, clock: FakeClock, n: float = 4, **kw: object) -> Limiter:
    return Limiter(sig, FixedLimit(n), clock=clock, **limiter_kwargs({**RULES, **kw}))


HELD: list[Token] = []


@pytest.fixture(autouse=True)
def _release_held() -> Iterator[None]:
    yield
    HELD.clear()


def fill(lim: Limiter, n: int, priority: str = "default", resource: str = "default") -> list[Token]:
    """Admit n requests and keep them in flight until the test ends (an unreferenced token
    would be released by its finalizer)."""
    out = []
    for _ in range(n):
        d = lim.acquire(priority, resource)
        assert isinstance(d, Token), d
        out.append(d)
    HELD.extend(out)
    return out


# -- the shedding rule -------------------------------------------------------------


def test_cool_cpu_admits_beyond_the_limit(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=4)
    fill(lim, 10)
    assert lim.inflight == 10


def test_hot_cpu_sheds_only_what_would_exceed_the_limit(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=4)
    sig.set(utilization=0.95)
    held = fill(lim, 4)
    d = lim.acquire()
    assert isinstance(d, Rejection) and not d.admitted
    assert d.reason.trigger == "cpu"
    held[0].success()
    assert lim.acquire().admitted  # back to 3 in flight: the 4th fits


def test_threshold_is_inclusive_and_configurable(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1, cpu_threshold=0.5)
    fill(lim, 1)
    sig.set(utilization=0.49, utilization_smoothed=0.49)
    assert lim.acquire().admitted
    sig.set(utilization=0.5)
    assert not lim.acquire().admitted


def test_default_threshold_is_0_8(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1)
    assert lim.policy.cpu_threshold == 0.8
    fill(lim, 1)
    sig.set(utilization=0.79, utilization_smoothed=0.79)
    assert lim.acquire().admitted
    sig.set(utilization=0.8)
    assert not lim.acquire().admitted


def test_unknown_cpu_is_not_hot(clock: FakeClock) -> None:
    sig = StaticSignal("container")  # no reading yet
    lim = make(sig, clock, n=1)
    fill(lim, 5)
    assert observed(lim).hot is False


def test_empty_limiter_never_sheds_on_the_inflight_rule(sig: StaticSignal, clock: FakeClock) -> None:
    sig.set(utilization=1.0, utilization_smoothed=1.0)
    lim = make(sig, clock, n=1)
    for _ in range(100):
        d = lim.acquire("sheddable")
        assert d.admitted
        d.success()


# -- fast and slow signals ---------------------------------------------------------


def test_fast_signal_alone_catches_a_spike(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=2)
    fill(lim, 2)
    sig.set(utilization=0.97, utilization_smoothed=0.35)  # one 100 ms sample, EMA barely moved
    d = lim.acquire()
    assert isinstance(d, Rejection)
    assert d.reason.trigger == "cpu" and d.reason.signal_value == 0.97


def test_smoothed_signal_alone_keeps_it_hot(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=2, cool_off_s=0.0)
    fill(lim, 2)
    sig.set(utilization=0.6, utilization_smoothed=0.85)  # one quiet sample inside a sustained overload
    d = lim.acquire()
    assert isinstance(d, Rejection)
    assert d.reason.signal_value == 0.85


def test_spike_is_caught_and_does_not_flap(clock: FakeClock) -> None:
    """A sampler's fast and EMA signals, simulated on the fake clock: utilization noisy around
    the threshold while the service stays overloaded. The shed decision must not toggle."""
    ema = Ema(tau_s=1.0)
    sig = StaticSignal("container")
    lim = make(sig, clock, n=2)
    held = fill(lim, 2)
    decisions = []
    for i in range(60):  # 6 s of 100 ms samples
        fast = 0.3 if i < 10 else (0.95 if i % 2 else 0.7)  # spike at 1 s, then noisy overload
        sig.set(utilization=fast, utilization_smoothed=ema.update(fast, clock.now), at=clock.now)
        for _ in range(5):  # a few arrivals per sample while 2 stay in flight
            d = lim.acquire()
            decisions.append((i, d.admitted))
            if d.admitted:
                assert isinstance(d, Token)
                d.success()
        clock.advance(0.1)
    assert all(ok for i, ok in decisions if i < 10)
    after = [ok for i, ok in decisions if i >= 11]
    assert not any(after)  # caught at the first hot sample (i=11), never re-admitted beyond the limit
    for t in held:
        t.success()


def test_hot_ends_after_load_drops_and_cool_off_expires(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1, cool_off_s=1.0)
    fill(lim, 1)
    sig.set(utilization=0.9)
    assert not lim.acquire().admitted
    sig.set(utilization=0.3, utilization_smoothed=0.3)
    clock.advance(0.99)
    assert not lim.acquire().admitted  # cool-off from that drop (and this one restarts it)
    clock.advance(1.01)
    assert lim.acquire().admitted


# -- cool-off ------------------------------------------------------------------------


def test_cool_off_is_measured_from_the_last_drop(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1, cool_off_s=1.0)
    fill(lim, 1)
    sig.set(utilization=0.9)
    t0 = clock.now
    assert not lim.acquire().admitted  # first drop at t0
    clock.advance(0.8)
    assert not lim.acquire().admitted  # last drop at t0 + 0.8 (still hot)
    sig.set(utilization=0.3, utilization_smoothed=0.3)
    clock.now = t0 + 1.5  # past first drop + 1 s (Kratos would stop here), within last drop + 1 s
    d = lim.acquire()
    assert isinstance(d, Rejection)
    assert d.reason.trigger == "cool_off" and d.reason.cool_off
    snap = observed(lim)
    assert snap.cool_off and snap.cool_off_until == pytest.approx(t0 + 2.5)
    clock.now = t0 + 2.51
    assert lim.acquire().admitted


def test_cool_off_alone_does_not_shed_within_the_limit(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=2)
    held = fill(lim, 2)
    sig.set(utilization=0.9)
    assert not lim.acquire().admitted
    sig.set(utilization=0.1, utilization_smoothed=0.1)
    held[0].success()
    assert lim.acquire().admitted  # in cool-off, but in-flight fits the limit


def test_cool_off_zero_disables_it(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1, cool_off_s=0.0)
    fill(lim, 1)
    sig.set(utilization=0.9)
    assert not lim.acquire().admitted
    sig.set(utilization=0.1, utilization_smoothed=0.1)
    assert lim.acquire().admitted


# -- priorities ----------------------------------------------------------------------


def test_default_priority_policy_caps(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=10)
    assert observed(lim).priority_limits == {"critical": 30.0, "default": 10.0, "sheddable": 5.0}
    lim1 = make(sig, clock, n=1)
    assert lim1.snapshot().priority_limits == {"critical": 3.0, "default": 1.0, "sheddable": 1.0}


def test_sheddable_goes_first_critical_last_under_one_shared_count(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=10)
    sig.set(utilization=0.95)
    fill(lim, 5, "critical")  # shared: critical work in flight counts against sheddable's share
    assert not lim.acquire("sheddable").admitted
    fill(lim, 5, "default")
    assert not lim.acquire("default").admitted
    fill(lim, 20, "critical")
    assert not lim.acquire("critical").admitted
    snap = observed(lim)
    assert snap.inflight == 30
    assert snap.inflight_by_priority == {"critical": 25, "default": 5, "sheddable": 0}


def test_unknown_priority_counts_as_default(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=2)
    sig.set(utilization=0.95)
    fill(lim, 2, "whatever")
    d = lim.acquire("bogus")
    assert isinstance(d, Rejection) and d.reason.priority == "default"
    assert observed(lim).inflight_by_priority["default"] == 2
    assert ("default", "bogus") not in lim._partitions.slots  # arbitrary names never grow state
    assert ("default", "bogus") not in lim._lookup


def test_acquire_without_priority_uses_the_configured_default(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=4, default_priority="sheddable")
    assert lim.default_priority == "sheddable" and lim.priorities == ("critical", "default", "sheddable")
    held = [lim.acquire(), lim.acquire()]
    assert all(isinstance(t, Token) and t.priority == "sheddable" for t in held)
    HELD.extend(t for t in held if isinstance(t, Token))
    sig.set(utilization=0.95)
    d = lim.acquire()  # sheddable's cap is 2 of 4
    assert isinstance(d, Rejection) and d.reason.priority == "sheddable"
    bogus = lim.acquire("bogus")  # unknown names: the configured default too
    assert isinstance(bogus, Rejection) and bogus.reason.priority == "sheddable"
    fill(lim, 1, "default")  # an explicit class is still that class
    snap = observed(lim)
    assert snap.inflight_by_priority == {"critical": 0, "default": 1, "sheddable": 2}
    assert snap.requests[("default", "sheddable", "shed")] == 2


def test_custom_priority_classes(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(
        sig,
        clock,
        n=10,
        priorities={"gold": PriorityClass(1.0, 1.0), "bronze": PriorityClass(0.2, 1.0)},
        default_priority="gold",
    )
    sig.set(utilization=0.95)
    fill(lim, 2, "bronze")
    assert not lim.acquire("bronze").admitted
    t = lim.acquire()
    assert isinstance(t, Token) and t.priority == "gold"
    assert lim.priorities == ("gold", "bronze") and lim.default_priority == "gold"


# -- reasons and retry-after -------------------------------------------------------------


def test_reason_carries_every_field_and_is_json_able(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=4)
    fill(lim, 2, "sheddable", "search")
    sig.set(utilization=0.91, utilization_smoothed=0.82)
    d = lim.acquire("sheddable", "search")
    assert isinstance(d, Rejection)
    r = d.reason
    assert r == Reason(
        trigger="cpu",
        stage="limit",
        signal_name="container",
        signal_value=0.91,
        threshold=0.8,
        inflight=2,
        max_inflight=4.0,
        priority="sheddable",
        resource="search",
        cool_off=False,
        retry_after_s=1.0,
        dry_run=False,
        priority_limit=2.0,
    )
    assert d.retry_after_s == r.retry_after_s
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.trigger = "x"  # type: ignore[misc]
    assert dataclasses.replace(r, inflight=3).inflight == 3 and hash(r) == hash(dataclasses.replace(r))
    assert json.loads(json.dumps(r.as_dict(), allow_nan=False)) == r.as_dict()


def test_retry_after_covers_the_drain_time_when_longer_than_cool_off(sig: StaticSignal, clock: FakeClock) -> None:
    bbr = Bbr(window_s=1.0, buckets=10, headroom=0)
    lim = Limiter(sig, bbr, clock=clock, policy=replace(RULES_POLICY, limit_refresh_s=0.0, cool_off_s=0.2))
    # 10 completions of 100 ms in one bucket: 100/s * 0.1 s -> max_inflight 10
    for i in range(10):
        bbr.on_sample(clock.now + 0.005 + 0.009 * i, 0.1, 10, False)
    clock.advance(0.15)
    fill(lim, 40)
    sig.set(utilization=0.95)
    d = lim.acquire()
    assert isinstance(d, Rejection)
    assert d.reason.max_inflight == 10
    assert d.retry_after_s == pytest.approx(31 / 100)  # (40 + 1 - 10) excess at 100/s


def test_retry_after_has_a_floor(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1, cool_off_s=0.0)
    fill(lim, 1)
    sig.set(utilization=0.95)
    assert lim.acquire().retry_after_s == 0.1


# -- dry-run -------------------------------------------------------------------------


def test_dry_run_admits_counts_and_explains(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1, dry_run=True)
    fill(lim, 1)
    sig.set(utilization=0.95)
    d = lim.acquire()
    assert isinstance(d, Token) and d.admitted
    assert d.reason is not None and d.reason.dry_run and d.reason.trigger == "cpu"
    snap = observed(lim)
    assert snap.inflight == 2
    assert snap.requests[("default", "default", "dry_run_shed")] == 1
    assert snap.requests[("default", "default", "admitted")] == 1
    assert snap.dry_run_shed_by_reason == {("default", "cpu"): 1}
    assert snap.shed_by_reason == {}
    assert snap.cool_off  # dry-run follows the same state machine as the real thing
    d.success()
    assert lim.inflight == 1


def test_dry_run_can_be_switched_at_runtime(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1, dry_run=True)
    fill(lim, 1)
    sig.set(utilization=0.95)
    assert lim.acquire().admitted
    lim.dry_run = False
    assert not lim.acquire().admitted


# -- optional triggers ---------------------------------------------------------------------


def test_throttled_and_pressure_are_off_by_default(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1)
    fill(lim, 1)
    sig.set(throttled_ratio=1.0, pressure_ratio=1.0)
    assert lim.acquire().admitted


@pytest.mark.parametrize(("field", "trigger"), [("throttled_ratio", "throttled"), ("pressure_ratio", "pressure")])
def test_throttled_and_pressure_triggers_when_configured(
    sig: StaticSignal, clock: FakeClock, field: str, trigger: str
) -> None:
    lim = make(sig, clock, n=1, cool_off_s=0.0, throttled_threshold=0.2, pressure_threshold=0.3)
    fill(lim, 1)
    sig.set(**{field: 0.19})  # type: ignore[arg-type]
    assert lim.acquire().admitted
    sig.set(**{field: 0.5})  # type: ignore[arg-type]
    d = lim.acquire()
    assert isinstance(d, Rejection)
    assert (d.reason.trigger, d.reason.signal_value, d.reason.signal_name) == (trigger, 0.5, "container")


def test_non_bypass_trigger_counts_as_hot(sig: StaticSignal, clock: FakeClock) -> None:
    trig = FakeTrigger(name="queue", threshold=10)
    lim = make(sig, clock, n=1, cool_off_s=0.0, triggers=[trig])
    fill(lim, 1)
    assert lim.acquire().admitted
    trig.value = 12
    d = lim.acquire()
    assert isinstance(d, Rejection)
    assert (d.reason.trigger, d.reason.signal_name, d.reason.signal_value, d.reason.threshold) == ("queue", "queue", 12, 10)


def test_non_bypass_trigger_is_not_polled_within_the_limit(sig: StaticSignal, clock: FakeClock) -> None:
    trig = FakeTrigger(value=1.0)
    lim = make(sig, clock, n=10, triggers=[trig])
    for _ in range(5):
        lim.acquire().success()
    assert trig.calls == 0


def test_bypass_trigger_sheds_at_inflight_one_by_priority(sig: StaticSignal, clock: FakeClock) -> None:
    """Blocking handlers: in-flight stays at 1, only loop lag sees the queue."""
    lag = FakeTrigger(threshold=0.05, bypass_inflight=True)
    lim = make(sig, clock, n=100, cool_off_s=0.0, triggers=[lag])
    assert isinstance(lag, Trigger)

    def admitted(priority: str) -> bool:
        d = lim.acquire(priority)
        d.success()
        return d.admitted

    lag.value = 0.04
    assert all(admitted(p) for p in ("sheddable", "default", "critical"))
    lag.value = 0.06  # >= 1x threshold: sheddable only
    assert [admitted(p) for p in ("sheddable", "default", "critical")] == [False, True, True]
    lag.value = 0.10  # >= 2x: default too
    assert [admitted(p) for p in ("sheddable", "default", "critical")] == [False, False, True]
    lag.value = 0.26  # >= 5x: critical last
    assert [admitted(p) for p in ("sheddable", "default", "critical")] == [False, False, False]
    d = lim.acquire("default")
    assert isinstance(d, Rejection)
    assert (d.reason.trigger, d.reason.inflight) == ("loop_lag", 0)
    assert d.reason.threshold == pytest.approx(0.10)


def test_bypass_trigger_sheds_with_one_in_flight(sig: StaticSignal, clock: FakeClock) -> None:
    lag = FakeTrigger(threshold=0.05, bypass_inflight=True, value=0.2)
    lim = make(sig, clock, n=100, triggers=[lag])
    lag.value = 0.0
    held = fill(lim, 1)
    lag.value = 0.2
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.inflight == 1
    held[0].success()


def test_bypass_trigger_with_quiet_until_is_not_called_before_it(sig: StaticSignal, clock: FakeClock) -> None:
    """A bypass trigger's ``quiet_until`` (LoopLagMonitor's) spares the call; without one, every acquire calls."""
    quiet = FakeTrigger(threshold=0.05, bypass_inflight=True, value=1.0)
    quiet.quiet_until = clock.now + 1.0  # type: ignore[attr-defined]  # promises None until then
    plain = FakeTrigger(name="plain", threshold=10.0, bypass_inflight=True, value=0.0)
    lim = make(sig, clock, n=100, triggers=[quiet, plain])
    for _ in range(3):
        lim.acquire().success()
    assert (quiet.calls, plain.calls) == (0, 3)
    clock.now += 1.0  # now == quiet_until: due
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "loop_lag" and d.reason.stage == "lag"
    assert (quiet.calls, plain.calls) == (1, 3)  # shed at the first trigger; the second is not asked
    assert lim.triggers == (quiet, plain)  # the triggers as given, not the limiter's view of them


def test_bypass_trigger_without_a_numeric_quiet_until_is_asked_every_time_by_its_current_name(
    sig: StaticSignal, clock: FakeClock
) -> None:
    """No quiet_until (or a non-number) means "always ask"; the trigger's name and check are read
    per request, not copied when it was added."""
    lag = FakeTrigger(threshold=0.05, bypass_inflight=True, value=1.0)
    lag.quiet_until = None  # type: ignore[attr-defined]  # not a number: ignored, never a TypeError
    lim = make(sig, clock, n=100, triggers=[lag])
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "loop_lag" and lag.calls == 1
    lag.name = "renamed"
    d = lim.acquire()
    assert isinstance(d, Rejection) and d.reason.trigger == "renamed" and lag.calls == 2
    lag.value = 0.0
    assert lim.acquire().admitted and lag.calls == 3


def test_triggers_can_be_added_and_removed(sig: StaticSignal, clock: FakeClock) -> None:
    lag = FakeTrigger(bypass_inflight=True, value=1.0)
    lim = make(sig, clock)
    lim.add_trigger(lag)
    assert lim.triggers == (lag,)
    assert not lim.acquire().admitted
    lim.remove_trigger(lag)
    assert lim.acquire().admitted
    with pytest.raises(ConfigError):
        lim.add_trigger(object())  # type: ignore[arg-type]


def test_real_loop_lag_monitor_is_a_trigger(sig: StaticSignal, clock: FakeClock) -> None:
    from flowctl.looplag import LoopLagMonitor

    mon = LoopLagMonitor(threshold_s=0.05, clock=clock)
    lim = make(sig, clock, triggers=[mon])
    mon.arm(clock.now)
    clock.advance(0.2)  # the loop has been blocked for 200 ms since the probe was queued
    d = lim.acquire("default")
    assert isinstance(d, Rejection) and d.reason.trigger == "loop_lag"


# -- tokens --------------------------------------------------------------------------


def test_release_is_idempotent_and_never_negative(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock)
    t = lim.acquire()
    assert isinstance(t, Token)
    t.success()
    t.success()
    t.ignore()
    t.dropped()
    assert lim.inflight == 0 and t.released
    assert observed(lim).inflight_by_priority["default"] == 0


def test_release_returns_the_rt_once(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock)
    a, b, c = lim.acquire(), lim.acquire(), lim.acquire()
    assert isinstance(a, Token) and isinstance(b, Token) and isinstance(c, Token)
    clock.advance(0.25)
    assert a.success() == pytest.approx(0.25)
    assert b.ignore() == pytest.approx(0.25)
    clock.advance(0.25)
    assert c.dropped() == pytest.approx(0.5)
    assert (a.success(), a.ignore(), b.dropped(), c.success()) == (None, None, None, None)
    assert lim.inflight == 0


def test_success_feeds_rt_ignore_does_not_dropped_says_so(sig: StaticSignal, clock: FakeClock) -> None:
    seen: list[tuple[float, float, int, bool]] = []

    class Recorder(FixedLimit):
        def on_sample(self, now: float, rt_s: float, inflight: int, dropped: bool) -> None:
            seen.append((now, rt_s, inflight, dropped))

    lim = Limiter(sig, Recorder(4), clock=clock, policy=replace(RULES_POLICY))
    a, b, c = lim.acquire(), lim.acquire(), lim.acquire()
    clock.advance(0.25)
    a.success()
    b.ignore()
    c.dropped()
    assert [(now, round(rt_s, 9), inflight, dropped) for now, rt_s, inflight, dropped in seen] == [
        (clock.now, 0.25, 3, False),
        (clock.now, 0.25, 1, True),
    ]


def test_completed_feeds_the_algorithm_as_success_does_and_runs_no_stage(sig: StaticSignal, clock: FakeClock) -> None:
    seen: list[tuple[float, float, int, bool]] = []

    class Recorder(FixedLimit):
        def on_sample(self, now: float, rt_s: float, inflight: int, dropped: bool) -> None:
            seen.append((now, rt_s, inflight, dropped))

    lim = Limiter(sig, Recorder(1), clock=clock, **limiter_kwargs(RULES))
    sig.set(utilization=0.99)  # hot, and one held request fills the limit: admit would shed
    held = fill(lim, 1)
    assert isinstance(lim.acquire(), Rejection)
    slot = lim.slot("default", "default")
    before = lim.snapshot().requests
    lim.completed(slot, 3, 0.02, 2)
    lim.completed(slot, 0, 0.02, 2)
    assert seen == [(clock.now, 0.02, 2, False)] * 3
    assert lim.inflight == 1 and held
    after = lim.snapshot().requests
    key = ("default", "default", "admitted")
    assert after[key] - before[key] == 3
    assert after[("default", "default", "shed")] == before[("default", "default", "shed")]


def test_bbr_learns_from_released_tokens(sig: StaticSignal, clock: FakeClock) -> None:
    lim = Limiter(sig, Bbr(headroom=0), clock=clock, policy=replace(RULES_POLICY, limit_refresh_s=0.0))
    for _ in range(10):  # 10 sequential 10 ms requests per 100 ms bucket
        t = lim.acquire()
        clock.advance(0.01)
        t.success()
    clock.advance(0.001)
    snap = observed(lim)
    assert snap.warm and snap.min_rt_s == pytest.approx(0.01)
    assert snap.max_inflight == 1  # 100/s * 10 ms


def test_sync_context_manager(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock)
    with lim.acquire() as t:
        assert lim.inflight == 1 and t.admitted
    assert lim.inflight == 0
    with pytest.raises(RuntimeError), lim.acquire():
        raise RuntimeError("handler failed")
    assert lim.inflight == 0


async def test_async_context_manager_maps_outcomes(sig: StaticSignal, clock: FakeClock) -> None:
    outcomes: list[bool] = []

    class Recorder(FixedLimit):
        def on_sample(self, now: float, rt_s: float, inflight: int, dropped: bool) -> None:
            outcomes.append(dropped)

    lim = Limiter(sig, Recorder(4), clock=clock, policy=replace(RULES_POLICY))
    async with lim.acquire():
        await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with lim.acquire():
            raise TimeoutError
    with pytest.raises(ValueError):
        async with lim.acquire():
            raise ValueError
    assert outcomes == [False, True]  # success, dropped; the ValueError was ignored
    assert lim.inflight == 0


async def test_rejection_is_a_no_op_context_manager(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1)
    sig.set(utilization=0.9)
    held = fill(lim, 1)
    d = lim.acquire()
    assert isinstance(d, Rejection)
    with d:
        pass
    async with d:
        pass
    d.success()
    d.ignore()
    d.dropped()
    assert lim.inflight == 1
    held[0].ignore()


def test_forgotten_token_is_released_and_counted(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock)
    lim.acquire()  # dropped on the floor
    gc.collect()
    assert lim.inflight == 0
    assert observed(lim).tokens_leaked == 1


def test_token_properties(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock)
    t = lim.acquire("critical", "api")
    assert isinstance(t, Token)
    assert (t.priority, t.resource, t.start, t.reason, t.retry_after_s) == ("critical", "api", clock.now, None, 0.0)
    assert "api/critical" in repr(t)
    t.success()
    with pytest.raises(ValueError):
        _ = t.priority


# -- cold start ----------------------------------------------------------------------


def test_cold_start_caps_a_start_up_overload_without_shedding_everything(clock: FakeClock) -> None:
    sig = StaticSignal("container", utilization=1.0, utilization_smoothed=1.0)  # hot from the start
    lim = Limiter(sig, clock=clock)  # default Bbr, no data
    decisions = [lim.acquire() for _ in range(100)]
    admitted = [d for d in decisions if d.admitted]
    assert len(admitted) == 16  # Bbr's cold_start_inflight: neither 100 (collapse) nor 0
    snap = observed(lim)
    assert not snap.warm and snap.max_inflight == 16
    for d in admitted:
        d.success()


def test_cold_start_then_learns_the_real_limit(clock: FakeClock) -> None:
    sig = StaticSignal("container", utilization=1.0, utilization_smoothed=1.0)
    lim = Limiter(sig, Bbr(headroom=0), clock=clock, policy=replace(RULES_POLICY, limit_refresh_s=0.0))
    for _ in range(20):  # 20 x 5 ms in one bucket: 200/s * 5 ms = 1
        t = lim.acquire()
        clock.advance(0.005)
        t.success()
    clock.advance(0.001)
    assert observed(lim).max_inflight == 1
    fill(lim, 1)
    assert not lim.acquire().admitted


# -- signal ownership, gating, config -------------------------------------------------------


def test_signal_none_builds_an_unstarted_container_sampler(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    import flowctl.cpu

    made: list[str] = []

    def fake_make_signal(view: str = "container", **kw: object) -> StaticSignal:
        made.append(view)
        return StaticSignal("container")

    monkeypatch.setattr(flowctl.cpu, "make_signal", fake_make_signal)
    lim = Limiter(clock=clock, policy=replace(RULES_POLICY))
    assert made == ["container"]
    assert lim.signal.name == "container"


def test_signal_none_with_the_real_sampler_is_not_started(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, policy=replace(RULES_POLICY))
    assert lim.signal.name == "container"
    assert lim.signal.reading.utilization is None  # nobody sampled: unknown, not hot
    assert lim.acquire().admitted


def test_cpu_gate_off_is_a_plain_concurrency_limiter(sig: StaticSignal, clock: FakeClock) -> None:
    lim = Limiter(sig, Gradient(initial_limit=3), clock=clock, policy=replace(RULES_POLICY, cpu_gate=False, cool_off_s=0.0))
    fill(lim, 3)
    d = lim.acquire()
    assert isinstance(d, Rejection)
    assert (d.reason.trigger, d.reason.signal_name) == ("limit", "gradient")


@pytest.mark.parametrize(
    "kw",
    [
        {"cpu_threshold": 0},
        {"cpu_threshold": math.nan},
        {"cool_off_s": -1},
        {"throttled_threshold": -0.1},
        {"pressure_threshold": math.inf},
        {"max_resources": 0},
        {"limit_refresh_s": -1},
        {"priorities": {}},
        {"priorities": {"default": PriorityClass(0, 1)}},
        {"priorities": {"default": PriorityClass(1, 0.5)}},
        {"default_priority": "gold"},
    ],
)
def test_bad_config_is_rejected(sig: StaticSignal, kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Limiter(sig, FixedLimit(1), **limiter_kwargs(kw))


def test_limit_refresh_is_rate_limited(sig: StaticSignal, clock: FakeClock) -> None:
    g = Gradient(initial_limit=2)
    lim = Limiter(sig, g, clock=clock, policy=replace(RULES_POLICY, limit_refresh_s=0.01))
    sig.set(utilization=0.95)
    fill(lim, 2)
    g.limit = 10.0
    assert not lim.acquire().admitted  # the old limit holds for up to 10 ms
    clock.advance(0.01)
    assert lim.acquire().admitted


# -- resources and snapshot -------------------------------------------------------------


def test_resources_beyond_the_bound_share_one_bucket(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=100, max_resources=3)
    for i in range(10):
        lim.acquire(resource=f"r{i}").success()
    snap = observed(lim)
    assert set(snap.inflight_by_resource) == {"r0", "r1", "r2", OTHER_RESOURCE}
    assert snap.requests[(OTHER_RESOURCE, "default", "admitted")] == 7
    assert len(lim._partitions.slots) == 4


def test_snapshot_counts_and_is_json_able(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1, triggers=[FakeTrigger(name="q", threshold=5)])
    a = lim.acquire("critical", "api")
    lim.acquire("sheddable", "api").success()
    sig.set(utilization=0.9)
    lim.acquire("sheddable", "api")
    lim.acquire("default", "web")
    snap = observed(lim)
    assert snap.inflight == 1
    assert snap.inflight_by_resource == {"api": 1, "web": 0}
    assert snap.requests[("api", "critical", "admitted")] == 1
    assert snap.requests[("api", "sheddable", "admitted")] == 1
    assert snap.requests[("api", "sheddable", "shed")] == 1
    assert snap.requests[("web", "default", "shed")] == 1
    assert snap.shed_by_reason == {("api", "cpu"): 1, ("web", "cpu"): 1}
    assert snap.hot and snap.hot_triggers == ("cpu",)
    assert snap.signal_name == "container" and snap.cpu.utilization == 0.9
    assert snap.algorithm == "fixed" and snap.triggers == {"q": None}
    d = snap.as_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["requests"]["api"]["sheddable"] == {"admitted": 1, "shed": 1, "dry_run_shed": 0}
    assert d["shed_by_reason"] == {"api": {"cpu": 1}, "web": {"cpu": 1}}
    a.success()


def test_snapshot_lists_every_hot_signal_and_a_shed_names_the_first(sig: StaticSignal, clock: FakeClock) -> None:
    trig = FakeTrigger(name="q", threshold=5, value=6)
    lim = make(sig, clock, n=1, throttled_threshold=0.2, pressure_threshold=0.3, triggers=[trig])
    fill(lim, 1)
    sig.set(utilization=0.9, throttled_ratio=0.5, pressure_ratio=0.5)
    assert observed(lim).hot_triggers == ("cpu", "throttled", "pressure", "q")
    expected = [("cpu", 0.9), ("throttled", 0.5), ("pressure", 0.5), ("q", 6)]
    for trigger, value in expected:
        d = lim.acquire()
        assert isinstance(d, Rejection) and (d.reason.trigger, d.reason.signal_value) == (trigger, value)
        if trigger == "cpu":
            sig.set(utilization=0.45, utilization_smoothed=0.45)  # not hot, still busy
        elif trigger == "throttled":
            sig.set(throttled_ratio=0.0)
        elif trigger == "pressure":
            sig.set(pressure_ratio=0.0)
    assert observed(lim).hot_triggers == ("q",)


def test_snapshot_before_any_drop_has_no_cool_off_time(sig: StaticSignal, clock: FakeClock) -> None:
    snap = make(sig, clock).snapshot()
    assert snap.cool_off_until is None and not snap.cool_off
    assert snap.cpu == CpuReading(utilization=0.5, utilization_smoothed=0.5)


def test_unknown_cpu_while_overloaded_logs_once(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    lim = make(StaticSignal("container"), clock, n=1)
    fill(lim, 2)
    clock.advance(10.0)
    with caplog.at_level("WARNING", logger="flowctl.limiter"):
        for _ in range(3):
            lim.acquire()
    assert sum("no reading" in r.getMessage() for r in caplog.records) == 1


def test_default_priorities_table_is_documented_policy() -> None:
    assert DEFAULT_PRIORITIES["sheddable"].share < DEFAULT_PRIORITIES["default"].share == 1.0
    assert DEFAULT_PRIORITIES["critical"].share > 1.0
    scales = [DEFAULT_PRIORITIES[p].trigger_scale for p in ("sheddable", "default", "critical")]
    assert scales == sorted(scales) and scales[0] == 1.0


# -- the "busy but cool" cache must never hide a change ----------------------------------


@pytest.mark.parametrize(
    "change",
    ["cpu_threshold", "throttled_threshold", "pressure_threshold", "cpu_gate", "add_trigger", "new_reading", "signal"],
)
def test_busy_but_cool_shortcut_sees_every_change(sig: StaticSignal, clock: FakeClock, change: str) -> None:
    sig.set(utilization=0.7, utilization_smoothed=0.7, throttled_ratio=0.5, pressure_ratio=0.5)
    lim = make(sig, clock, n=1, cool_off_s=0.0)
    fill(lim, 1)
    assert lim.acquire().admitted  # reading evaluated: not hot (cached)
    assert lim.acquire().admitted  # served by the shortcut
    if change == "cpu_threshold":
        lim.policy = replace(lim.policy, cpu_threshold=0.6)
    elif change == "throttled_threshold":
        lim.policy = replace(lim.policy, throttled_threshold=0.4)
    elif change == "pressure_threshold":
        lim.policy = replace(lim.policy, pressure_threshold=0.4)
    elif change == "cpu_gate":
        lim.policy = replace(lim.policy, cpu_gate=False)
    elif change == "add_trigger":
        lim.add_trigger(FakeTrigger(value=1.0))
    elif change == "new_reading":
        sig.set(utilization=0.9)
    else:
        lim.signal = StaticSignal("other", utilization=0.99)
    d = lim.acquire()
    assert isinstance(d, Rejection), change


def test_busy_but_cool_shortcut_still_honours_cool_off(sig: StaticSignal, clock: FakeClock) -> None:
    lim = make(sig, clock, n=1, cool_off_s=1.0)
    fill(lim, 1)
    assert lim.acquire().admitted  # cool reading cached
    lim.add_trigger(FakeTrigger(bypass_inflight=True, value=1.0))
    assert not lim.acquire("sheddable").admitted  # a drop: cool-off starts
    lim.remove_trigger(lim.triggers[0])
    assert lim.acquire().admitted is False  # in cool-off: shed although the CPU reading is cool
    assert lim.acquire().admitted is False  # ... also once that cool reading is cached
    clock.advance(1.01)
    assert lim.acquire().admitted
    assert lim.acquire().admitted  # the shortcut again


@pytest.mark.parametrize("view", ["container", "host", "lxcfs"])
def test_every_real_cpu_view_plugs_in(view: str) -> None:
    """The real samplers (sampled by hand, not started) are CPU signals the limiter reads by name."""
    from flowctl.cpu import make_signal

    clock = FakeClock()
    signal = make_signal(view, clock=clock)
    signal.sample()
    clock.advance(0.1)
    signal.sample()
    lim = Limiter(signal, FixedLimit(1), clock=clock, policy=replace(RULES_POLICY))
    held = lim.acquire()
    d = lim.acquire()
    assert d.admitted or (isinstance(d, Rejection) and d.reason.signal_name == view)
    assert observed(lim).signal_name == view
    held.success()
    d.success()


def observed(lim: Limiter) -> LimiterSnapshot:
    """The snapshot after the limiter took in the latest reading (snapshot() itself only reads)."""
    lim.observe()
    return lim.snapshot()
