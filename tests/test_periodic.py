"""Periodic: fixed-rate schedule (no drift, no burst after a stall), lifetime, failing callbacks.

A fake clock and a fake sleep that advances it: the schedule is checked exactly, without timing.
"""

from __future__ import annotations

import asyncio

import pytest

from flowctl.periodic import Periodic, next_due
from flowctl.errors import ConfigError


def test_next_due_keeps_the_fixed_schedule_and_skips_missed_ticks() -> None:
    assert next_due(1.0, 1.03, 0.1) == pytest.approx(1.1)  # ran 30 ms late: no drift
    assert next_due(1.0, 1.35, 0.1) == pytest.approx(1.45)  # stalled past 3 ticks: skip them, no burst


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        self.now += delay_s
        await asyncio.sleep(0)


async def _run_calls(p: Periodic, n: int) -> None:
    async with p:
        while p.calls < n:
            await asyncio.sleep(0)


async def test_slow_callback_does_not_drift_and_a_stall_is_not_replayed() -> None:
    t = FakeTime()
    costs = iter([0.03, 0.03, 0.35, 0.0, 0.0])  # seconds each call takes; the third stalls past 3 ticks
    at: list[float] = []

    def work() -> None:
        at.append(t.now)
        t.now += next(costs)

    await _run_calls(Periodic(work, 0.1, name="t", clock=t.clock, sleep=t.sleep), 5)
    assert at[:5] == pytest.approx([100.1, 100.2, 100.3, 100.75, 100.85])
    assert t.sleeps[:5] == pytest.approx([0.1, 0.07, 0.07, 0.1, 0.1])  # no zero-delay catch-up calls


async def test_async_callback_is_awaited_and_failures_do_not_stop_it(caplog: pytest.LogCaptureFixture) -> None:
    t = FakeTime()
    seen: list[int] = []

    async def work() -> None:
        seen.append(len(seen))
        if len(seen) == 2:
            raise RuntimeError("boom")

    await _run_calls(Periodic(work, 1.0, name="flaky", clock=t.clock, sleep=t.sleep), 4)
    assert seen[:4] == [0, 1, 2, 3]
    assert any("flaky: periodic call failed" in r.getMessage() for r in caplog.records)


async def test_start_is_idempotent_stop_waits_and_without_start_is_fine() -> None:
    calls: list[float] = []
    p = Periodic(lambda: calls.append(0.0), 0.001, name="t")
    await p.stop()
    await p.start()
    await p.start()
    assert p.running
    for _ in range(1000):
        if calls:
            break
        await asyncio.sleep(0.001)
    await p.stop()
    assert not p.running and calls
    n = len(calls)
    await asyncio.sleep(0.01)
    assert len(calls) == n  # nothing runs after stop()


async def test_stop_does_not_swallow_its_callers_cancellation() -> None:
    gate = asyncio.Event()

    async def work() -> None:
        await gate.wait()

    t = FakeTime()
    p = Periodic(work, 1.0, name="t", clock=t.clock, sleep=t.sleep)
    await p.start()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    stopper = asyncio.create_task(p.stop())
    await asyncio.sleep(0)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper


@pytest.mark.parametrize("interval_s", [0, -1.0, float("nan"), float("inf")])
def test_bad_interval_is_a_config_error(interval_s: float) -> None:
    with pytest.raises(ConfigError, match="interval_s"):
        Periodic(lambda: None, interval_s, name="t")


async def test_stop_returns_when_a_callback_swallows_the_cancellation() -> None:
    """asyncio.wait_for on 3.11 can lose a cancellation; the periodic task must still stop."""
    swallowed = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            swallowed.append(1)  # like a wait_for that returned the result instead of raising

    p = Periodic(stubborn, 0.001, name="stubborn")
    await p.start()
    await asyncio.sleep(0.05)  # inside the callback's sleep by now
    await asyncio.wait_for(p.stop(), 10)
    assert swallowed and not p.running
