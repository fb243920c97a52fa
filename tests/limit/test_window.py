"""RollingWindow: buckets, completed-window statistics, float RT, ring reuse."""

from __future__ import annotations

import pytest

from flowctl.errors import ConfigError
from flowctl.limit.window import RollingWindow


def test_empty_window_has_no_stats() -> None:
    w = RollingWindow(10.0, 100)
    st = w.stats(50.0)
    assert (st.max_pass, st.min_rt_s, st.samples) == (0, None, 0)


def test_current_bucket_is_not_counted_until_it_completes() -> None:
    w = RollingWindow(1.0, 10)  # 100 ms buckets
    w.add(5.01, 0.002)
    w.add(5.02, 0.004)
    assert w.stats(5.05).samples == 0
    st = w.stats(5.10)
    assert st.max_pass == 2 and st.samples == 2
    assert st.min_rt_s == pytest.approx(0.003)


def test_min_rt_is_the_lowest_bucket_mean_in_float_seconds() -> None:
    w = RollingWindow(1.0, 10)
    w.add(0.05, 0.0004)  # bucket 0: mean 0.4 ms (Kratos would round this to 0 ms)
    w.add(0.15, 0.010)  # bucket 1: three requests
    w.add(0.16, 0.020)
    w.add(0.17, 0.030)
    st = w.stats(0.25)
    assert st.min_rt_s == pytest.approx(0.0004)
    assert st.max_pass == 3
    assert st.samples == 4


def test_buckets_older_than_the_window_fall_out() -> None:
    w = RollingWindow(1.0, 10)
    for i in range(5):
        w.add(0.05, 0.001 * (i + 1))
    w.add(0.55, 0.5)
    assert w.stats(1.05).max_pass == 5  # bucket 0 is 10 buckets before bucket 10: still in
    st = w.stats(1.15)  # bucket 0 is out now
    assert st.max_pass == 1 and st.min_rt_s == pytest.approx(0.5)
    assert w.stats(1.65).samples == 0  # everything out


def test_ring_slots_are_reused_without_mixing_buckets() -> None:
    w = RollingWindow(1.0, 10)  # 11 slots
    w.add(0.05, 1.0)  # bucket 0 -> slot 0
    w.add(1.15, 2.0)  # bucket 11 -> slot 0 again
    st = w.stats(1.25)
    assert st.samples == 1 and st.min_rt_s == pytest.approx(2.0)


def test_stats_are_cached_per_bucket_and_see_flushed_pending_data() -> None:
    w = RollingWindow(1.0, 10)
    w.add(0.05, 0.01)
    first = w.stats(0.15)
    assert w.stats(0.19) is first
    w.add(0.19, 0.02)  # into the current bucket: not part of the completed window
    assert w.stats(0.25).samples == 2


def test_reset_forgets_everything() -> None:
    w = RollingWindow(1.0, 10)
    w.add(0.05, 0.01)
    w.reset()
    assert w.stats(0.15).samples == 0
    w.add(0.25, 0.03)
    assert w.stats(0.35).min_rt_s == pytest.approx(0.03)


@pytest.mark.parametrize("kwargs", [{"window_s": 0}, {"window_s": -1.0}, {"buckets": 0}])
def test_bad_config_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RollingWindow(**kwargs)  # type: ignore[arg-type]


def test_memory_is_fixed_whatever_the_traffic() -> None:
    w = RollingWindow(1.0, 10)
    t = 0.0
    for _ in range(20_000):
        t += 0.001
        w.add(t, 0.001)
    assert len(w._epoch) == len(w._count) == len(w._rt_sum) == 11


def test_add_sample_is_add_in_on_sample_shape_and_skips_drops() -> None:
    a, b = RollingWindow(1.0, 10), RollingWindow(1.0, 10)
    for i in range(30):
        now, rt_s = 0.05 + 0.013 * i, 0.001 * (i % 4 + 1)
        a.add(now, rt_s)
        b.add_sample(now, rt_s, i, False)
        b.add_sample(now, 9.0, i, True)  # dropped: not counted
    assert a.stats(0.6) == b.stats(0.6)
    assert b.stats(0.6).samples == 30  # every add (t <= 0.427) is in a completed bucket
