"""LoopLagMonitor: the lag arithmetic on a fake clock, and a real blocked loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from flowctl.errors import ConfigError
from flowctl.looplag import LoopLagMonitor


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_not_running_never_fires() -> None:
    mon = LoopLagMonitor(threshold_s=0.05, interval_s=0.01)
    assert mon.check(1e9) is None
    assert mon.live_lag_s(1e9) == 0.0
    assert not mon.running


def test_live_lag_fires_only_at_or_above_threshold() -> None:
    mon = LoopLagMonitor(threshold_s=0.05, interval_s=0.01)
    mon.arm(10.0)  # next tick due at 10.01
    assert mon.check(10.005) is None
    assert mon.check(10.05) is None  # 40 ms overdue
    assert mon.check(10.06) == pytest.approx(0.05)
    assert mon.check(10.31) == pytest.approx(0.30)
    assert mon.live_lag_s(10.31) == pytest.approx(0.30)


def test_tick_records_lag_and_rearms() -> None:
    clock = FakeClock(10.0)
    mon = LoopLagMonitor(threshold_s=0.05, interval_s=0.01, clock=clock)
    mon.arm(10.0)
    assert mon.tick(10.25) == pytest.approx(0.24)
    assert mon.last_lag_s == pytest.approx(0.24) and mon.max_lag_s == pytest.approx(0.24) and mon.ticks == 1
    # re-armed from the tick: a late *past* tick does not make the next request fire
    assert mon.check(10.251) is None
    assert mon.tick(10.26) == 0.0
    assert mon.last_lag_s == 0.0 and mon.max_lag_s == pytest.approx(0.24)
    clock.now = 10.3
    assert mon.lag_s() == pytest.approx(0.03)  # live 30 ms beats last 0
    assert mon.lag_s(10.265) == 0.0


def test_trigger_attributes() -> None:
    mon = LoopLagMonitor(threshold_s=0.2, bypass_inflight=False, name="lag")
    assert (mon.name, mon.threshold, mon.bypass_inflight, mon.interval_s) == ("lag", 0.2, False, 0.01)
    assert "threshold_s=0.2" in repr(mon)


@pytest.mark.parametrize("kw", [{"threshold_s": 0}, {"interval_s": -1.0}, {"threshold_s": float("nan")}])
def test_bad_config(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        LoopLagMonitor(**kw)


async def test_blocked_loop_is_seen_live_and_measured() -> None:
    """Blocking the loop for 200 ms makes the pending timer at least 190 ms overdue.

    Lower bounds only, and they cannot flake: the pending tick was due at most
    ``interval_s`` (10 ms) after a moment before the block, so the live lag
    after it, and that tick's measured lag, are >= 200 - 10 ms however slow
    the machine is. No upper bound is asserted.
    """
    mon = LoopLagMonitor(threshold_s=0.05, interval_s=0.01)
    async with mon:
        while mon.ticks < 1:  # it ticked (so a tick is pending), however long that took
            await asyncio.sleep(0.005)
        assert mon.running
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            pass  # burn CPU without awaiting, like a blocking handler
        lag = mon.check(time.monotonic())
        assert lag is not None and lag >= 0.15
        await asyncio.sleep(0)  # the overdue timer runs in the next iteration
        await asyncio.sleep(0.02)  # a later timer: the monitor's wake-up ran before ours
        assert mon.max_lag_s >= 0.15
    assert not mon.running
    assert mon.check(time.monotonic() + 10) is None


async def test_start_is_idempotent_and_stop_without_start_is_fine() -> None:
    mon = LoopLagMonitor()
    await mon.stop()
    await mon.start()
    await mon.start()
    await mon.stop()
    assert not mon.running
