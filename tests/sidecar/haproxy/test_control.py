"""The control decisions without HAProxy: the admission rule, and the Limiter fed HAProxy's completions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flowctl.limiter import Limiter
from flowctl.signal import StaticSignal
from sidecar.app import build_limiter
from sidecar.haproxy.control import MIN_RT_S, Mirror, admission, rt_seconds, uncapped
from tests.sidecar.haproxy.helpers import loopback_config
from tests.test_limiter import FakeClock

PRIOS = ("critical", "default", "sheddable")
INF = math.inf


@dataclass
class Snap:
    priority_limits: dict[str, float] = field(default_factory=lambda: {"critical": 6.0, "default": 2.0, "sheddable": 1.0})
    priority_ceilings: dict[str, float] = field(default_factory=lambda: {"critical": 13.0, "default": 7.0, "sheddable": 7.0})
    hot: bool = False
    cool_off: bool = False
    dry_run: bool = False


def decide(snap: Snap, engaged: bool) -> tuple[int, dict[str, int], bool]:
    s = admission(snap, priorities=PRIOS, default="default", engaged=engaged, max_connections=1024, max_clients=10000)
    return s.maxconn, dict(s.rooms), s.capped


def test_not_engaged_the_ceilings_apply_and_maxconn_is_the_largest_room() -> None:
    # critical, the reserve, may keep more in service than the others (each class is shed at its own room)
    assert decide(Snap(), engaged=False) == (13, {"critical": 13, "default": 7, "sheddable": 7}, True)


def test_engaged_each_class_gets_the_lower_of_its_limit_and_ceiling() -> None:
    # default: shed while its limit is busy; sheddable: while half of it is; critical: at 3x
    assert decide(Snap(), engaged=True) == (6, {"critical": 6, "default": 2, "sheddable": 1}, True)
    snap = Snap(priority_limits={"critical": 30.0, "default": 10.0, "sheddable": 5.0})
    assert decide(snap, engaged=True) == (13, {"critical": 13, "default": 7, "sheddable": 5}, True)


def test_the_reserve_and_every_paced_class_are_held_at_their_ceilings_alone() -> None:
    # as the Limiter: critical (the reserve) is shed only at its ceiling; while the period gate paces,
    # no class is shed at its limit (the gate bounds them inside each CFS period)
    def rooms(**kw: object) -> dict[str, int]:
        return dict(admission(Snap(), priorities=PRIOS, default="default", engaged=True, max_connections=1024,
                              max_clients=10000, **kw).rooms)  # type: ignore[arg-type]  # fmt: skip

    assert rooms(reserve={"critical"}) == {"critical": 13, "default": 2, "sheddable": 1}
    assert rooms(reserve={"critical"}, paced=True) == {"critical": 13, "default": 7, "sheddable": 7}
    # no ceiling known: the limits still hold
    snap = Snap(priority_ceilings={p: INF for p in PRIOS})
    s = admission(snap, priorities=PRIOS, default="default", engaged=True, max_connections=1024, max_clients=10000,
                  reserve={"critical"}, paced=True)  # fmt: skip
    assert dict(s.rooms) == {"critical": 6, "default": 2, "sheddable": 1}


def test_unknown_ceilings_leave_haproxy_at_the_configured_bounds() -> None:
    snap = Snap(priority_ceilings={p: INF for p in PRIOS})
    assert decide(snap, engaged=False) == (1024, {p: 10000 for p in PRIOS}, True)
    assert decide(snap, engaged=True) == (6, {"critical": 6, "default": 2, "sheddable": 1}, True)


def test_never_zero_which_haproxy_reads_as_unlimited() -> None:
    snap = Snap(priority_limits={p: 0.0 for p in PRIOS}, priority_ceilings={p: 0.2 for p in PRIOS})
    maxconn, rooms, _ = decide(snap, engaged=True)
    assert maxconn == 1 and set(rooms.values()) == {1}


def test_dry_run_computes_but_does_not_cap() -> None:
    maxconn, rooms, capped = decide(Snap(dry_run=True), engaged=True)
    assert (maxconn, capped) == (6, False)
    assert uncapped(PRIOS, max_connections=64, max_clients=100).rooms == {p: 100 for p in PRIOS}


def test_rt_from_haproxy_averages() -> None:
    assert rt_seconds(1, 8) == 0.009
    assert rt_seconds(0, 0) == MIN_RT_S  # under a millisecond: whole-ms figures read 0


def make_limiter(clock: FakeClock, **cfg: object) -> tuple[Limiter, StaticSignal]:
    sig = StaticSignal("container", at=clock.now, utilization=0.3, usage_cores=0.15, limit_cores=0.5, seq=1)
    return build_limiter(loopback_config(**cfg), sig, clock=clock), sig


def tick(m: Mirror, completed_total: int, inflight: int, rt_s: float, hold_max: int) -> int:
    """One control tick of the Mirror as the loop runs it: ``record`` (before the reading), then ``hold``."""
    done = m.record(completed_total, inflight, rt_s)
    m.hold(inflight, hold_max)
    return done


def test_mirror_replays_completions_and_holds_the_upstreams_sessions() -> None:
    clock = FakeClock()
    lim, _ = make_limiter(clock, period_gate=False)
    m = Mirror(lim, clock=clock)
    assert tick(m, completed_total=100, inflight=3, rt_s=0.008, hold_max=10) == 0  # a baseline, nothing replayed
    assert (m.held, lim.inflight) == (3, 3)
    for _ in range(30):
        clock.advance(0.1)
        tick(m, completed_total=100 + 8 * (_ + 1), inflight=2, rt_s=0.008, hold_max=10)
    assert (m.held, lim.inflight, m.refused) == (2, 2, 0)
    assert m.replayed_total == 240
    snap = lim.snapshot()
    assert snap.requests[("default", "default", "admitted")] == 243  # 3 held + 240 completed (one batch a tick)
    assert snap.warm and snap.min_rt_s is not None and abs(snap.min_rt_s - 0.008) < 1e-6
    assert snap.max_pass_per_s is not None and 70 <= snap.max_pass_per_s <= 90  # 8 per 100 ms bucket


def test_mirror_hold_is_capped_and_a_restart_releases_the_old_childs_requests() -> None:
    clock = FakeClock()
    lim, _ = make_limiter(clock, period_gate=False)
    m = Mirror(lim, clock=clock)
    tick(m, 0, inflight=50, rt_s=0.01, hold_max=4)
    assert m.held == 4
    clock.advance(0.1)
    tick(m, 10, inflight=1, rt_s=0.01, hold_max=4)
    assert m.held == 1
    clock.advance(0.1)
    tick(m, 3, inflight=0, rt_s=0.01, hold_max=4)  # counters went backwards: a new child
    assert m.held == 0 and m.replayed_total == 10
    clock.advance(0.1)
    tick(m, 5, inflight=0, rt_s=0.01, hold_max=4)
    assert m.replayed_total == 12  # counted from the new child's 3


def test_the_cpu_cost_divides_by_completions_not_by_the_mirrors_hold_releases() -> None:
    """The hold follows the upstream's sessions up and down each tick; its releases are not completions
    (counting them read 4.9 ms for a 5.6 ms request under overload, and the period gate over-admitted)."""
    clock = FakeClock()
    lim, sig = make_limiter(clock, period_gate=False)
    m = Mirror(lim, clock=clock)
    for i in range(40):
        clock.advance(0.1)
        sig.set(at=clock.now, usage_cores=0.4)  # 40 ms of CPU per 100 ms reading ...
        lim.observe()
        tick(m, completed_total=8 * i, inflight=4 * (i % 2), rt_s=0.008, hold_max=10)  # ... for 8 completions
    cost = lim.snapshot().cpu_per_request_s
    assert cost is not None and abs(cost - 0.005) < 0.0002
