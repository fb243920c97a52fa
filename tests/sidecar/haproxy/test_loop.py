"""The control loop's steps over recorded ``show stat`` output, with a real Limiter and a fake admin socket."""

from __future__ import annotations

from dataclasses import replace

from flowctl.limiter import Limiter
from flowctl.signal import StaticSignal
from sidecar.app import build_limiter
from sidecar.clients import ClientGuard
from sidecar.config import SidecarConfig
from sidecar.haproxy.loop import Controller
from tests.sidecar.haproxy.helpers import FakeRuntime, loopback_config, recorded
from tests.test_limiter import FakeClock

MAP = "/run/x/admission.map"
WHY = "/run/x/why.map"


def controller(clock: FakeClock, cfg: SidecarConfig, stats_file: str = "show_stat_after.csv",
               reading: float = 0.3) -> tuple[Controller, FakeRuntime, StaticSignal, Limiter]:  # fmt: skip
    sig = StaticSignal("container", at=clock.now, utilization=reading, utilization_smoothed=reading, usage_cores=0.15,
                       limit_cores=0.5, seq=1)  # fmt: skip
    lim = build_limiter(cfg, sig, clock=clock)
    rt = FakeRuntime(recorded(stats_file, pid=100))
    c = Controller(cfg, lim, rt, priorities=lim.priorities, default_priority=lim.default_priority, map_path=MAP,
                   why_path=WHY, clients=ClientGuard(), clock=clock)  # fmt: skip
    return c, rt, sig, lim


def expected(maxconn: int, critical: int, default: int, sheddable: int, reason: str = "limit",
             rt_sample: int | None = None) -> list[str]:  # fmt: skip
    """The commands for a setting whose rooms all come from the class limits (engaged, no ceiling known);
    with ``rt_sample``, the response-time sampling's per mille too (sent when it changed, or to a new child)."""
    out = [f"set maxconn server app/upstream {maxconn}", f"set map {MAP} critical {critical}",
           f"set map {MAP} default {default}", f"set map {MAP} sheddable {sheddable}"]  # fmt: skip
    if rt_sample is not None:
        out.append(f"set var proc.flowctl_rts int({rt_sample})")
    for p in ("critical", "default", "sheddable"):
        out += [f"set map {WHY} {p}.reason {reason}", f"set map {WHY} {p}.stage limit"]
    return out


async def test_a_fixed_limit_is_sent_once_then_only_on_change() -> None:
    clock = FakeClock()
    c, rt, _, _ = controller(clock, loopback_config(algorithm="fixed", fixed_limit=2))
    await c.tick()
    # ungated (always engaged), no ceiling known yet: the class limits, critical at 3x, sheddable at half;
    # maxconn is the largest room (critical's)
    assert rt.applied == [expected(6, 6, 2, 1)]
    clock.advance(0.1)
    await c.tick()
    assert len(rt.applied) == 1  # unchanged: nothing sent
    assert c.figures["queue_timeouts_total"] == 2 and c.sheds_total == {"critical": 1, "default": 6, "sheddable": 5}
    assert c.figures["requests_total"] == 18 and c.clients is not None and c.clients.open == 0


async def test_a_new_pid_gets_everything_again_and_counters_add_up_across_children() -> None:
    clock = FakeClock()
    c, rt, _, _ = controller(clock, loopback_config(algorithm="fixed", fixed_limit=2))
    await c.tick()
    rt.next = recorded("show_stat_after.csv", pid=101, override={("shed_default", "BACKEND"): {"req_tot": "1"},
                                                                  ("flowctl", "FRONTEND"): {"req_tot": "3"}})  # fmt: skip
    clock.advance(0.1)
    await c.tick()
    assert rt.applied == [expected(6, 6, 2, 1), expected(6, 6, 2, 1, rt_sample=1000)] and c.pid == 101
    assert c.sheds_total["default"] == 7  # 6 from the first child, 1 from the new one
    assert c.figures["requests_total"] == 21


async def test_bbr_not_engaged_leaves_haproxy_unbounded_until_a_ceiling_is_known() -> None:
    clock = FakeClock()
    c, rt, _, _ = controller(clock, loopback_config())
    await c.tick()
    assert c.setting.engaged is False
    assert rt.applied == []  # the child's config already says max_connections / max_clients


async def test_hot_cpu_engages_and_haproxys_sheds_hold_a_cool_off() -> None:
    clock = FakeClock()
    cfg = loopback_config(cool_off_s=1.0)
    c, rt, sig, _ = controller(clock, cfg, reading=0.95)
    for _ in range(3):  # hot takes two fast readings over the threshold
        clock.advance(0.1)
        sig.set(at=clock.now, utilization=0.95, utilization_smoothed=0.95)
        await c.tick()
    assert c.setting.engaged
    assert c.setting.why["default"] == ("cpu", "limit")  # what a shed's 503 body says now (why.map)
    assert [f"set map {WHY} default.reason cpu", f"set map {WHY} default.stage limit"] == \
        [x for x in rt.applied[-1] if x.startswith(f"set map {WHY} default.")]  # fmt: skip
    warm = 0.7  # under the threshold (0.8), not clearly cool (0.75 x 0.8 = 0.6)
    clock.advance(0.1)
    sig.set(at=clock.now, utilization=warm, utilization_smoothed=warm)
    # HAProxy shed 3 more default requests over the limit since the last tick
    rt.next = recorded(pid=100, override={("shed_default", "BACKEND"): {"req_tot": "9"}})
    await c.tick()
    assert c.setting.engaged  # its own sheds keep the engine engaged, as a limiter's restart its cool-off
    assert c.setting.why["default"] == ("cool_off", "limit")
    clock.advance(1.1)
    sig.set(at=clock.now, utilization=warm, utilization_smoothed=warm)
    await c.tick()
    assert not c.setting.engaged  # cool_off_s after the last shed
    rt.next = recorded(pid=100, override={("shed_default", "BACKEND"): {"req_tot": "12"}})
    for u in (0.95, 0.95, 0.95):
        clock.advance(0.1)
        sig.set(at=clock.now, utilization=u, utilization_smoothed=0.9)
        await c.tick()
    assert c.setting.engaged
    rt.next = recorded(pid=100, override={("shed_default", "BACKEND"): {"req_tot": "15"}})
    clock.advance(0.1)
    sig.set(at=clock.now, utilization=0.2, utilization_smoothed=0.5)
    await c.tick()
    assert not c.setting.engaged  # a clearly cool reading ends the cool-off early, as the Limiter's


async def test_dry_run_never_caps_haproxy() -> None:
    clock = FakeClock()
    c, rt, _, _ = controller(clock, loopback_config(algorithm="fixed", fixed_limit=2, dry_run=True))
    await c.tick()
    assert c.setting.maxconn == 6 and not c.setting.capped  # computed, shown in /debug/limiter
    assert rt.applied == []  # what the child runs (max_connections, max_clients) already is uncapped


async def test_an_admin_socket_failure_is_counted_not_raised() -> None:
    clock = FakeClock()
    c, rt, _, _ = controller(clock, loopback_config(algorithm="fixed", fixed_limit=2))
    rt.fail = "runtime API at /run/x/admin.sock: ConnectionRefusedError"
    await c.tick()
    await c.tick()
    assert c.control_errors_total == 2 and c.last_error is not None and rt.applied == []
    rt.fail = None
    await c.tick()
    assert c.last_error is None and rt.applied == [expected(6, 6, 2, 1)]


async def test_loaded_stats_feed_the_limiter_what_haproxy_serves() -> None:
    clock = FakeClock()
    c, _, _, lim = controller(clock, loopback_config(algorithm="fixed", fixed_limit=2), "show_stat_loaded.csv")
    await c.tick()
    assert c.figures["current_sessions"] == 2 and c.figures["queue"] == 4
    assert lim.inflight == 2  # the two requests in service, held as the Limiter's in-flight
    rt_next = recorded("show_stat_after.csv", pid=100)
    c.runtime = FakeRuntime(rt_next)
    clock.advance(0.1)
    await c.tick()
    assert c.mirror.replayed_total == 4 and lim.inflight == 0  # the server's 4 responses since, none in service


async def test_haproxys_sheds_with_one_hot_reading_engage_as_queue_evidence() -> None:
    # the Limiter's hot gate takes a ceiling or period shed plus one reading over the threshold as hot; the
    # Limiter behind this engine sees no shed of HAProxy's, so the controller applies that rule itself
    clock = FakeClock()
    c, _, sig, _ = controller(clock, loopback_config(), reading=0.3)
    await c.tick()  # the recorded counters hold sheds: over a cool reading, nothing engages
    assert not c.setting.engaged
    clock.advance(0.1)
    sig.set(at=clock.now, utilization=0.9, utilization_smoothed=0.5)
    await c.tick()  # one hot reading, no new shed: not hot yet (two in a row make it hot)
    assert not c.setting.engaged
    c.runtime.next = recorded(pid=100, override={("shed_default", "BACKEND"): {"req_tot": "9"}})  # type: ignore[attr-defined]
    clock.advance(0.1)
    sig.set(at=clock.now, utilization=0.9, utilization_smoothed=0.5, seq=10)  # not in a row with the last
    await c.tick()
    assert c.setting.engaged and c.setting.why["default"] == ("cpu", "limit")


def test_the_rt_fed_is_the_mean_of_the_responses_haproxy_sampled_since_the_last_tick() -> None:
    clock = FakeClock()
    c, _, _, _ = controller(clock, loopback_config())
    base = recorded(pid=100)
    fallback = c.read(base)[2]  # no "flowctl rt" answer: HAProxy's own average (1024 requests, whole ms)
    assert c.read(replace(base, rt=(1_000_000, 100)))[2] == fallback  # the first answer is a baseline
    assert c.read(replace(base, rt=(1_080_000, 110)))[2] == 0.008  # 80 ms over 10 responses
    assert c.read(replace(base, rt=(1_080_000, 110)))[2] == fallback  # none sampled this tick
    assert c.read(replace(base, rt=(4_000, 2)))[2] == fallback  # counters went back: a new child, a new baseline
    assert abs(c.read(replace(base, rt=(6_500, 3)))[2] - 0.0025) < 1e-12  # to the microsecond, under 1 ms too


async def test_the_cpu_cost_pairs_each_reading_with_the_completions_of_its_own_interval() -> None:
    # every 100 ms reading brings n completions of 5 ms each, n swinging 4 <-> 16 (bursts): a cost learnt
    # from the completions fed a tick late pairs 80 ms of CPU with 4 of them and 20 ms with 16
    clock = FakeClock()
    c, rt, sig, lim = controller(clock, loopback_config(period_gate=False))
    total = 0
    for i in range(30):
        n = 16 if i % 2 else 4
        total += n
        clock.advance(0.1)
        sig.set(at=clock.now, usage_cores=n * 0.005 / 0.1)
        rt.next = recorded(pid=100, override={("app", "upstream"): {"hrsp_2xx": str(total), "hrsp_4xx": "0",
                                                                      "hrsp_5xx": "0", "hrsp_other": "0"}})  # fmt: skip
        await c.tick()
    cost = lim.snapshot().cpu_per_request_s
    assert cost is not None and abs(cost - 0.005) < 0.0003
