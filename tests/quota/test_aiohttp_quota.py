"""Quotas in flowctl.aiohttp: the limiter decides first, only admitted requests are debited,
429 with RateLimit headers, priority bypass, and the three failure modes on a paused redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

import flowctl.aiohttp as fa
from bench.redis_server import RedisServer
from flowctl.errors import ConfigError
from flowctl.limit.fixed import FixedLimit
from flowctl.limiter import Limiter
from flowctl.signal import StaticSignal
from flowctl.limiter import Policy

RULE = "key=header:X-Tenant,rate=10/s,burst=2"


async def hello(request: web.Request) -> web.Response:
    gate = request.app.get(GATE)
    if gate is not None and request.query.get("wait"):
        await gate.wait()
    return web.Response(text="ok")


GATE = web.AppKey("gate", asyncio.Event)


def make_app(*, limit: int = 100, **setup_kw: Any) -> tuple[web.Application, fa.Flowctl]:
    app = web.Application()
    app[GATE] = asyncio.Event()
    app.router.add_get("/", hello)
    app.router.add_get("/other", hello)
    limiter = Limiter(StaticSignal("container"), FixedLimit(limit), policy=Policy(cpu_gate=False))
    state = fa.setup(app, limiter=limiter, loop_lag=False, registry=CollectorRegistry(), **setup_kw)
    return app, state


@pytest.fixture
async def make_client() -> AsyncIterator[Any]:
    clients: list[TestClient[Any, Any]] = []

    async def make(app: web.Application) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


def sample(state: fa.Flowctl, name: str, **labels: str) -> float | None:
    return state.registry.get_sample_value(name, labels)


async def test_over_quota_gets_429_with_ratelimit_headers_and_json(make_client: Any) -> None:
    app, state = make_app(quotas=[RULE])
    client = await make_client(app)
    statuses = [(await client.get("/", headers={"X-Tenant": "a"})).status for _ in range(3)]
    assert statuses == [200, 200, 200]  # burst 2: three at once
    resp = await client.get("/", headers={"X-Tenant": "a"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert resp.headers["RateLimit-Policy"] == '"x-tenant";q=10;w=1'
    assert resp.headers["RateLimit"].startswith('"x-tenant";r=0;t=')
    body = await resp.json()
    assert body["error"] == "quota" and body["key"] == "a" and body["rule"] == "x-tenant"
    assert 0 < body["retry_after_s"] <= 0.1
    # another tenant, and a request without the header, are not affected
    assert (await client.get("/", headers={"X-Tenant": "b"})).status == 200
    assert (await client.get("/")).status == 200
    assert sample(state, "flowctl_quota_requests_total", rule="x-tenant", outcome="local_admitted") == 4
    assert sample(state, "flowctl_quota_requests_total", rule="x-tenant", outcome="local_rejected") == 1
    assert sample(state, "flowctl_quota_mode", mode="local") == 1
    # the quota's refusal released the limiter's slot
    assert state.limiter.inflight == 0


async def test_the_limiter_decides_first_and_only_admitted_requests_are_debited(make_client: Any) -> None:
    app, state = make_app(limit=1, quotas=["key=const:all,rate=1/s,burst=5"])
    client = await make_client(app)
    held = asyncio.ensure_future(client.get("/?wait=1"))
    while state.limiter.inflight < 1:
        await asyncio.sleep(0.005)
    shed = await client.get("/")
    assert shed.status == 503 and (await shed.json())["error"] == "overloaded"
    app[GATE].set()
    assert (await held).status == 200
    assert state.quotas is not None
    assert state.quotas.counts.total("local_admitted") == 1  # the shed request was not debited


async def test_priority_bypass_only_when_the_rule_says_so(make_client: Any) -> None:
    rules = ["key=const:all,rate=1/s,name=everyone", "key=const:all,rate=1/s,name=not-critical,bypass=critical"]
    app, state = make_app(quotas=rules, trusted_priority_header="X-Priority")
    client = await make_client(app)
    assert (await client.get("/", headers={"X-Priority": "critical"})).status == 200
    # "everyone" has no bypass: its one request per second is now used, critical or not
    assert (await client.get("/", headers={"X-Priority": "critical"})).status == 429
    assert sample(state, "flowctl_quota_requests_total", rule="not-critical", outcome="bypassed") == 2


def test_bad_rules_and_options_fail_at_setup() -> None:
    with pytest.raises(ConfigError, match="rate"):
        make_app(quotas=["key=header:X-Tenant,rate=fast"])
    with pytest.raises(ConfigError, match="not priority classes"):
        make_app(quotas=["key=const:all,rate=1/s,bypass=vip"])
    with pytest.raises(ConfigError, match="on_error"):
        make_app(quotas=[RULE], quota_on_error="maybe")
    with pytest.raises(ConfigError, match="quota store"):
        make_app(quotas=[RULE], quota_store="http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="without quotas"):
        make_app(quota_store="redis://127.0.0.1:6379/0")


async def wait_mode(state: fa.Flowctl, mode: str, timeout_s: float = 3.0) -> float:
    """Seconds until flowctl_quota_mode says ``mode`` (fails after ``timeout_s``)."""
    t0 = time.monotonic()
    while sample(state, "flowctl_quota_mode", mode=mode) != 1:
        assert time.monotonic() - t0 < timeout_s, f"mode did not become {mode}"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


@pytest.mark.real
async def test_store_answers_across_two_apps(redis_server: RedisServer, make_client: Any) -> None:
    """Two replicas share one quota through the real store."""
    (app1, s1), (app2, s2) = (make_app(quotas=[RULE], quota_store=redis_server.url) for _ in range(2))
    c1, c2 = await make_client(app1), await make_client(app2)
    assert s1.quotas is not None
    await s1.quotas.beat()  # its first heartbeat ran before the second app had started
    assert s1.quotas.replicas == 2  # counted from the heartbeats
    got = [(await c.get("/", headers={"X-Tenant": "a"})).status for c in (c1, c2, c1, c2)]
    assert got == [200, 200, 200, 429]
    assert sample(s2, "flowctl_quota_mode", mode="store") == 1
    # a key known to be over costs no store call
    calls = s1.quotas.counts.store_seconds.counts[:]
    assert (await c1.get("/", headers={"X-Tenant": "a"})).status == 429
    assert sum(s1.quotas.counts.store_seconds.counts) - sum(calls) in (0, 1)  # 1 only if a heartbeat ran


@pytest.mark.real
@pytest.mark.parametrize("mode", ["local", "open", "closed"])
async def test_failure_modes_on_a_paused_store(mode: str, redis_server: RedisServer, make_client: Any) -> None:
    app, state = make_app(quotas=[RULE], quota_store=redis_server.url, quota_on_error=mode)
    client = await make_client(app)
    assert (await client.get("/", headers={"X-Tenant": "a"})).status == 200
    redis_server.pause()
    try:
        statuses, worst_s = [], 0.0
        for i in range(8):
            t0 = time.monotonic()
            resp = await client.get("/", headers={"X-Tenant": f"t{i % 2}"})
            worst_s = max(worst_s, time.monotonic() - t0)
            statuses.append(resp.status)
            if resp.status == 503:
                assert (await resp.json())["reason"] == "quota_store"
        # each request is decided within the store's timeout (20 ms) plus the app's own time
        assert worst_s < 0.5
        await wait_mode(state, mode, timeout_s=0.5)
        assert (sample(state, "flowctl_quota_store_errors_total") or 0) >= 3
        if mode == "open":
            assert statuses == [200] * 8
        elif mode == "closed":
            assert statuses == [503] * 8
        else:  # this replica's share (1 replica: the whole quota, burst 2) per key
            assert statuses.count(200) == 6 and statuses.count(429) == 2
    finally:
        redis_server.resume()
    took_s = await wait_mode(state, "store", timeout_s=3.0)
    assert took_s < 2.0
    assert (await client.get("/", headers={"X-Tenant": "fresh"})).status == 200
    assert sample(state, "flowctl_quota_mode_changes_total") == 2
