"""The haproxy engine's period gate (``Pacer``) and the control loop's use of it, without HAProxy."""

from __future__ import annotations

import asyncio

from flowctl.limiter import DEFAULT_POLICY
from flowctl.signal import StaticSignal
from sidecar.app import build_limiter
from sidecar.clients import ClientGuard
from sidecar.haproxy.loop import Controller
from sidecar.haproxy.pace import Pacer
from sidecar.haproxy.runtime import Stats
from tests.sidecar.haproxy.helpers import FakeRuntime, loopback_config, recorded
from tests.test_limiter import FakeClock

QUOTA, PERIOD = 0.05, 0.1  # 0.5 CPU
COST = 0.005
MAP = "/run/x/admission.map"
WHY = "/run/x/why.map"


class Group:
    """A cgroup's CFS counters, moved by hand."""

    own_group = False

    def __init__(self, quota: tuple[float, float] | None = (QUOTA, PERIOD)) -> None:
        self.usage_s, self.periods, self.throttled, self.throttled_s = 10.0, 100, 0, 0.0
        self._quota = quota

    def quota(self) -> tuple[float, float] | None:
        return self._quota

    def read(self) -> tuple[float, int, int, float | None]:
        return self.usage_s, self.periods, self.throttled, self.throttled_s


def pacer(group: Group) -> Pacer:
    p = Pacer(DEFAULT_POLICY, {"default": 0.0, "sheddable": 0.5})
    p.follow(group, 0.5)
    return p


def spend(p: Pacer, group: Group, clock: FakeClock, seconds: float) -> None:
    """A read, then ``seconds`` of wall time in which the group spends as much CPU, then a read."""
    p.read(clock.now)
    clock.advance(seconds)
    group.usage_s += seconds
    p.read(clock.now)


def test_engaged_caps_shrink_as_the_period_is_spent_and_sheddable_gets_less() -> None:
    clock, group = FakeClock(), Group()
    p = pacer(group)
    assert p.active
    p.read(clock.now)
    rooms = {"critical": 11, "default": 5, "sheddable": 5}
    # margin 0.1: 45 ms of the 50 ms quota; (k + 1) x 5 ms fit: 9 in service at most, room 5 binds
    assert p.caps(clock.now, rooms, COST, engaged=True) == {"default": 5, "sheddable": 5}
    clock.advance(0.03)
    group.usage_s += 0.03
    p.read(clock.now)
    # 30 ms used: 15 ms left for default (3 requests); sheddable's level: 0.75 x 45 - 30 = 3.75 ms (0)
    assert p.caps(clock.now, rooms, COST, engaged=True) == {"default": 3, "sheddable": 0}
    group.usage_s += 0.021  # the whole quota, and more
    clock.advance(0.02)
    p.read(clock.now)
    assert p.caps(clock.now, rooms, COST, engaged=False) == {"default": 0, "sheddable": 0}
    group.periods += 1  # a new period: all open again
    clock.advance(0.05)
    p.read(clock.now)
    assert p.caps(clock.now, rooms, COST, engaged=False) == {"default": 5, "sheddable": 5}


def test_not_engaged_caps_count_only_the_in_flight_beyond_the_chance_slack() -> None:
    """As the Limiter's period stage: not engaged, the whole quota, counting the in-flight work beyond
    ``slack`` (the in-flight Poisson arrivals bring at capacity); None (unknown): none counted."""
    clock, group = FakeClock(), Group()
    p = pacer(group)
    spend(p, group, clock, 0.03)
    rooms = {"default": 11}
    # 30 ms of the 50 ms quota used: 20 ms left, 4 requests of 5 ms beyond the slack
    assert p.caps(clock.now, rooms, COST, engaged=False, slack=2.0) == {"default": 6}
    assert p.caps(clock.now, rooms, COST, engaged=False, slack=0.0) == {"default": 4}
    assert p.caps(clock.now, rooms, COST, engaged=False) == {"default": 11}


def test_a_long_freeze_engages_and_no_quota_means_nothing_to_pace() -> None:
    clock, group = FakeClock(), Group()
    p = pacer(group)
    spend(p, group, clock, 0.05)
    clock.advance(0.05)  # frozen for the rest of the period
    group.periods += 1
    group.throttled += 1
    group.throttled_s += 0.05
    busy, engage = p.read(clock.now)
    assert engage and not busy and p.freezes == 1
    p.follow(Group(quota=None), 0.5)
    assert not p.active


async def test_the_controller_sends_capped_rooms_between_ticks_and_critical_stays_at_its_ceiling() -> None:
    clock, group = FakeClock(), Group()
    sig = StaticSignal("container", at=clock.now, utilization=0.3, utilization_smoothed=0.3, usage_cores=0.15,
                       limit_cores=0.5, seq=1, bandwidth=group)  # fmt: skip
    cfg = loopback_config(algorithm="fixed", fixed_limit=2)  # ungated: always engaged, but no period gate
    lim = build_limiter(cfg, sig, clock=clock)
    rt = FakeRuntime(recorded(pid=100))
    c = Controller(cfg, lim, rt, priorities=lim.priorities, default_priority=lim.default_priority, map_path=MAP,
                   why_path=WHY, clients=ClientGuard(), signal=sig, clock=clock)  # fmt: skip
    assert c.pacer is None  # an ungated algorithm is a plain concurrency limiter: nothing to pace
    cfg = loopback_config()
    lim = build_limiter(cfg, sig, clock=clock)
    c = Controller(cfg, lim, rt, priorities=lim.priorities, default_priority=lim.default_priority, map_path=MAP,
                   why_path=WHY, clients=ClientGuard(), signal=sig, clock=clock)  # fmt: skip
    assert c.pacer is not None
    await c.tick()
    assert c.pacing  # the group has a quota, and HAProxy is capped
    c.setting = type(c.setting)(maxconn=11, rooms={"critical": 11, "default": 5, "sheddable": 5}, engaged=True)
    c.cost_s = COST
    rt.applied.clear()
    assert await c.pace() is False  # the first read: no usage seen yet
    assert c.caps == {"default": 5, "sheddable": 5}  # critical, the reserve, is never capped
    rt.applied.clear()
    group.usage_s += 0.03
    clock.advance(0.03)
    assert await c.pace() is True
    assert c.caps == {"default": 3, "sheddable": 0}
    # only what changed goes out: two rooms and the reason and stage of the two capped classes
    assert rt.applied == [[f"set map {MAP} default 3", f"set map {MAP} sheddable 0",
                           f"set map {WHY} default.reason cpu_period", f"set map {WHY} default.stage period",
                           f"set map {WHY} sheddable.reason cpu_period", f"set map {WHY} sheddable.stage period"]]  # fmt: skip
    await c.pace()
    assert len(rt.applied) == 1  # unchanged: nothing sent


async def test_while_the_gate_caps_only_a_settled_cool_reading_ends_the_engines_cool_off() -> None:
    # The Limiter's rule: while the period gate sheds, one 100 ms reading can dip under the cool mark
    # (the gate holds the group under its quota); the smoothed reading must be well under it too.
    clock, group = FakeClock(), Group()
    sig = StaticSignal("container", at=clock.now, utilization=0.95, utilization_smoothed=0.95, usage_cores=0.45,
                       limit_cores=0.5, seq=1, bandwidth=group)  # fmt: skip
    cfg = loopback_config(cool_off_s=1.0)
    lim = build_limiter(cfg, sig, clock=clock)
    rt = FakeRuntime(recorded(pid=100))
    c = Controller(cfg, lim, rt, priorities=lim.priorities, default_priority=lim.default_priority, map_path=MAP,
                   why_path=WHY, clients=ClientGuard(), signal=sig, clock=clock)  # fmt: skip
    shed = 6  # shed_default's req_tot in the recorded stats
    for _ in range(3):  # two fast readings over the threshold: hot
        clock.advance(0.1)
        sig.set(at=clock.now, utilization=0.95, utilization_smoothed=0.95)
        shed += 1
        rt.next = recorded(pid=100, override={("shed_default", "BACKEND"): {"req_tot": str(shed)}})
        await c.tick()
    assert c.setting.engaged and c.pacing
    fast, smoothed = 0.5, 0.7  # a dip: fast under 0.6 (0.75 x 0.8), smoothed over it
    c.cost_s = COST
    await c.pace()
    group.usage_s += 0.04  # 40 of the 50 ms quota spent: the gate caps default under its room
    clock.advance(0.04)
    await c.pace()
    assert c.caps["default"] < c.setting.rooms["default"]
    clock.advance(0.06)
    sig.set(at=clock.now, utilization=fast, utilization_smoothed=smoothed)
    await c.tick()
    assert c.setting.engaged  # capped since the last tick: the dip is not settled
    clock.advance(0.1)
    sig.set(at=clock.now, utilization=fast, utilization_smoothed=smoothed)
    await c.tick()
    assert not c.setting.engaged  # nothing capped since: a clearly cool reading ends it, as before


async def test_a_new_cpu_reading_asks_for_a_tick_and_ticks_do_not_overlap() -> None:
    clock, group = FakeClock(), Group()
    sig = StaticSignal("container", at=clock.now, utilization=0.3, utilization_smoothed=0.3, usage_cores=0.15,
                       limit_cores=0.5, seq=1, bandwidth=group)  # fmt: skip
    cfg = loopback_config()
    lim = build_limiter(cfg, sig, clock=clock)
    class Slow(FakeRuntime):
        """A show stat that takes a moment: counts how many are under way at once."""

        active = most = calls = 0

        async def stats(self) -> Stats:
            self.calls += 1
            self.active += 1
            self.most = max(self.most, self.active)
            await asyncio.sleep(0.01)
            self.active -= 1
            return await super().stats()

    rt = Slow(recorded(pid=100))
    c = Controller(cfg, lim, rt, priorities=lim.priorities, default_priority=lim.default_priority, map_path=MAP,
                   why_path=WHY, clients=ClientGuard(), signal=sig, clock=clock)  # fmt: skip
    assert c.new_reading  # never ticked
    await c.tick()
    assert not c.new_reading and c.ticked_at == clock.now
    clock.advance(0.03)
    sig.set(at=clock.now, utilization=0.9, utilization_smoothed=0.5)
    assert c.new_reading
    await asyncio.gather(c.tick(), c.tick())
    assert not c.new_reading and (rt.calls, rt.most) == (3, 1)  # one after the other, each with its own show stat
