"""LoopLagMonitor: the lag arithmetic on a fake clock, and a real blocked loop."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flowctl.errors import ConfigError
from flowctl.looplag import LoopLagMonitor, socket_wait_s


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_not_running_never_fires_nor_queues() -> None:
    mon = LoopLagMonitor(threshold_s=0.05)
    assert mon.check(1e9) is None
    assert not mon.pending
    assert mon.live_lag_s(1e9) == 0.0
    assert not mon.running


def test_live_lag_fires_only_at_or_above_threshold() -> None:
    mon = LoopLagMonitor(threshold_s=0.05)
    mon.arm(10.0)  # a probe queued at 10.0, not run yet
    assert mon.check(10.005) is None
    assert mon.check(10.04) is None  # 40 ms
    assert mon.check(10.05) == pytest.approx(0.05)
    assert mon.check(10.31) == pytest.approx(0.31)
    assert mon.live_lag_s(10.31) == pytest.approx(0.31)


def test_probe_records_lag_and_clears() -> None:
    clock = FakeClock(10.0)
    mon = LoopLagMonitor(threshold_s=0.05, clock=clock, report_for_s=1.0)
    mon.arm(10.0)
    assert mon.probe_ran(10.24) == pytest.approx(0.24)
    assert mon.last_lag_s == pytest.approx(0.24) and mon.max_lag_s == pytest.approx(0.24) and mon.probes == 1
    assert not mon.pending
    # for 0.24 s after it ran, the late probe's backlog fires (requests queued behind it are still served)
    assert mon.check(10.30) == pytest.approx(0.24)
    # after that, a late *past* probe does not make the next request fire
    assert mon.check(10.49) is None
    clock.now = 10.5
    assert mon.lag_s() == pytest.approx(0.24)  # the last probe's, within report_for_s
    clock.now = 11.5
    assert mon.lag_s() == 0.0  # stale: nothing queued, nothing to report
    mon.arm(11.4)
    assert mon.lag_s() == pytest.approx(0.1)  # the pending probe's live lag
    assert mon.probe_ran(11.41) == pytest.approx(0.01)
    assert mon.max_lag_s == pytest.approx(0.24)


def test_trigger_attributes() -> None:
    mon = LoopLagMonitor(threshold_s=0.2, bypass_inflight=False, name="lag")
    assert (mon.name, mon.threshold, mon.bypass_inflight) == ("lag", 0.2, False)
    assert "threshold_s=0.2" in repr(mon)


@pytest.mark.parametrize("kw", [{"threshold_s": 0}, {"report_for_s": -1.0}, {"min_gap_s": -1.0}, {"threshold_s": float("nan")}])
def test_bad_config(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        LoopLagMonitor(**kw)


async def test_blocked_loop_is_seen_live_and_measured() -> None:
    """A check queues a probe; blocking the loop 200 ms after it makes the live lag >= 200 ms.

    Lower bounds only, and they cannot flake: the probe was queued before the
    block and cannot run during it, however slow the machine is.
    """
    mon = LoopLagMonitor(threshold_s=0.05)
    async with mon:
        assert mon.running
        assert mon.check(time.monotonic()) is None and mon.pending
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            pass  # burn CPU without awaiting, like a blocking handler
        lag = mon.check(time.monotonic())
        assert lag is not None and lag >= 0.2
        await asyncio.sleep(0)  # the probe runs in the next iteration
        await asyncio.sleep(0)
        assert not mon.pending and mon.probes == 1
        assert mon.max_lag_s >= 0.2
    assert not mon.running
    assert mon.check(time.monotonic() + 10) is None


async def test_an_idle_loop_queues_nothing() -> None:
    """No check, no probe: an idle app pays nothing (no timer wakes the process)."""
    mon = LoopLagMonitor(threshold_s=0.05)
    async with mon:
        await asyncio.sleep(0.05)
        assert mon.probes == 0 and not mon.pending
        mon.check(time.monotonic())
        await asyncio.sleep(0.01)
        assert mon.probes == 1 and not mon.pending


async def test_start_is_idempotent_and_stop_without_start_is_fine() -> None:
    mon = LoopLagMonitor()
    await mon.stop()
    await mon.start()
    await mon.start()
    mon.check(time.monotonic())
    await mon.stop()
    assert not mon.running and not mon.pending
    await asyncio.sleep(0)  # the queued probe runs after stop(): it records nothing
    assert mon.probes == 0


async def test_probes_are_at_least_min_gap_apart() -> None:
    mon = LoopLagMonitor(threshold_s=0.05, min_gap_s=0.05)
    async with mon:
        mon.check(time.monotonic())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert mon.probes == 1
        mon.check(time.monotonic())  # within 50 ms of the last probe: none queued
        assert not mon.pending
        await asyncio.sleep(0.06)
        mon.check(time.monotonic())
        assert mon.pending


class _ManualLoop:
    """Stands in for the running loop: ``call_soon`` only records; the test runs the probe when it likes."""

    def __init__(self) -> None:
        self.ready: list[Any] = []

    def call_soon(self, cb: Any) -> None:
        self.ready.append(cb)


_TICK = 1 / 1024  # a binary-exact time step: the edges below are hit exactly, with no float rounding


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 4, 5, 6, 20, 45, 47, 48, 49]), st.sampled_from(["check", "check", "check", "run", "stop", "start"])), max_size=60))
@example([(0, "check"), (48, "check")])  # the live lag reaches the threshold exactly
@example([(0, "check"), (1, "run"), (1, "check"), (4, "check")])  # the next probe is due exactly min_gap after the last
@example([(0, "check"), (49, "run"), (0, "check"), (47, "check"), (1, "check"), (1, "check")])  # a backlog ends
def test_quiet_until_skips_only_calls_that_would_do_nothing(steps: list[tuple[int, str]]) -> None:
    """The limiter skips ``check(now)`` while ``now < quiet_until``: a monitor polled only then
    answers every request exactly like one polled on every request, and queues the same probes."""
    clock = FakeClock(0.0)
    every, gated = (LoopLagMonitor(threshold_s=48 * _TICK, min_gap_s=5 * _TICK, clock=clock) for _ in range(2))
    loops = {id(every): _ManualLoop(), id(gated): _ManualLoop()}

    def start(mon: LoopLagMonitor) -> None:
        if not mon.running:
            asyncio.run(mon.start())  # the real start(), then its loop swapped for one the test drives
            mon._loop = loops[id(mon)]  # type: ignore[assignment]

    for mon in (every, gated):
        start(mon)
    for ticks, op in steps:  # steps around the 5-tick gap and the 48-tick threshold: lands on both edges
        clock.now += ticks * _TICK
        if op == "check":
            want = every.check(clock.now)
            got = gated.check(clock.now) if clock.now >= gated.quiet_until else None
            assert got == want
        elif op == "run":  # the loop gets to the pending probes
            for mon in (every, gated):
                ready, loops[id(mon)].ready = loops[id(mon)].ready, []
                for cb in ready:
                    cb()
        elif op == "stop":
            for mon in (every, gated):
                asyncio.run(mon.stop())
                loops[id(mon)].ready.clear()
        else:
            for mon in (every, gated):
                start(mon)
        assert (gated.pending, gated.probes, gated.last_lag_s) == (every.pending, every.probes, every.last_lag_s)


async def test_a_freeze_counts_as_lag_until_the_batch_read_after_it_is_done() -> None:
    """The limiter tells the monitor its group was frozen since ``t``: the live lag counts from ``t``
    (whether or not a probe was pending) until a probe queued now runs, after the current batch."""
    clock = FakeClock(10.0)
    mon = LoopLagMonitor(threshold_s=0.025, clock=clock)
    mon.frozen(9.9)  # not started: nothing to do
    assert not mon.pending
    async with mon:
        mon.frozen(9.95)  # nothing pending: a probe is queued, timed from the freeze's start
        assert mon.pending and mon.quiet_until == -math.inf
        assert mon.check(10.0) == pytest.approx(0.05)
        mon.frozen(9.97)  # a later start does not shorten it
        assert mon.check(10.0) == pytest.approx(0.05)
        mon.frozen(9.9)
        assert mon.check(10.0) == pytest.approx(0.1)
        clock.now = 10.01
        await asyncio.sleep(0)  # the probe runs after the batch
        await asyncio.sleep(0)
        assert not mon.pending and mon.last_lag_s == pytest.approx(0.11)


def test_a_request_s_own_wait_counts_until_the_next_request() -> None:
    clock = FakeClock()
    mon = LoopLagMonitor(threshold_s=0.01, clock=clock)  # not started: no probe, no live lag
    assert mon.check(clock.now) is None
    mon.request_wait(0.004)
    assert mon.check(clock.now) is None  # under the threshold
    mon.request_wait(0.012)
    assert mon.quiet_until == -math.inf  # the limiter asks now
    assert mon.check(clock.now) == pytest.approx(0.012)
    mon.request_wait(0.0)  # the next request did not wait
    assert mon.check(clock.now) is None


@pytest.mark.skipif(not hasattr(__import__("socket"), "TCP_INFO"), reason="TCP_INFO is Linux-only")
def test_socket_wait_is_the_time_since_the_bytes_arrived() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.getsockname()) as client:
            conn, _ = srv.accept()
            with conn:
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
                time.sleep(0.1)
                waited = socket_wait_s(conn)
                assert waited is not None and 0.09 <= waited <= 1.0  # in kernel ticks (1-10 ms)
                conn.recv(100)
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
                time.sleep(0.001)
                waited = socket_wait_s(conn)
                assert waited is not None and waited < 0.05
    a, b = socket.socketpair()  # not TCP
    with a, b:
        assert socket_wait_s(a) is None
    assert socket_wait_s(object()) is None
