"""``OfferedLoad``: windows of arrivals against the capacity, fed with a fake clock."""

from __future__ import annotations

import random

from flowctl.limiter.offered import OfferedLoad


def arrivals(load: OfferedLoad, times: list[float]) -> int:
    """Admission's use: close the window when due (its end, or past its overload count), then count;
    returns how many closes said over."""
    over = 0
    for t in times:
        if (t >= load.until or load.count > load.over_count) and load.close(t):
            over += 1
        load.count += 1
    return over


def poisson(rate: float, seconds: float, rng: random.Random, start: float = 0.0) -> list[float]:
    t, out = start, list[float]()
    while True:
        t += rng.expovariate(rate)
        if t >= start + seconds:
            return out
        out.append(t)


def test_windows_hold_the_requests_asked_at_capacity() -> None:
    load = OfferedLoad(3.0, 10.0)
    load.capacity_per_s = 500.0
    load.close(1.0)
    assert load.until == 1.0 + 10.0 / 500.0


def test_poisson_arrivals_under_capacity_seldom_say_over_and_three_times_capacity_says_it_at_once() -> None:
    rng = random.Random(7)
    load = OfferedLoad(3.0, 10.0)
    load.capacity_per_s = 200.0
    closes_at_09 = arrivals(load, poisson(0.9 * 200.0, 60.0, rng))
    assert closes_at_09 <= 3  # 1200 windows of 10 requests at 0.9x: 3 sigmas is rare
    load = OfferedLoad(3.0, 10.0)
    load.capacity_per_s = 200.0
    arrivals(load, poisson(0.9 * 200.0, 1.0, rng))
    onset = poisson(3.0 * 200.0, 0.2, rng, start=1.0)
    first = next(i for i, t in enumerate(onset) if t >= load.until)
    assert arrivals(load, onset[: first + 40]) >= 1  # within two windows (about 100 ms) of the onset


def test_unknown_capacity_or_off_never_says_over() -> None:
    for sigmas, cap in ((3.0, None), (None, 100.0)):
        load = OfferedLoad(sigmas, 10.0)
        load.capacity_per_s = cap
        assert arrivals(load, [i * 0.0001 for i in range(5000)]) == 0


def test_an_idle_gap_lengthens_the_window_it_falls_in() -> None:
    load = OfferedLoad(3.0, 10.0)
    load.capacity_per_s = 100.0
    arrivals(load, [0.0])
    # 15 requests at once after a 2 s gap: over 2 s at 100/s they are far under capacity
    assert arrivals(load, [2.0 + i * 1e-4 for i in range(15)]) == 0


def test_a_window_past_its_overload_count_closes_over_at_the_next_arrival_not_at_its_end() -> None:
    """``over_count`` = ``window + sigmas x sqrt(window)`` (19.5 for 10 requests, 3 sigmas): more arrivals
    than that make the window over whatever comes later, so the verdict comes then."""
    load = OfferedLoad(3.0, 10.0)
    load.capacity_per_s = 100.0  # a window of 100 ms
    load.close(0.0)
    assert load.over_count == 10.0 + 3.0 * 10.0**0.5
    times = [0.001 * (i + 1) for i in range(21)]  # 21 arrivals in 21 ms, 4x the capacity
    assert arrivals(load, times[:20]) == 0  # 20 counted: past 19.5, the window still runs
    assert load.count == 20 and load.until == 0.1
    assert arrivals(load, times[20:]) == 1  # the 21st closes it, 80 ms before its end
    assert load.start == times[20] and not load.within
    assert load.until == times[20] + 0.1 and load.count == 1


def test_the_early_close_needs_a_known_capacity_and_sigmas() -> None:
    for sigmas, cap in ((3.0, None), (None, 100.0)):
        load = OfferedLoad(sigmas, 10.0)
        load.capacity_per_s = cap
        load.close(0.0)
        assert load.over_count == float("inf")


def test_within_says_the_last_window_fit_the_capacity_give_or_take_chance() -> None:
    """``within``: the last window's arrivals were at most ``expect + sqrt(expect)`` (most windows at 0.9x,
    few at 2x); False while the capacity is unknown."""
    rng = random.Random(11)
    for rate, lo, hi in ((0.9, 0.8, 1.0), (2.0, 0.0, 0.05)):
        load = OfferedLoad(3.0, 10.0)
        load.capacity_per_s = 200.0
        closes = within = 0
        for t in poisson(rate * 200.0, 30.0, rng):
            if t >= load.until:
                load.close(t)
                closes += 1
                within += load.within
            load.count += 1
        assert lo <= within / closes <= hi, (rate, within / closes)
    load = OfferedLoad(3.0, 10.0)
    arrivals(load, [0.0, 0.5, 1.0])
    assert not load.within
