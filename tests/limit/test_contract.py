"""The LimitAlgorithm contract, run over every implementation."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from flowctl.limit.base import LimitAlgorithm, LimitStats
from flowctl.limit.bbr import Bbr
from flowctl.limit.fixed import FixedLimit
from flowctl.limit.gradient import Gradient

ALL_ALGORITHMS: dict[str, Callable[[], LimitAlgorithm]] = {
    "bbr": Bbr,
    "bbr-small-window": lambda: Bbr(window_s=1.0, buckets=10, cold_start_inflight=1),
    "fixed": lambda: FixedLimit(8),
    "gradient": Gradient,
}


@pytest.fixture(params=sorted(ALL_ALGORITHMS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def algo(kind: str) -> LimitAlgorithm:
    return ALL_ALGORITHMS[kind]()


def test_implements_the_protocol(algo: LimitAlgorithm) -> None:
    assert isinstance(algo, LimitAlgorithm)
    assert isinstance(algo.name, str) and algo.name


def test_limit_is_at_least_one_and_finite_before_any_sample(algo: LimitAlgorithm) -> None:
    limit = algo.max_inflight(1000.0)
    assert limit >= 1 and math.isfinite(limit)


@pytest.mark.parametrize("seed", range(5))
def test_limit_stays_at_least_one_and_finite_under_any_samples(algo: LimitAlgorithm, seed: int) -> None:
    rng = random.Random(seed)
    now = 1000.0
    for _ in range(3000):
        now += rng.choice([0.0, 0.0001, 0.003, 0.05, 0.4, 12.0])
        rt = rng.choice([0.0, 1e-6, 0.001, 0.02, 0.5, 30.0])
        algo.on_sample(now, rt, rng.randint(0, 500), rng.random() < 0.1)
        limit = algo.max_inflight(now)
        assert limit >= 1 and math.isfinite(limit)


def test_stats_match_the_limit(algo: LimitAlgorithm) -> None:
    for i in range(100):
        algo.on_sample(10.0 + i * 0.003, 0.01, 10, False)
    st = algo.stats(11.0)
    assert isinstance(st, LimitStats)
    assert st.max_inflight == algo.max_inflight(11.0)
    for v in (st.min_rt_s, st.max_pass_per_s):
        assert v is None or (v >= 0 and math.isfinite(v))


def test_same_inputs_same_limit(kind: str) -> None:
    """Pure: no hidden clock or randomness."""
    a, b = ALL_ALGORITHMS[kind](), ALL_ALGORITHMS[kind]()
    for algo in (a, b):
        for i in range(200):
            algo.on_sample(5.0 + i * 0.01, 0.002 + (i % 7) * 0.001, i % 30, i % 13 == 0)
    assert a.max_inflight(8.0) == b.max_inflight(8.0)
    assert a.stats(8.0) == b.stats(8.0)


def test_on_sample_is_amortized_constant_memory(algo: LimitAlgorithm) -> None:
    import tracemalloc

    now = 0.0
    for _ in range(2000):  # warm up: fill every ring slot once
        now += 0.01
        algo.on_sample(now, 0.001, 5, False)
        algo.max_inflight(now)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            now += 0.01
            algo.on_sample(now, 0.001, 5, False)
            algo.max_inflight(now)
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert growth < 4096
