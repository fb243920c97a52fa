"""A live check of the period gate's accounting against a real CFS group (v1 and v2 tests share it)."""

from __future__ import annotations

import statistics
import time

from flowctl.cpu.bandwidth import BandwidthReader
from flowctl.limiter.period import PeriodGate
from flowctl.limiter import Policy


def period_use(reader: BandwidthReader, seconds: float, poll_s: float = 0.002) -> tuple[list[float], int, int]:
    """Feed a PeriodGate reads every ``poll_s`` for ``seconds``. Returns the CPU seconds each whole
    period was seen to use (the gate's estimate, at its last read before the next boundary), and the
    periods and throttled periods the kernel counted meanwhile."""
    quota = reader.quota()
    assert quota is not None
    gate = PeriodGate(Policy(period_margin=0.0))
    gate.set_quota(*quota)
    first = reader.read()
    assert first is not None
    gate.update(time.monotonic(), *first[:3])
    last_periods, seen, in_period = first[1], [], 0.0
    counted = 0  # boundaries seen: the first period is partial
    deadline = time.monotonic() + seconds
    counters = first
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        read = reader.read()
        assert read is not None
        counters = read
        gate.update(time.monotonic(), *counters[:3])
        if counters[1] != last_periods:
            if counted:
                seen.append(in_period)
            counted += 1
            last_periods = counters[1]
        used = gate.used_s()
        assert used is not None
        in_period = used
    return seen, counters[1] - first[1], counters[2] - first[2]


def check_burner_periods(reader: BandwidthReader, quota_s: float) -> str:
    """A burner wanting a whole CPU in a group capped at ``quota_s`` per 100 ms: each period's use,
    as the gate estimates it, reaches about the quota and never much more."""
    assert reader.quota() == (quota_s, 0.1)
    seen, periods, throttled = period_use(reader, 1.5)
    assert periods >= 8 and throttled >= 1, (periods, throttled)
    assert len(seen) >= 5, seen
    med = statistics.median(seen)
    # Upper: the interpolated boundary does not carry one period's use into the next (a base that
    # never moved would read the whole run). Lower: it does not restart the count mid-period.
    assert 0.4 * quota_s <= med <= 1.3 * quota_s, seen
    return f"period use median {med * 1000:.1f} ms of {quota_s * 1000:.0f} ms over {len(seen)} periods"
