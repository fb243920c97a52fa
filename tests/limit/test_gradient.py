"""Gradient (Gradient2-style peer): shrinks on latency growth, grows with a queue term, clamps."""

from __future__ import annotations

import pytest

from flowctl.errors import ConfigError
from flowctl.limit.gradient import Gradient


def test_starts_at_initial_limit() -> None:
    assert Gradient(initial_limit=20).max_inflight(0.0) == 20


def test_app_limited_samples_leave_the_limit_alone() -> None:
    g = Gradient(initial_limit=20)
    for _ in range(100):
        g.on_sample(0.0, 0.01, inflight=2, dropped=False)  # 2 < 20 / 2
    assert g.limit == 20


def test_steady_latency_grows_the_limit_by_the_queue_term_up_to_max() -> None:
    g = Gradient(initial_limit=20, max_limit=50)
    for _ in range(2000):
        g.on_sample(0.0, 0.01, inflight=int(g.limit), dropped=False)
    assert g.limit == pytest.approx(50)


def test_latency_spike_shrinks_the_limit_but_not_below_min() -> None:
    g = Gradient(initial_limit=100, min_limit=5)
    for _ in range(50):
        g.on_sample(0.0, 0.01, inflight=100, dropped=False)
    before = g.limit
    for _ in range(20):
        g.on_sample(0.0, 0.1, inflight=100, dropped=False)  # 10x slower
    assert g.limit < before
    for _ in range(5000):
        g.on_sample(0.0, 10.0, inflight=1000, dropped=False)
    assert g.limit >= 5


def test_zero_rt_does_not_divide_by_zero() -> None:
    g = Gradient()
    g.on_sample(0.0, 0.0, inflight=100, dropped=False)
    assert g.limit > 0


@pytest.mark.parametrize(
    "kwargs",
    [{"min_limit": 0.5}, {"initial_limit": 300}, {"smoothing": 0}, {"tolerance": 0.5}, {"long_window": 0}],
)
def test_bad_config_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Gradient(**kwargs)  # type: ignore[arg-type]
