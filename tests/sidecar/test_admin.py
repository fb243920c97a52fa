"""Shedding with a fake CPU signal through the real Limiter, and every admin endpoint."""

from __future__ import annotations

import asyncio

import aiohttp

from flowctl.limit.fixed import FixedLimit
from flowctl.limiter import Limiter
from flowctl.signal import StaticSignal
from flowctl.limiter import Policy
from bench.ports import free_port
from tests.sidecar.conftest import MakeSidecar, Upstream, admin_url, config_for, url


async def test_hot_cpu_sheds_with_503_retry_after_and_json_reason(
    upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession
) -> None:
    cpu = StaticSignal("container", utilization=0.2, utilization_smoothed=0.2, limit_cores=0.5)
    limiter = Limiter(cpu, FixedLimit(1), policy=Policy(cpu_threshold=0.8, cool_off_s=2.0))
    sc = await make_sidecar(config_for(upstream.url), limiter=limiter, signal=cpu)

    async with client.get(url(sc, "/echo")) as r:  # cool CPU: admitted
        assert r.status == 200

    cpu.set(utilization=0.95, utilization_smoothed=0.95)
    slow = asyncio.ensure_future(client.get(url(sc, "/slow?s=0.5")))  # holds the single slot
    for _ in range(200):
        if limiter.inflight >= 1:
            break
        await asyncio.sleep(0.01)
    async with client.get(url(sc, "/echo")) as r:
        assert r.status == 503
        assert int(r.headers["Retry-After"]) >= 1
        body = await r.json()
    assert body["error"] == "overloaded"
    assert body["reason"] == "cpu"
    assert body["retry_after_s"] > 0
    resp = await slow
    assert resp.status == 200  # the admitted request is served
    resp.release()

    async with client.get(admin_url(sc, "/debug/limiter")) as r:
        dbg = await r.json()
    assert dbg["rejections"][0]["reason"]["trigger"] == "cpu"
    assert dbg["rejections"][0]["path"] == "/echo"
    assert dbg["limiter"]["inflight"] == 0
    assert dbg["cpu"]["container"]["utilization"] == 0.95

    async with client.get(admin_url(sc, "/metrics")) as r:
        text = await r.text()
    assert 'flowctl_shed_total{reason="cpu",resource="default"} 1.0' in text
    assert 'flowctl_sidecar_errors_total{status="503"} 1.0' in text
    assert 'flowctl_requests_total{outcome="admitted",priority="default",resource="default"}' in text
    assert "flowctl_request_duration_seconds_bucket" in text


async def test_priority_header_is_used_only_when_configured(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    cpu = StaticSignal("container", utilization=0.1, utilization_smoothed=0.1)
    limiter = Limiter(cpu, FixedLimit(10))
    sc = await make_sidecar(config_for(upstream.url, priority_header="X-Priority"), limiter=limiter, signal=cpu)
    for prio in ("critical", "sheddable", "bogus"):
        async with client.get(url(sc, "/echo"), headers={"X-Priority": prio}) as r:
            assert r.status == 200
    snap = limiter.snapshot()
    assert snap.requests[("default", "critical", "admitted")] == 1
    assert snap.requests[("default", "sheddable", "admitted")] == 1
    assert snap.requests[("default", "default", "admitted")] == 1  # unknown -> default


async def test_dry_run_admits_and_records(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    cpu = StaticSignal("container", utilization=0.99, utilization_smoothed=0.99)
    limiter = Limiter(cpu, FixedLimit(1), dry_run=True)
    sc = await make_sidecar(config_for(upstream.url), limiter=limiter, signal=cpu)
    results = await asyncio.gather(*(client.get(url(sc, "/slow?s=0.2")) for _ in range(3)))
    assert [r.status for r in results] == [200, 200, 200]
    for r in results:
        r.release()
    async with client.get(admin_url(sc, "/debug/limiter")) as r:
        dbg = await r.json()
    assert dbg["rejections"] and dbg["rejections"][0]["reason"]["dry_run"] is True


async def test_healthz_readyz_follow_upstream_and_draining(make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    from aiohttp import web

    port = free_port()
    sc = await make_sidecar(config_for(f"http://127.0.0.1:{port}"), limit=False)
    async with client.get(admin_url(sc, "/healthz")) as r:
        assert r.status == 200
    async with client.get(admin_url(sc, "/readyz")) as r:
        assert r.status == 503  # nothing listens upstream yet
        assert "upstream not ready" in await r.text()
    async with client.get(admin_url(sc, "/metrics")) as r:
        assert "flowctl_upstream_ready 0.0" in await r.text()

    async def ok(request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok")

    runner = web.ServerRunner(web.Server(ok))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        for _ in range(200):
            async with client.get(admin_url(sc, "/readyz")) as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.05)
        assert r.status == 200
        async with client.get(admin_url(sc, "/metrics")) as r:
            text = await r.text()
        assert "flowctl_upstream_ready 1.0" in text and "flowctl_draining 0.0" in text
        assert await sc.drain() is True
        async with client.get(admin_url(sc, "/readyz")) as r:
            assert r.status == 503
            assert await r.text() == "draining\n"
        async with client.get(admin_url(sc, "/metrics")) as r:
            assert "flowctl_draining 1.0" in await r.text()
        async with client.get(admin_url(sc, "/healthz")) as r:
            assert r.status == 200  # alive while draining
    finally:
        await runner.cleanup()


async def test_health_path_probe(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url, health_path="/status/503"), limit=False)
    assert sc.probe is not None
    assert await sc.probe.check() is False
    assert "503" in (sc.probe.last_error or "")
    sc2 = await make_sidecar(config_for(upstream.url, health_path="/echo"), limit=False)
    assert sc2.probe is not None and await sc2.probe.check() is True


async def test_debug_limiter_without_injection_uses_the_watched_signal(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    """The default wiring: WatchedSignal(self) -> Limiter(Bbr); every section of the JSON is present."""
    sc = await make_sidecar(config_for(upstream.url, sample_interval_s=0.05))
    async with client.get(url(sc, "/echo")) as r:
        assert r.status == 200
    async with client.get(admin_url(sc, "/debug/limiter")) as r:
        dbg = await r.json()
    assert set(dbg) >= {"limiter", "cpu", "cpu_details", "watch", "rejections", "probe", "proxy", "draining"}
    assert dbg["watch"]["target"] == "self" and dbg["watch"]["resolved"] is True
    assert dbg["limiter"]["algorithm"] == "bbr"
    assert "container" in dbg["cpu"]
    assert dbg["proxy"]["requests_total"] == 1
