"""GCRA: one contract, run by the in-process LocalGcra and by the Lua script in a real redis-server.

Every case runs on a controlled clock (``now_us`` passed in; production uses Redis ``TIME``):
rate, burst, cost, retry-after, remaining and the all-or-nothing debit are exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from bench.redis_server import RedisServer
from flowctl.quota.gcra import Debit, LocalGcra, Verdict
from flowctl.quota.store import RedisStore

DebitFn = Callable[[Sequence[Debit], int], Awaitable[Verdict]]
MS = 1000  # microseconds


def per_s(count: int, burst: int = 0, cost: float = 1.0, key: str = "k") -> Debit:
    interval = 1e6 / count
    return Debit(key, interval, interval * burst, cost)


@pytest.fixture(params=["local", "redis"])
async def debit(request: pytest.FixtureRequest) -> AsyncIterator[DebitFn]:
    if request.param == "local":
        gcra = LocalGcra()

        async def local(debits: Sequence[Debit], now_us: int) -> Verdict:
            return gcra.debit(debits, now_us)

        yield local
        return
    request.applymarker(pytest.mark.real)
    server: RedisServer = request.getfixturevalue("redis_server")
    store = RedisStore(server.url, timeout_s=2.0)
    await store.start()
    try:
        yield store.debit
    finally:
        await store.close()


async def test_burst_zero_spaces_requests_by_the_interval(debit: DebitFn) -> None:
    d = [per_s(100)]  # T = 10 ms
    assert (await debit(d, 1_000_000)).allowed
    v = await debit(d, 1_000_000)
    assert not v.allowed and v.blocking == 0
    assert v.retry_after_s == pytest.approx(0.010)
    assert not (await debit(d, 1_000_000 + 9_999)).allowed
    assert (await debit(d, 1_000_000 + 10 * MS)).allowed


async def test_burst_passes_burst_plus_one_at_once_then_the_rate(debit: DebitFn) -> None:
    d = [per_s(100, burst=20)]
    t0 = 5_000_000
    remaining = []
    for _ in range(21):
        v = await debit(d, t0)
        assert v.allowed
        remaining.append(v.remaining)
    assert remaining == list(range(20, -1, -1))
    v = await debit(d, t0)
    assert not v.allowed and v.retry_after_s == pytest.approx(0.010) and v.remaining == 0
    assert v.reset_s == pytest.approx(0.210)
    assert (await debit(d, t0 + 10 * MS)).allowed
    assert not (await debit(d, t0 + 10 * MS)).allowed


async def test_exact_rate_over_one_second(debit: DebitFn) -> None:
    d = [per_s(100)]
    t0 = 7_000_000
    allowed = [t for t in range(0, 1_000_000, MS) if (await debit(d, t0 + t)).allowed]
    assert allowed == list(range(0, 1_000_000, 10 * MS))


async def test_any_window_holds_rate_times_window_plus_burst(debit: DebitFn) -> None:
    d = [per_s(50, burst=5)]  # T = 20 ms
    t0 = 9_000_000
    times = [t for t in range(0, 2_000_000, 2 * MS) if (await debit(d, t0 + t)).allowed]
    for start in times:
        in_window = sum(1 for t in times if start <= t < start + 1_000_000)
        assert in_window <= 50 + 5
    assert sum(1 for t in times if t < 1_000_000) == 50 + 5


async def test_cost_debits_units_and_retry_after_is_for_that_cost(debit: DebitFn) -> None:
    d = [per_s(100, burst=9, cost=5)]  # T = 10 ms, tau = 90 ms: 10 units at once
    t0 = 11_000_000
    first, second, third = (await debit(d, t0)), (await debit(d, t0)), (await debit(d, t0))
    assert first.allowed and first.remaining == 5
    assert second.allowed and second.remaining == 0
    assert not third.allowed and third.retry_after_s == pytest.approx(0.050) and third.reset_s == pytest.approx(0.100)
    assert not (await debit(d, t0 + 49 * MS)).allowed
    assert (await debit(d, t0 + 50 * MS)).allowed


async def test_all_or_nothing_across_keys(debit: DebitFn) -> None:
    fast, slow = per_s(100, key="fast"), per_s(1, key="slow")
    t0 = 13_000_000
    assert (await debit([fast, slow], t0)).allowed
    v = await debit([fast, slow], t0 + 10 * MS)
    assert not v.allowed and v.blocking == 1
    assert v.retry_after_s == pytest.approx(0.990)
    # "fast" was not charged by the refused debit: it still passes at once on its own
    assert (await debit([fast], t0 + 10 * MS)).allowed


async def test_an_idle_key_does_not_bank_more_than_its_burst(debit: DebitFn) -> None:
    d = [per_s(10, burst=2)]
    assert (await debit(d, 1_000_000)).allowed
    t = 100_000_000  # 99 s idle
    assert [(await debit(d, t)).allowed for _ in range(4)] == [True, True, True, False]


@pytest.mark.real
async def test_redis_time_is_the_clock_and_keys_expire(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_s=2.0)
    await store.start()
    try:
        d = [Debit("flowctl:quota:t:x", 1e6, 0.0, 1.0)]  # 1/s, no burst
        assert (await store.debit(d)).allowed
        v = await store.debit(d)
        assert not v.allowed and 0.9 < v.retry_after_s <= 1.0
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_server.url)
        try:
            ttl_ms = await client.pttl("flowctl:quota:t:x")
            assert 1000 < ttl_ms <= 2000  # the TAT (1 s ahead) plus a second
        finally:
            await client.aclose()
        assert await store.heartbeat("a", 3.0) == 1
        assert await store.heartbeat("b", 3.0) == 2
        assert await store.heartbeat("a", 3.0, leave=True) == 1
    finally:
        await store.close()
