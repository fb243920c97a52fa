"""Streams through the sidecar: SSE and configured stream paths end their admission at the
response headers; slow small bodies are not held back (status, headers and the bytes that
arrived go out at once). Real upstream, real sidecar, real clients, on both upstream clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from flowctl.limit.fixed import FixedLimit
from flowctl.limiter import Limiter
from flowctl.signal import StaticSignal
from flowctl.limiter import Policy
from tests.sidecar.conftest import MakeSidecar, admin_url, config_for, url

WAIT_S = 10.0  # generous: an event that never comes fails the test, it is not a timing goal


pytestmark = pytest.mark.usefixtures("both_upstream_clients")  # every test on both upstream clients


class Gated:
    """An upstream whose streams wait for ``gate`` before they end."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.url = ""

    def app(self) -> web.Application:
        async def events(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)
            await resp.write(b"data: hello\n\n")
            await self.gate.wait()
            await resp.write(b"data: bye\n\n")
            await resp.write_eof()
            return resp

        async def poll(request: web.Request) -> web.StreamResponse:  # chunked, not SSE: a stream only if configured
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b"[")
            await self.gate.wait()
            await resp.write(b"1]")
            await resp.write_eof()
            return resp

        async def drip(request: web.Request) -> web.StreamResponse:  # 4 bytes with a Content-Length, slowly
            resp = web.StreamResponse(headers={"Content-Length": "4", "Content-Type": "application/octet-stream"})
            await resp.prepare(request)
            await resp.write(b"a")
            await self.gate.wait()
            for b in (b"b", b"c", b"d"):
                await resp.write(b)
            await resp.write_eof()
            return resp

        async def plain(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def slow(request: web.Request) -> web.Response:
            await self.gate.wait()
            return web.Response(text="slow")

        app = web.Application()
        app.router.add_get("/events", events)
        app.router.add_get("/poll", poll)
        app.router.add_get("/drip", drip)
        app.router.add_get("/plain", plain)
        app.router.add_get("/slow", slow)
        return app


@pytest.fixture
async def gated() -> AsyncIterator[Gated]:
    g = Gated()
    runner = web.AppRunner(g.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    g.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield g
    finally:
        g.gate.set()
        await runner.cleanup()


async def _first_bytes(client: aiohttp.ClientSession, target: str) -> tuple[aiohttp.ClientResponse, bytes]:
    r = await client.get(target)
    return r, await r.content.readany()


@pytest.mark.parametrize("via_sidecar", [False, True], ids=["direct", "sidecar"])
async def test_slow_small_body_head_and_first_byte_are_not_held_back(
    gated: Gated, make_sidecar: MakeSidecar, client: aiohttp.ClientSession, via_sidecar: bool
) -> None:
    """The upstream sends its head and 1 of 4 bytes, then waits for the gate: the client must get
    both before the gate opens (the small-body path used to wait for the whole body)."""
    target = gated.url + "/drip"
    if via_sidecar:
        sc = await make_sidecar(config_for(gated.url), limit=False)
        target = url(sc, "/drip")
    r, first = await asyncio.wait_for(_first_bytes(client, target), WAIT_S)
    try:
        assert r.status == 200 and r.headers["Content-Length"] == "4"
        assert first == b"a"
        gated.gate.set()
        assert first + await asyncio.wait_for(r.content.read(), WAIT_S) == b"abcd"
    finally:
        r.release()


async def test_small_body_already_here_is_written_whole(gated: Gated, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(gated.url), limit=False)
    for _ in range(3):  # keep-alive reuse after the one-write path
        async with client.get(url(sc, "/plain")) as r:
            assert r.status == 200 and await r.text() == "ok" and r.headers["Content-Length"] == "2"


class RecordingFixed(FixedLimit):
    """A fixed limit that keeps every RT sample the limiter feeds it."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.samples: list[float] = []

    def on_sample(self, now: float, rt_s: float, inflight: int, dropped: bool) -> None:
        self.samples.append(rt_s)
        super().on_sample(now, rt_s, inflight, dropped)


def _hot_limiter() -> tuple[StaticSignal, Limiter]:
    cpu = StaticSignal("container", utilization=0.95, utilization_smoothed=0.95, limit_cores=0.5)
    return cpu, Limiter(cpu, RecordingFixed(1), policy=Policy(cpu_threshold=0.8, cool_off_s=0.0))


async def _plain_answered(client: aiohttp.ClientSession, target: str, n: int) -> int:
    ok = 0
    for _ in range(n):  # one at a time, as in the issue
        async with client.get(target) as r:
            await r.read()
            ok += r.status == 200
    return ok


async def test_sse_streams_leave_inflight_at_zero_and_do_not_starve_plain_requests(
    gated: Gated, make_sidecar: MakeSidecar, client: aiohttp.ClientSession
) -> None:
    cpu, limiter = _hot_limiter()
    assert isinstance(limiter.algorithm, RecordingFixed)
    sc = await make_sidecar(config_for(gated.url), limiter=limiter, signal=cpu)
    assert sc.proxy is not None
    baseline = await _plain_answered(client, url(sc, "/plain"), 20)
    samples = len(limiter.algorithm.samples)

    streams = []
    try:
        for _ in range(30):  # opened one by one on a hot CPU: each is admitted, then released at its headers
            r, first = await asyncio.wait_for(_first_bytes(client, url(sc, "/events")), WAIT_S)
            streams.append(r)
            assert r.status == 200 and first == b"data: hello\n\n"
            assert limiter.snapshot().inflight == 0
        assert sc.proxy.sessions_active == 30
        assert len(limiter.algorithm.samples) == samples  # a stream's start is no RT sample (no min RT from it)
        async with client.get(admin_url(sc, "/metrics")) as m:
            text = await m.text()
        assert 'flowctl_inflight{resource="default"} 0.0' in text
        assert 'flowctl_sessions_active{resource="default"} 30.0' in text
        assert await _plain_answered(client, url(sc, "/plain"), 20) == baseline == 20

        # The admission decision still applies at a stream's start: with the one slot held, it is shed.
        held = asyncio.ensure_future(client.get(url(sc, "/slow")))
        for _ in range(500):
            if limiter.snapshot().inflight == 1:
                break
            await asyncio.sleep(0.01)
        async with client.get(url(sc, "/events")) as shed:
            assert shed.status == 503
        gated.gate.set()
        async with await held as r:
            assert r.status == 200
        for r in streams:
            assert await asyncio.wait_for(r.content.read(), WAIT_S) == b"data: bye\n\n"
    finally:
        gated.gate.set()
        for r in streams:
            r.release()
    for _ in range(500):
        if sc.proxy.sessions_active == 0 and sc.proxy.inflight == 0:
            break
        await asyncio.sleep(0.01)
    assert sc.proxy.sessions_active == 0 and sc.proxy.sessions_total == 30
    assert limiter.snapshot().inflight == 0
    async with client.get(admin_url(sc, "/metrics")) as m:
        text = await m.text()
    assert 'flowctl_sessions_active{resource="default"} 0.0' in text
    assert 'flowctl_session_duration_seconds_count{resource="default"} 30.0' in text


async def test_configured_stream_path_is_released_at_headers(
    gated: Gated, make_sidecar: MakeSidecar, client: aiohttp.ClientSession
) -> None:
    cpu, limiter = _hot_limiter()
    sc = await make_sidecar(config_for(gated.url, stream_paths=("/poll",)), limiter=limiter, signal=cpu)
    assert sc.proxy is not None
    r, first = await asyncio.wait_for(_first_bytes(client, url(sc, "/poll")), WAIT_S)
    try:
        assert first == b"["
        assert limiter.snapshot().inflight == 0 and sc.proxy.sessions_active == 1
        gated.gate.set()
        assert await asyncio.wait_for(r.content.read(), WAIT_S) == b"1]"
    finally:
        r.release()


async def test_unconfigured_chunked_stream_keeps_its_admission(
    gated: Gated, make_sidecar: MakeSidecar, client: aiohttp.ClientSession
) -> None:
    """Not SSE and not configured: a request until its body ends (the rule is not a guess)."""
    cpu, limiter = _hot_limiter()
    sc = await make_sidecar(config_for(gated.url), limiter=limiter, signal=cpu)
    assert sc.proxy is not None
    r, first = await asyncio.wait_for(_first_bytes(client, url(sc, "/poll")), WAIT_S)
    try:
        assert first == b"["
        assert limiter.snapshot().inflight == 1 and sc.proxy.sessions_active == 0
        gated.gate.set()
        assert await asyncio.wait_for(r.content.read(), WAIT_S) == b"1]"
    finally:
        r.release()


def test_stream_paths_config_from_env_and_toml(tmp_path: Path) -> None:
    from flowctl.errors import ConfigError
    from sidecar.config import load_config

    assert load_config(env={"FLOWCTL_STREAM_PATHS": "/events, /poll/"}).stream_paths == ("/events", "/poll/")
    assert load_config(env={}).stream_paths == ()
    toml = tmp_path / "sidecar.toml"
    toml.write_text('stream_paths = ["/a", "/b"]\n')
    assert load_config(env={"FLOWCTL_CONFIG": str(toml)}).stream_paths == ("/a", "/b")
    with pytest.raises(ConfigError, match="stream_paths"):
        load_config(env={"FLOWCTL_STREAM_PATHS": "events"})
