"""Property tests: in-flight accounting under any interleaving, and flat memory."""

from __future__ import annotations

import gc
from dataclasses import replace
import math
import sys
import tracemalloc
from collections.abc import Callable

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, rule

from flowctl.limit.base import LimitAlgorithm
from flowctl.limit.bbr import Bbr
from flowctl.limit.fixed import FixedLimit
from flowctl.limit.gradient import Gradient
from flowctl.limiter import DEFAULT_PRIORITIES, PRIORITIES, DryRunStart, Limiter, Rejection, Slot, Token
from flowctl.signal import StaticSignal
from flowctl.limiter import Policy

RESOURCES = ("a", "b", "c")


class LimiterMachine(RuleBasedStateMachine):
    """Random acquires, releases (any kind, repeated), time steps, CPU and dry-run flips; the same
    through the slot API (``slot`` / ``admit`` / one release per admitted request) interleaved."""

    tokens = Bundle("tokens")
    leases = Bundle("leases")  # (slot, start) of requests let in by admit()

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.sig = StaticSignal("container", utilization=0.5)
        self.algo = Bbr(window_s=1.0, buckets=10, cold_start_inflight=3, headroom=0)
        self.lim = Limiter(self.sig, self.algo, policy=Policy(limit_refresh_s=0.0, hot_samples=1, cool_fraction=0.0), clock=lambda: self.now)
        self.last_drop: float | None = None
        self.live: list[Token] = []  # keeps admitted tokens referenced (no finalizer release)
        self.admitted = 0
        self.released = 0

    def _expect_shed(self, priority: str) -> tuple[bool, dict[str, object]]:
        """A reference model of the shedding rule, evaluated before the call, and its inputs."""
        inflight = self.lim.inflight
        share = DEFAULT_PRIORITIES.get(priority, DEFAULT_PRIORITIES["default"]).share
        cap = max(1, math.ceil(share * self.algo.max_inflight(self.now) - 1e-9))
        util = self.sig.reading.utilization
        hot = util is not None and util >= self.lim.policy.cpu_threshold
        cool_off = self.last_drop is not None and self.now < self.last_drop + self.lim.cool_off_s
        model: dict[str, object] = {"inflight": inflight, "cap": cap, "util": util, "cool_off": cool_off}
        return bool(inflight + 1 > cap and (hot or cool_off)), model

    @rule(target=tokens, priority=st.sampled_from((*PRIORITIES, "bogus")), resource=st.sampled_from(RESOURCES))
    def acquire(self, priority: str, resource: str) -> object:
        expect_shed, model = self._expect_shed(priority)
        d = self.lim.acquire(priority, resource)
        assert (d.reason is not None) == expect_shed, (model, d)
        if expect_shed:
            self.last_drop = self.now
        assert d.admitted == (not expect_shed or self.lim.dry_run)
        if isinstance(d, Token):
            self.admitted += 1
            self.live.append(d)
            return d
        assert not d.admitted and d.reason.inflight == self.lim.inflight
        return multiple()

    @rule(target=leases, priority=st.sampled_from((*PRIORITIES, "bogus")), resource=st.sampled_from(RESOURCES))
    def admit(self, priority: str, resource: str) -> object:
        expect_shed, model = self._expect_shed(priority)
        shed_before = self.lim.snapshot().requests
        slot = self.lim.slot(resource, priority)
        start = self.lim.admit(slot)
        if expect_shed:
            self.last_drop = self.now
        if isinstance(start, Rejection):
            assert expect_shed and not self.lim.dry_run, (model, start)
            assert start.reason.inflight == self.lim.inflight
            return multiple()
        assert start == self.now and (not expect_shed or self.lim.dry_run)
        assert isinstance(start, DryRunStart) == expect_shed, (model, start)  # a would-shed carries its reason
        if expect_shed:  # dry-run: admitted, counted as a would-shed
            assert self.lim.snapshot().requests != shed_before
        self.admitted += 1
        return (slot, start)

    @rule(lease=consumes(leases), how=st.sampled_from(("success", "ignore", "dropped")))
    def release_lease(self, lease: tuple[Slot, float], how: str) -> None:
        slot, start = lease
        self.released += 1
        assert getattr(self.lim, how)(slot, start) == self.now - start  # the RT

    @rule(token=tokens, how=st.sampled_from(("success", "ignore", "dropped")), times=st.integers(1, 3))
    def release(self, token: Token, how: str, times: int) -> None:
        if not token.released:
            self.released += 1
        for _ in range(times):
            getattr(token, how)()
        assert token.released

    @rule(token=consumes(tokens))
    def release_via_context_manager(self, token: Token) -> None:
        if not token.released:
            self.released += 1
        with token:
            pass

    @rule(dt=st.sampled_from((0.0, 0.001, 0.05, 0.3, 2.0)))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(util=st.sampled_from((None, 0.1, 0.79, 0.8, 1.0)))
    def cpu(self, util: float | None) -> None:
        self.sig.set(utilization=util)

    @rule(threshold=st.sampled_from((0.5, 0.8, 0.95)))
    def set_threshold(self, threshold: float) -> None:
        self.lim.policy = replace(self.lim.policy, cpu_threshold=threshold)

    @rule()
    def flip_dry_run(self) -> None:
        self.lim.dry_run = not self.lim.dry_run

    @invariant()
    def inflight_is_admitted_minus_released(self) -> None:
        assert self.lim.inflight == self.admitted - self.released >= 0

    @invariant()
    def snapshot_agrees(self) -> None:
        snap = self.lim.snapshot()
        assert snap.inflight == self.lim.inflight
        assert sum(snap.inflight_by_priority.values()) == snap.inflight
        assert sum(snap.inflight_by_resource.values()) == snap.inflight
        assert all(v >= 0 for v in snap.inflight_by_priority.values())
        handed_out = sum(n for (_, _, outcome), n in snap.requests.items() if outcome != "shed")
        assert handed_out == self.admitted
        shed = sum(n for (_, _, outcome), n in snap.requests.items() if outcome == "shed")
        assert shed == sum(snap.shed_by_reason.values())


TestLimiterMachine = LimiterMachine.TestCase
TestLimiterMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def _churn(lim: Limiter, n: int, clock: list[float]) -> None:
    """n acquires; up to 30 held at once, released in bursts by every kind of release."""
    held: list[Token] = []
    for i in range(n):
        clock[0] += 0.0001
        d = lim.acquire(PRIORITIES[i % 3], RESOURCES[i % 3])
        if isinstance(d, Token):
            held.append(d)
        if i % 31 == 30:
            while held:
                t = held.pop()
                (t.success, t.ignore, t.dropped)[i % 3]()
    for t in held:
        t.success()


def _limiter(algo: LimitAlgorithm, clock: list[float]) -> Limiter:
    sig = StaticSignal("container", utilization=0.95, utilization_smoothed=0.9)  # hot: sheds too
    return Limiter(sig, algo, policy=Policy(hot_samples=1, cool_fraction=0.0), clock=lambda: clock[0])


@pytest.mark.slow
def test_memory_stays_flat_over_a_million_requests() -> None:
    """10^6 acquire/release with the default Bbr, shedding part of them: the number of
    allocated memory blocks does not grow (per-request state is O(1), nothing is kept)."""
    clock = [1000.0]
    lim = _limiter(Bbr(headroom=0), clock)
    _churn(lim, 50_000, clock)  # warm up: every bucket, cell and cache exists
    gc.collect()
    base = sys.getallocatedblocks()
    _churn(lim, 1_000_000, clock)
    gc.collect()
    growth = sys.getallocatedblocks() - base
    snap = lim.snapshot()
    assert sum(snap.requests.values()) == 1_050_000
    assert sum(snap.shed_by_reason.values()) > 10_000  # the shedding path was exercised too
    assert snap.tokens_leaked == 0 and snap.inflight == 0
    assert growth < 200, growth


@pytest.mark.parametrize("make_algo", [Bbr, lambda: FixedLimit(8), Gradient], ids=["bbr", "fixed", "gradient"])
def test_traced_memory_stays_flat(make_algo: Callable[[], LimitAlgorithm]) -> None:
    clock = [1000.0]
    lim = _limiter(make_algo(), clock)
    _churn(lim, 20_000, clock)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        _churn(lim, 50_000, clock)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert growth < 8 * 1024, growth


class _Queue:
    """A non-bypass trigger (counts as hot) whose value the test sets."""

    name = "depth"
    threshold = 1.0
    bypass_inflight = False

    def __init__(self) -> None:
        self.value = 0.0

    def check(self, now: float) -> float | None:
        return self.value if self.value >= self.threshold else None


Step = tuple[float | None, float, float, float, float, float, list[str]]
_READING = st.tuples(
    st.one_of(st.none(), st.floats(0.0, 2.0)),  # fast utilization (None: unknown)
    st.floats(0.0, 2.0),  # smoothed
    st.floats(0.0, 1.0),  # throttled ratio
    st.floats(0.0, 1.0),  # pressure ratio
    st.floats(0.0, 3.0),  # the non-bypass trigger's value
    st.sampled_from((0.01, 0.1, 0.1, 0.1, 0.35, 1.2)),  # seconds since the last reading
    st.lists(st.sampled_from(("default", "sheddable", "critical", "release", "release")), max_size=15),
)



@pytest.mark.parametrize("algorithm", ["fixed", "bbr"])
@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_READING, max_size=40), queue=st.sampled_from((None, 0, 3)))
def test_an_idle_looking_group_never_sheds_a_default_request(algorithm: str, steps: list[Step],
                                                             queue: int | None) -> None:  # fmt: skip
    """Whatever the readings, triggers and in-flight: a default-class request is never shed while the
    group's utilization over the last second (the sampler's 1 s EMA) is under half the threshold (no
    loop-lag trigger here: it is the one stage allowed to shed a queue the CPU does not show)."""
    now = [1000.0]
    sig = StaticSignal("container")
    depth = _Queue()
    algo: LimitAlgorithm = FixedLimit(1) if algorithm == "fixed" else Bbr(window_s=1.0, buckets=10, cold_start_inflight=2)
    policy = Policy(limit_refresh_s=0.0, queue_allowance=queue, throttled_threshold=0.2, pressure_threshold=0.2,
                    busy_fraction=0.5)  # fmt: skip
    lim = Limiter(sig, algo, policy=policy, triggers=[depth], clock=lambda: now[0])
    held: list[Token] = []
    for fast, smoothed, throttled, pressure, value, dt, ops in steps:
        now[0] += dt
        sig.set(at=now[0], utilization=fast, utilization_smoothed=smoothed, throttled_ratio=throttled,
                pressure_ratio=pressure, usage_cores=None if fast is None else fast * 0.5, limit_cores=0.5)  # fmt: skip
        depth.value = value
        idle = smoothed < 0.4 - 1e-9  # the last second (the 1 s EMA) under half the threshold
        for op in ops:
            now[0] += 0.002
            if op == "release":
                if held:
                    held.pop(0).success()
                continue
            d = lim.acquire(op)
            if isinstance(d, Token):
                held.append(d)
            elif op == "default":
                assert not idle, (d.reason, smoothed)
