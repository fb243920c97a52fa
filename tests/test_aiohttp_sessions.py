"""Long-lived sessions in flowctl.aiohttp: WebSockets end their admission at the handshake,
long-lived routes (SSE, long-poll) at their headers or after ``session_after_s``; sessions never
hold in-flight, and neither their start nor their life reaches the RT window. Real server, real client (aiohttp's test server), a real
Limiter with a static hot CPU signal; both hooks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

import flowctl.aiohttp as fa
from flowctl.limit.base import LimitStats
from flowctl.limiter import Limiter
from flowctl.signal import StaticSignal
from flowctl.limiter import Policy
from tests.test_aiohttp import start, wait_for

Client = TestClient[web.Request, web.Application]


class RecordingLimit:
    """A fixed limit that records every RT sample the limiter feeds it."""

    name = "recording"

    def __init__(self, n: float) -> None:
        self.n = n
        self.samples: list[float] = []

    def max_inflight(self, now: float) -> float:
        return self.n

    def on_sample(self, now: float, rt_s: float, inflight: int, dropped: bool) -> None:
        self.samples.append(rt_s)

    def stats(self, now: float) -> LimitStats:
        return LimitStats(max_inflight=self.n)


class SessionApp:
    """WebSocket, SSE and long-poll routes next to plain ones; a hot CPU and a limit of 1."""

    def __init__(self, hook: str, **setup_kw: Any) -> None:
        self.signal = StaticSignal("container", utilization=0.95, utilization_smoothed=0.95, limit_cores=0.5)
        self.algo = RecordingLimit(1)
        self.limiter = Limiter(self.signal, self.algo, policy=Policy(cool_off_s=0.0))
        self.registry = CollectorRegistry()
        self.gate = asyncio.Event()
        self.app = web.Application()
        r = self.app.router
        r.add_get("/plain", self.plain, name="plain")
        r.add_get("/slow", self.slow, name="slow")
        r.add_get("/ws", self.ws, name="ws")
        r.add_get("/events", fa.long_lived(self.events), name="events")
        r.add_get("/feed", self.events, name="feed")  # long-lived by setup(long_lived=...)
        r.add_get("/poll", fa.long_lived(self.poll), name="poll")
        r.add_get("/quick", fa.long_lived(self.plain), name="quick")
        setup_kw.setdefault("long_lived", ("feed",))
        self.state = fa.setup(self.app, limiter=self.limiter, registry=self.registry, loop_lag=False, hook=hook, **setup_kw)

    async def plain(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def slow(self, request: web.Request) -> web.Response:
        await self.gate.wait()
        return web.Response(text="slow")

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
        return sock

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: hello\n\n")
        await self.gate.wait()
        await resp.write_eof()
        return resp

    async def poll(self, request: web.Request) -> web.Response:
        await self.gate.wait()  # a long-poll: nothing is sent until there is news
        return web.Response(text="news")

    def get(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture(params=["wrap", "middleware"])
def hook(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        await c.close()



async def answered(client: Client, n: int) -> int:
    ok = 0
    for _ in range(n):  # sequential, one at a time, as in the issue
        async with client.get("/plain") as r:
            ok += r.status == 200
    return ok


async def test_50_websockets_on_a_hot_cpu_do_not_change_what_plain_requests_get(hook: str, clients: list[Client]) -> None:
    env = SessionApp(hook)
    client = await start(env, clients)
    baseline = await answered(client, 40)
    before = len(env.algo.samples)  # the baseline's RTs: before any socket opened

    socks: list[aiohttp.ClientWebSocketResponse] = []
    opened_at = time.monotonic()
    try:
        for _ in range(50):  # each one is admitted on the hot CPU (nothing in flight), then released
            ws = await client.ws_connect("/ws")
            socks.append(ws)
            assert env.limiter.snapshot().inflight == 0
        assert len(env.algo.samples) == before  # a handshake is no RT sample (it would be BBR's min RT)
        await socks[0].send_str("hi")
        assert (await socks[0].receive_str()) == "echo:hi"
        assert env.get("flowctl_sessions_active", resource="ws") == 50
        assert env.get("flowctl_inflight", resource="ws") in (None, 0.0)
        assert await answered(client, 40) == baseline == 40

        # The admission decision still applies at a session's start: with the one slot held, it is shed.
        held = asyncio.ensure_future(client.get("/slow"))
        await wait_for(lambda: env.limiter.snapshot().inflight == 1)
        with pytest.raises(aiohttp.WSServerHandshakeError) as shed:
            await client.ws_connect("/ws")
        assert shed.value.status == 503
        env.gate.set()
        (await held).release()
    finally:
        env.gate.set()
        for ws in socks:
            await ws.close()
    held_open_s = time.monotonic() - opened_at
    await wait_for(lambda: env.get("flowctl_sessions_active", resource="ws") == 0)
    assert env.get("flowctl_session_duration_seconds_count", resource="ws") == 50
    assert env.limiter.snapshot().inflight == 0
    # The RT window saw neither handshakes nor whole sessions: only the 40 plain requests and the
    # slow one, each shorter than the time the first socket stayed open. The duration histogram
    # still has each handshake.
    assert env.get("flowctl_request_duration_seconds_count", resource="ws") == 50
    assert len(env.algo.samples) == before + 41
    assert max(env.algo.samples[before:]) < held_open_s


@pytest.mark.parametrize("path", ["/events", "/feed"], ids=["decorator", "setup-option"])
async def test_sse_route_is_released_at_its_headers(hook: str, clients: list[Client], path: str) -> None:
    env = SessionApp(hook)
    client = await start(env, clients)
    resource = path.strip("/")
    streams = []
    try:
        for _ in range(10):
            r = await client.get(path)
            streams.append(r)
            assert await r.content.readany() == b"data: hello\n\n"
            assert env.limiter.snapshot().inflight == 0
        assert env.get("flowctl_sessions_active", resource=resource) == 10
        assert env.get("flowctl_request_duration_seconds_count", resource=resource) == 10  # RT: to the headers
        assert env.algo.samples == []  # ... in the histogram, not in the RT window
        assert await answered(client, 10) == 10
        env.gate.set()
        for r in streams:
            await r.read()
    finally:
        env.gate.set()
        for r in streams:
            r.release()
    await wait_for(lambda: env.get("flowctl_sessions_active", resource=resource) == 0)
    assert env.get("flowctl_session_duration_seconds_count", resource=resource) == 10


async def test_long_poll_is_released_after_session_after_s_without_an_rt_sample(hook: str, clients: list[Client]) -> None:
    env = SessionApp(hook, session_after_s=0.05)
    client = await start(env, clients)
    polls = []
    try:
        for k in range(1, 4):  # one by one: each is admitted (nothing in flight), then becomes a session
            polls.append(asyncio.ensure_future(client.get("/poll")))
            await wait_for(lambda: env.get("flowctl_sessions_active", resource="poll") == k)
        assert env.limiter.snapshot().inflight == 0
        assert env.algo.samples == []  # released with ignore(): a long-poll's wait is no RT sample
        assert await answered(client, 5) == 5
    finally:
        env.gate.set()
        for p in polls:
            r = await p
            assert await r.text() == "news"
            r.release()
    await wait_for(lambda: env.get("flowctl_sessions_active", resource="poll") == 0)
    assert env.get("flowctl_session_duration_seconds_count", resource="poll") == 3


async def test_long_lived_route_answering_at_once_is_a_plain_request(hook: str, clients: list[Client]) -> None:
    env = SessionApp(hook)
    client = await start(env, clients)
    async with client.get("/quick") as r:
        assert r.status == 200 and await r.text() == "ok"
    assert env.get("flowctl_sessions_active", resource="quick") is None  # never a session
    assert env.get("flowctl_request_duration_seconds_count", resource="quick") == 1
    assert len(env.algo.samples) == 1 and env.limiter.snapshot().inflight == 0


async def test_plain_request_to_a_websocket_route_is_a_request(hook: str, clients: list[Client]) -> None:
    """No upgrade asked: the handler's handshake fails (400) and the admission ends as a request."""
    env = SessionApp(hook)
    client = await start(env, clients)
    async with client.get("/ws") as r:
        assert r.status == 400
    assert env.get("flowctl_sessions_active", resource="ws") is None
    assert env.limiter.snapshot().inflight == 0


def test_session_after_s_must_be_positive() -> None:
    from flowctl.errors import ConfigError

    with pytest.raises(ConfigError):
        SessionApp("wrap", session_after_s=0)
