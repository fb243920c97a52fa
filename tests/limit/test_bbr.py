"""Bbr: Little's law, rounding, floor of 1, per-bucket caching, cold start."""

from __future__ import annotations

import math

import pytest

from flowctl.errors import ConfigError
from flowctl.limit.bbr import Bbr


def feed(bbr: Bbr, start: float, n: int, rt_s: float, span_s: float = 0.1) -> None:
    """n completions of rt_s spread inside [start, start + span_s), away from bucket edges."""
    for i in range(n):
        bbr.on_sample(start + span_s * (0.05 + 0.9 * i / n), rt_s, 1, False)


def test_cold_start_value_until_a_bucket_completes() -> None:
    bbr = Bbr(headroom=0, cold_start_inflight=16)
    assert bbr.max_inflight(100.0) == 16
    assert not bbr.stats(100.0).warm
    feed(bbr, 100.0, 10, 0.05)
    assert bbr.max_inflight(100.05) == 16  # same bucket: cached cold value
    assert bbr.stats(100.1).warm


def test_littles_law_max_pass_times_min_rt() -> None:
    bbr = Bbr(headroom=0)  # 100 ms buckets
    feed(bbr, 10.0, 50, 0.040)  # 500/s at 40 ms
    feed(bbr, 10.1, 20, 0.020)  # 200/s at 20 ms (min RT)
    # max_pass_per_s = 50 / 0.1 = 500; min_rt = 0.020 -> 10
    assert bbr.max_inflight(10.25) == 10
    st = bbr.stats(10.25)
    assert st.max_pass_per_s == pytest.approx(500.0)
    assert st.min_rt_s == pytest.approx(0.020)


def test_rounds_up_but_absorbs_float_noise() -> None:
    bbr = Bbr(headroom=0)
    feed(bbr, 0.0, 10, 0.031)  # 100/s * 0.031 = 3.1 -> 4
    assert bbr.max_inflight(0.15) == 4
    bbr2 = Bbr(headroom=0)
    feed(bbr2, 0.0, 10, 0.03)  # 100/s * 0.03 = 3.0000000000000004 -> 3, not 4
    assert bbr2.max_inflight(0.15) == 3


def test_floor_of_one_when_the_product_is_tiny() -> None:
    bbr = Bbr(headroom=0)
    feed(bbr, 0.0, 1, 0.0001)  # 10/s * 0.1 ms = 0.001
    assert bbr.max_inflight(0.15) == 1


def test_sub_millisecond_rt_is_not_rounded_away() -> None:
    bbr = Bbr(headroom=0)
    feed(bbr, 0.0, 10_000, 0.0004)  # 100k/s at 0.4 ms -> 40 (Kratos' ms rounding gives 0)
    assert bbr.max_inflight(0.15) == 40


def test_dropped_samples_are_not_counted() -> None:
    bbr = Bbr(headroom=0)
    for i in range(10):
        bbr.on_sample(0.01 * i, 5.0, 1, True)
    assert not bbr.stats(0.15).warm


def test_limit_is_cached_per_bucket() -> None:
    bbr = Bbr(headroom=0)
    feed(bbr, 0.0, 10, 0.05)
    first = bbr.max_inflight(0.15)
    feed(bbr, 0.15, 1000, 0.05, span_s=0.01)  # lands in the current bucket
    assert bbr.max_inflight(0.19) == first
    assert bbr.max_inflight(0.21) > first


def test_goes_cold_again_after_a_silent_window() -> None:
    bbr = Bbr(headroom=0, window_s=1.0, buckets=10, cold_start_inflight=7)
    feed(bbr, 0.0, 10, 0.01)
    assert bbr.max_inflight(0.15) == 1
    assert bbr.max_inflight(5.0) == 7


def test_bad_cold_start_is_rejected() -> None:
    with pytest.raises(ConfigError):
        Bbr(headroom=0, cold_start_inflight=0)


def test_samples_go_through_the_windows_public_method() -> None:
    """Production feeds the window the way the window's own tests do (no inlined copy)."""
    bbr = Bbr(headroom=0, window_s=1.0, buckets=10)
    assert bbr.on_sample == bbr.window.add_sample
    feed(bbr, 0.0, 10, 0.01)
    assert bbr.window.stats(0.15).samples == 10


def test_headroom_adds_sqrt_of_littles_law() -> None:
    # 100 completions per 100 ms bucket (1000/s) at 4 ms: L = 4; 4 + 1 * sqrt(4) = 6 (Envoy's rule).
    for headroom, expected in ((0.0, 4), (1.0, 6), (2.0, 8)):
        bbr = Bbr(headroom=headroom)
        for i in range(100):
            bbr.on_sample(10.05 + i * 1e-4, 0.004, 1, False)
        assert bbr.max_inflight(10.15) == expected


def test_headroom_lifts_a_single_threaded_limit_of_one() -> None:
    # 10 completions per bucket (100/s) at 5 ms: L = 0.5 -> bare ceil 1, with headroom ceil(1.207) = 2.
    bbr, bare = Bbr(headroom=1.0), Bbr(headroom=0)
    for i in range(10):
        for b in (bbr, bare):
            b.on_sample(10.05 + i * 1e-3, 0.005, 1, False)
    assert bare.max_inflight(10.15) == 1
    assert bbr.max_inflight(10.15) == 2


def test_headroom_must_be_a_finite_non_negative_number() -> None:
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ConfigError):
            Bbr(headroom=bad)


def test_rescale_bridges_on_the_scaled_limit_then_learns_the_new_quota() -> None:
    bbr = Bbr(headroom=0)
    feed(bbr, 10.0, 50, 0.040)  # 500/s at 40 ms: 20
    assert bbr.max_inflight(10.15) == 20
    bbr.rescale(0.5)  # quota halved
    assert bbr.max_inflight(10.15) == 10  # at once, not after the 10 s window
    assert bbr.max_inflight(12.0) == 10  # still no data at the new quota
    feed(bbr, 12.0, 20, 0.040)  # 200/s at 40 ms
    assert bbr.max_inflight(12.15) == 8
