"""Quotas on a fake clock and a scripted store: the over-quota cache, the breaker and the modes.

The real store and the real outages are in test_gcra.py and test_aiohttp_quota.py; here every
transition is driven step by step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from flowctl.errors import ConfigError, QuotaStoreError
from flowctl.quota import CircuitBreaker, Quotas
from flowctl.quota.gcra import Debit, LocalGcra, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedStore:
    """LocalGcra behind the QuotaStore protocol, on the test's clock; ``down`` makes every call fail."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.gcra = LocalGcra()
        self.down = False
        self.calls = 0

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def debit(self, debits: Sequence[Debit], now_us: int | None = None) -> Verdict:
        self.calls += 1
        if self.down:
            raise QuotaStoreError("quota store: refused")
        return self.gcra.debit(debits, self.clock.now * 1e6)

    async def heartbeat(self, replica: str, ttl_s: float, *, leave: bool = False) -> int:
        self.calls += 1
        if self.down:
            raise QuotaStoreError("quota store: refused")
        return 3


def tenant(value: str) -> Callable[[str], str | None]:
    return lambda name: value if name == "x-tenant" else None


RULE = "key=header:X-Tenant,rate=8/s"  # T = 0.125 s: exact in binary, like the clock steps below


async def test_a_key_over_its_quota_costs_no_call_until_its_retry_time() -> None:
    clock = Clock()
    store = ScriptedStore(clock)
    q = Quotas([RULE], store=store, clock=clock)
    m = q.match(tenant("a"), "/")
    assert await q.debit(m) is None
    refused = await q.debit(m)
    assert refused is not None and refused.status == 429 and refused.retry_after_s == pytest.approx(0.125)
    calls = store.calls
    clock.now += 0.0625
    for _ in range(10):
        again = await q.debit(m)
        assert again is not None and again.retry_after_s == pytest.approx(0.0625)
    assert store.calls == calls  # no round trip while known to be over
    assert q.counts.total("rejected_cached") == 10
    clock.now += 0.0625
    assert await q.debit(m) is None and store.calls == calls + 1


async def test_breaker_opens_after_three_failures_and_a_probe_closes_it(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    store = ScriptedStore(clock)
    q = Quotas([RULE], store=store, clock=clock, on_error="open")
    m = q.match(tenant("a"), "/")
    store.down = True
    for _ in range(3):
        assert await q.debit(m) is None  # open: admitted, each after one failed call
    assert q.mode == "open" and q.counts.store_errors_total == 3
    calls = store.calls
    assert await q.debit(m) is None and store.calls == calls  # breaker open: no call
    clock.now += 0.5
    store.down = False
    assert await q.debit(m) is None and store.calls == calls + 1  # the probe
    assert q.mode == "store" and q.counts.mode_changes_total == 2
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["quota mode store -> open", "quota mode open -> store"]


async def test_closed_mode_answers_503_quota_store_and_local_mode_divides_by_replicas() -> None:
    clock = Clock()
    closed = Quotas([RULE], store=ScriptedStore(clock), clock=clock, on_error="closed")
    closed.store.down = True  # type: ignore[union-attr]
    refused = await closed.debit(closed.match(tenant("a"), "/"))
    assert refused is not None and refused.status == 503 and refused.reason == "quota_store"

    local = Quotas(["key=header:X-Tenant,rate=30/s,burst=5"], store=ScriptedStore(clock), clock=clock, replicas=3)
    local.store.down = True  # type: ignore[union-attr]
    m = local.match(tenant("a"), "/")
    passed = 0
    for _ in range(100):  # one second at 100 requests/s
        passed += await local.debit(m) is None
        clock.now += 0.01
    # this replica's share: 10/s, burst 5/3 -> 1 at once beyond the rate: 10 + 1 (+1 for the first instant)
    assert 10 <= passed <= 12


def test_breaker_state_machine() -> None:
    b = CircuitBreaker(failures=2, open_s=1.0)
    assert b.allow(0.0) and b.state(0.0) == "closed"
    assert not b.failure(0.0) and b.allow(0.0)
    assert b.failure(0.0) and not b.allow(0.5) and b.state(0.5) == "open"
    assert b.allow(1.0) and b.state(1.0) == "half_open"
    assert not b.allow(1.0)  # one probe at a time
    assert not b.failure(1.1) and not b.allow(1.5)  # the probe failed: open again for open_s
    assert b.allow(2.1) and b.success() and b.state(2.1) == "closed"
    with pytest.raises(ConfigError):
        CircuitBreaker(failures=0)


def test_bypass_must_name_the_limiters_classes() -> None:
    q = Quotas(["key=const:all,rate=1/s,bypass=vip"])
    with pytest.raises(ConfigError, match="vip"):
        q.check_priorities(("critical", "default", "sheddable"))
    with pytest.raises(ConfigError, match="no rules"):
        Quotas([])
