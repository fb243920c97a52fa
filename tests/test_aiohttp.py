"""flowctl.aiohttp on a real app through the aiohttp test client: every outcome path.

The limiter is real (``flowctl.limiter.Limiter``) with a ``StaticSignal`` for
CPU and a small fixed or recording algorithm, so each test sets exactly the
state it needs; metrics are read back with ``registry.get_sample_value``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

import flowctl.aiohttp as fa
from flowctl.errors import ConfigError
from flowctl.limit.base import LimitStats
from flowctl.limiter import Limiter, PriorityClass
from flowctl.looplag import LoopLagMonitor
from flowctl.signal import StaticSignal
from flowctl.limiter import Policy
from flowctl.limiter.policy import limiter_kwargs


class RecordingLimit:
    """A fixed limit that records every sample the limiter feeds it."""

    name = "recording"

    def __init__(self, n: float) -> None:
        self.n = n
        self.samples: list[tuple[float, bool]] = []

    def max_inflight(self, now: float) -> float:
        return self.n

    def on_sample(self, now: float, rt_s: float, inflight: int, dropped: bool) -> None:
        self.samples.append((rt_s, dropped))

    def stats(self, now: float) -> LimitStats:
        return LimitStats(max_inflight=self.n)


class StepClock:
    """A fake clock that moves ``step_s`` forward on every read."""

    def __init__(self, step_s: float, now: float = 100.0) -> None:
        self.step_s = step_s
        self.now = now

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def burn(seconds: float) -> None:
    """CPU work that never awaits: blocks the event loop, like a sync handler."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Env:
    """An app with one route per outcome, its limiter, signal, algorithm and registry."""

    hook = "wrap"  # set per test by the autouse ``hook`` fixture: every Env test runs with both hooks

    def __init__(self, *, n: float = 1, hot: bool = False, **setup_kw: Any) -> None:
        self.signal = StaticSignal("container", utilization=0.95 if hot else 0.1, limit_cores=0.5)
        self.algo = RecordingLimit(n)
        self.registry = CollectorRegistry()
        self.gate = asyncio.Event()
        self.entered = 0
        limiter_kw = setup_kw.pop("limiter_kw", {})
        # integration tests: one hot reading is hot (the policy is tested in test_limiter*)
        limiter_kw = {"hot_samples": 1, "cool_fraction": 0.0, "cool_off_s": 0.0, **limiter_kw}
        self.limiter = Limiter(self.signal, self.algo, **limiter_kwargs(limiter_kw))
        self.app = web.Application()
        r = self.app.router
        r.add_get("/", self.hello, name="hello")
        r.add_get("/users/{id}", self.user)
        r.add_get("/boom", self.boom)
        r.add_get("/notfound", self.notfound)
        r.add_get("/redirect", self.redirect)
        r.add_get("/unavailable", self.unavailable)
        r.add_get("/bad-gateway", self.bad_gateway)
        r.add_get("/slow", self.slow, name="slow")
        r.add_get("/vip", fa.priority("critical")(self.vip), name="vip")
        r.add_get("/healthz", self.hello)
        r.add_get("/block", self.block, name="block")
        r.add_get("/yield", self.yielding, name="yielding")
        setup_kw.setdefault("loop_lag", False)
        setup_kw.setdefault("hook", self.hook)
        self.state = fa.setup(self.app, limiter=self.limiter, registry=self.registry, **setup_kw)

    async def hello(self, request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def user(self, request: web.Request) -> web.Response:
        return web.Response(text=request.match_info["id"])

    async def boom(self, request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    async def notfound(self, request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/")

    async def unavailable(self, request: web.Request) -> web.Response:
        raise web.HTTPServiceUnavailable()

    async def bad_gateway(self, request: web.Request) -> web.Response:
        return web.Response(status=502)

    async def slow(self, request: web.Request) -> web.Response:
        self.entered += 1
        await self.gate.wait()
        return web.Response(text="slow")

    async def vip(self, request: web.Request) -> web.Response:
        return web.Response(text="vip")

    async def block(self, request: web.Request) -> web.Response:
        burn(0.02)
        return web.Response(text="blocked")

    async def yielding(self, request: web.Request) -> web.Response:
        for _ in range(5):
            burn(0.001)
            await asyncio.sleep(0)
        return web.Response(text="yielded")

    def get(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def requests(self, resource: str, outcome: str, priority: str = "default") -> float | None:
        return self.get("flowctl_requests_total", resource=resource, priority=priority, outcome=outcome)


Client = TestClient[web.Request, web.Application]


@pytest.fixture(params=["wrap", "middleware"], autouse=True)
def hook(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with the route-wrapping hook (the default) and the aiohttp-middleware hook."""
    monkeypatch.setattr(Env, "hook", request.param)
    return str(request.param)


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Client]]:
    clients: list[Client] = []
    yield clients
    for c in clients:
        await c.close()


class HasApp(Protocol):
    @property
    def app(self) -> web.Application: ...


async def start(env: HasApp, cleanup: list[Client]) -> Client:
    client: Client = TestClient(TestServer(env.app))
    await client.start_server()
    cleanup.append(client)
    return client


async def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------- admitted paths


async def test_admitted_success_counts_and_times(cleanup: list[Client]) -> None:
    env = Env()
    client = await start(env, cleanup)
    assert env.get("flowctl_request_duration_seconds_count", resource="hello") == 0  # bound at start-up
    r = await client.get("/")
    assert r.status == 200 and await r.text() == "hello"
    assert env.requests("hello", "admitted") == 1
    assert env.get("flowctl_request_duration_seconds_count", resource="hello") == 1
    assert env.get("flowctl_inflight", resource="hello") == 0
    assert len(env.algo.samples) == 1 and env.algo.samples[0][1] is False


async def test_wrapped_routes_have_request_series_from_start_up(cleanup: list[Client], hook: str) -> None:
    """hook="wrap" resolves each route's limiter slot at start-up, so its request counters exist at 0
    before any request (rate() and absent() work from the first scrape); the middleware binds lazily."""
    env = Env()
    await start(env, cleanup)
    expect = 0.0 if hook == "wrap" else None
    assert env.requests("hello", "admitted") == expect
    assert env.requests("vip", "shed", priority="critical") == expect  # at the route's own priority
    assert env.requests("/healthz", "admitted") is None  # exempt: never wrapped, never counted


@pytest.mark.parametrize("path", ["/", "/notfound", "/bad-gateway", "/unavailable", "/boom"])
async def test_duration_is_the_tokens_rt(cleanup: list[Client], path: str) -> None:
    """The histogram records the RT the release returns: the limiter's two clock reads, no others."""
    env = Env(limiter_kw={"clock": StepClock(0.125)})  # acquire reads t, the release t + 0.125
    client = await start(env, cleanup)
    await client.get(path, allow_redirects=False)
    resource = "hello" if path == "/" else path
    assert env.get("flowctl_request_duration_seconds_count", resource=resource) == 1
    assert env.get("flowctl_request_duration_seconds_sum", resource=resource) == 0.125
    assert [rt_s for rt_s, _ in env.algo.samples] in ([], [0.125])


async def test_resource_is_the_route_pattern_not_the_url(cleanup: list[Client]) -> None:
    env = Env()
    client = await start(env, cleanup)
    for uid in ("1", "2", "abc"):
        assert (await client.get(f"/users/{uid}")).status == 200
    assert env.requests("/users/{id}", "admitted") == 3
    assert env.get("flowctl_request_duration_seconds_count", resource="/users/{id}") == 3
    assert env.requests("/users/1", "admitted") is None


async def test_unmatched_routes_share_one_resource(cleanup: list[Client]) -> None:
    env = Env(hook="middleware")
    client = await start(env, cleanup)
    for path in ("/nope", "/nope/2", "/x?y=1"):
        assert (await client.get(path)).status == 404
    assert (await client.post("/")).status == 405
    assert env.requests(fa.UNMATCHED_RESOURCE, "admitted", "sheddable") == 4
    assert len(env.state.durations._children) == len(set(env.state.durations._children))
    # 4xx counts as served: the samples reached the algorithm
    assert [d for _, d in env.algo.samples] == [False] * 4


async def test_wrap_hook_leaves_unmatched_requests_and_middlewares_alone(cleanup: list[Client]) -> None:
    """hook="wrap" installs no aiohttp middleware (aiohttp's middleware chain costs ~8% of a hello world)."""
    env = Env(hook="wrap")
    assert list(env.app.middlewares) == []
    client = await start(env, cleanup)
    assert (await client.get("/nope")).status == 404
    assert (await client.post("/")).status == 405
    assert env.requests(fa.UNMATCHED_RESOURCE, "admitted", "sheddable") is None
    assert env.get("flowctl_request_duration_seconds_count", resource=fa.UNMATCHED_RESOURCE) is None
    assert env.limiter.inflight == 0 and env.algo.samples == []
    routes = {r.resource.canonical: r for r in env.app.router.routes() if r.resource is not None}
    assert routes["/healthz"].handler == env.hello  # exempt: not wrapped
    vip = routes["/vip"].handler
    assert vip.__name__ == "vip" and getattr(vip, "__wrapped__", None) == env.vip
    assert (await client.get("/vip")).status == 200
    assert env.requests("vip", "admitted", "critical") == 1


async def test_exempt_path_reaching_a_dynamic_route_is_not_limited(cleanup: list[Client], hook: str) -> None:
    env = Env(hot=True, exempt_paths=("/users/healthz",))
    client = await start(env, cleanup)
    held = asyncio.ensure_future(client.get("/slow"))
    await wait_for(lambda: env.entered == 1)
    assert (await client.get("/users/1")).status == 503  # over the limit and hot
    assert (await client.get("/users/healthz")).status == 200
    env.gate.set()
    assert (await held).status == 200
    assert not env.requests("/users/{id}", "admitted")  # the exempt request was not counted


def test_bad_hook() -> None:
    with pytest.raises(ConfigError, match="hook"):
        fa.setup(web.Application(), hook="monkeypatch")


@pytest.mark.parametrize(
    ("path", "status", "sampled"),
    [
        ("/notfound", 404, True),  # raised 4xx: success
        ("/redirect", 302, True),  # raised 3xx: success
        ("/unavailable", 503, False),  # raised 5xx: ignore
        ("/bad-gateway", 502, False),  # returned 5xx: ignore
        ("/boom", 500, False),  # exception: ignore, re-raised (aiohttp answers 500)
    ],
)
async def test_outcome_of_http_exceptions_and_errors(
    cleanup: list[Client], path: str, status: int, sampled: bool
) -> None:
    env = Env()
    client = await start(env, cleanup)
    r = await client.get(path, allow_redirects=False)
    assert r.status == status
    resource = path
    assert env.requests(resource, "admitted") == 1
    assert env.get("flowctl_inflight", resource=resource) == 0
    assert env.limiter.inflight == 0
    assert (len(env.algo.samples) == 1) is sampled
    assert env.get("flowctl_request_duration_seconds_count", resource=resource) == 1


async def test_exception_is_reraised_to_outer_middleware(cleanup: list[Client]) -> None:
    seen: list[BaseException] = []

    @web.middleware
    async def outer(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except RuntimeError as exc:
            seen.append(exc)
            return web.Response(status=500, text="caught")

    env = Env()
    env.app.middlewares.insert(0, outer)
    client = await start(env, cleanup)
    r = await client.get("/boom")
    assert r.status == 500 and await r.text() == "caught"
    assert len(seen) == 1 and str(seen[0]) == "boom"


# ---------------------------------------------------------------- exemptions


async def test_exempt_paths_are_never_limited(cleanup: list[Client]) -> None:
    env = Env(hot=True)
    client = await start(env, cleanup)
    held = asyncio.ensure_future(client.get("/slow"))
    await wait_for(lambda: env.entered == 1)
    assert (await client.get("/")).status == 503  # over the limit and hot
    assert (await client.get("/healthz")).status == 200
    m = await client.get("/metrics")
    assert m.status == 200 and "flowctl_requests_total" in await m.text()
    assert env.requests("/healthz", "admitted") is None
    assert env.get("flowctl_request_duration_seconds_count", resource="flowctl_metrics") is None
    env.gate.set()
    assert (await held).status == 200


# ---------------------------------------------------------------- rejection


@pytest.mark.parametrize("status", [503, 429])
async def test_rejection_status_retry_after_and_json_reason(cleanup: list[Client], status: int) -> None:
    env = Env(hot=True, reject_status=status, reason_header="X-Flowctl-Reason")
    client = await start(env, cleanup)
    held = asyncio.ensure_future(client.get("/slow"))
    await wait_for(lambda: env.entered == 1)
    r = await client.get("/")
    assert r.status == status
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["X-Flowctl-Reason"] == "cpu"
    body = await r.json()
    assert body["error"] == "overloaded" and body["reason"] == "cpu" and body["retry_after_s"] > 0
    assert body["stage"] == "limit"
    assert env.requests("hello", "shed") == 1
    assert env.get("flowctl_shed_total", resource="hello", reason="cpu") == 1
    assert env.get("flowctl_request_duration_seconds_count", resource="hello") == 0  # shed: not timed
    assert env.get("flowctl_hot") == 1
    env.gate.set()
    assert (await held).status == 200
    assert env.limiter.inflight == 0


async def test_debug_limiter_names_the_stage_of_each_shed(cleanup: list[Client]) -> None:
    """``/debug/limiter`` (loopback only): snapshot, policy, CPU views and the last sheds, newest first."""
    env = Env(hot=True)
    client = await start(env, cleanup)
    held = asyncio.ensure_future(client.get("/slow"))
    await wait_for(lambda: env.entered == 1)
    assert (await client.get("/")).status == 503
    r = await client.get("/debug/limiter")
    assert r.status == 200
    body = await r.json()
    assert body["policy"]["cpu_threshold"] == 0.8 and body["limiter"]["inflight"] == 1
    assert "container" in body["cpu"]
    (shed,) = body["rejections"]
    assert (shed["path"], shed["trigger"], shed["stage"], shed["resource"]) == ("/", "cpu", "limit", "hello")
    env.gate.set()
    assert (await held).status == 200


async def test_no_reason_header_unless_configured(cleanup: list[Client]) -> None:
    env = Env(hot=True)
    client = await start(env, cleanup)
    held = asyncio.ensure_future(client.get("/slow"))
    await wait_for(lambda: env.entered == 1)
    r = await client.get("/")
    assert r.status == 503 and not any(h.lower().startswith("x-flowctl") for h in r.headers)
    env.gate.set()
    await held


async def test_cool_cpu_admits_over_the_limit(cleanup: list[Client]) -> None:
    env = Env(hot=False)
    client = await start(env, cleanup)
    held = asyncio.ensure_future(client.get("/slow"))
    await wait_for(lambda: env.entered == 1)
    assert (await client.get("/")).status == 200
    env.gate.set()
    await held


async def test_dry_run_admits_and_counts_would_shed(cleanup: list[Client]) -> None:
    env = Env(hot=True, limiter_kw={"dry_run": True})
    client = await start(env, cleanup)
    held = asyncio.ensure_future(client.get("/slow"))
    await wait_for(lambda: env.entered == 1)
    assert (await client.get("/")).status == 200
    assert env.requests("hello", "dry_run_shed") == 1
    assert env.requests("hello", "shed") == 0
    assert env.get("flowctl_dry_run") == 1
    env.gate.set()
    await held


# ---------------------------------------------------------------- priorities


async def test_route_priority_from_decorator_and_mapping(cleanup: list[Client]) -> None:
    env = Env(hot=True, priorities={"hello": "sheddable"})
    client = await start(env, cleanup)
    held = asyncio.ensure_future(client.get("/slow"))
    await wait_for(lambda: env.entered == 1)
    # FixedLimit 1: default and sheddable caps are 1, critical's is 2
    assert (await client.get("/vip")).status == 200
    assert env.requests("vip", "admitted", "critical") == 1
    assert (await client.get("/")).status == 503
    assert env.requests("hello", "shed", "sheddable") == 1
    env.gate.set()
    await held


async def test_default_priority_is_the_limiters_own(cleanup: list[Client]) -> None:
    env = Env(limiter_kw={"default_priority": "sheddable"})
    client = await start(env, cleanup)
    assert (await client.get("/")).status == 200
    assert env.requests("hello", "admitted", "sheddable") == 1
    assert env.requests("hello", "admitted", "default") is None


async def test_custom_priority_classes_come_from_the_limiter(cleanup: list[Client]) -> None:
    classes = {"gold": PriorityClass(share=1.0, trigger_scale=1.0), "bronze": PriorityClass(share=0.5, trigger_scale=1.0)}
    limiter = Limiter(StaticSignal(utilization=0.1), RecordingLimit(10), policy=Policy(default_priority="gold"), priorities=classes)
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    @fa.priority("bronze")
    async def batch(request: web.Request) -> web.Response:
        return web.Response(text="later")

    app.router.add_get("/", hello, name="hello")
    app.router.add_get("/batch", batch, name="batch")
    app.router.add_get("/report", hello, name="report")
    registry = CollectorRegistry()
    fa.setup(
        app,
        limiter=limiter,
        registry=registry,
        loop_lag=False,
        priorities={"report": "bronze"},
        trusted_priority_header="X-Priority",
        hook="middleware",  # so the unmatched request is counted too
    )
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    cleanup.append(client)
    assert (await client.get("/")).status == 200
    assert (await client.get("/batch")).status == 200
    assert (await client.get("/report")).status == 200
    assert (await client.get("/", headers={"X-Priority": " BRONZE "})).status == 200
    assert (await client.get("/", headers={"X-Priority": "critical"})).status == 200  # not a class here: ignored
    assert (await client.get("/nope")).status == 404  # unmatched: no "sheddable" class, the default

    def admitted(resource: str, prio: str) -> float | None:
        labels = {"resource": resource, "priority": prio, "outcome": "admitted"}
        return registry.get_sample_value("flowctl_requests_total", labels)

    assert (admitted("hello", "gold"), admitted("hello", "bronze")) == (2, 1)
    assert (admitted("batch", "bronze"), admitted("report", "bronze")) == (1, 1)
    assert admitted(fa.UNMATCHED_RESOURCE, "gold") == 1


async def test_untrusted_priority_header_is_ignored(cleanup: list[Client]) -> None:
    env = Env(hot=True)  # no trusted_priority_header
    client = await start(env, cleanup)
    held = asyncio.ensure_future(client.get("/slow"))
    await wait_for(lambda: env.entered == 1)
    for header in ("X-Priority", "X-Flowctl-Priority", "Priority"):
        r = await client.get("/", headers={header: "critical"})
        assert r.status == 503
    assert env.requests("hello", "shed", "default") == 3
    assert env.requests("hello", "admitted", "critical") is None
    env.gate.set()
    await held


async def test_trusted_priority_header_is_honoured(cleanup: list[Client]) -> None:
    env = Env(hot=True, trusted_priority_header="X-Priority")
    client = await start(env, cleanup)
    held = asyncio.ensure_future(client.get("/slow"))
    await wait_for(lambda: env.entered == 1)
    assert (await client.get("/", headers={"X-Priority": " Critical "})).status == 200
    assert (await client.get("/", headers={"X-Priority": "root"})).status == 503  # invalid: route's priority
    assert (await client.get("/vip", headers={"X-Priority": "sheddable"})).status == 503  # may demote too
    assert env.requests("hello", "admitted", "critical") == 1
    assert env.requests("hello", "shed", "default") == 1
    assert env.requests("vip", "shed", "sheddable") == 1
    env.gate.set()
    await held


async def test_a_handler_returning_no_response_is_released(cleanup: list[Client]) -> None:
    """A handler bug (returning None) fails the request with 500 and still releases its admission:
    the guard reads the status inside its try, so nothing is left in flight (there is no Token to
    fall back on)."""
    env = Env(n=100)

    async def broken(request: web.Request) -> web.Response:
        return None  # type: ignore[return-value]  # the bug under test

    env.app.router.add_get("/broken", broken, name="broken")
    client = await start(env, cleanup)
    for _ in range(3):
        assert (await client.get("/broken")).status == 500
    assert env.limiter.inflight == 0
    assert env.requests("broken", "admitted") == 3
    assert env.algo.samples == []  # released with ignore(): no RT sample
    assert env.get("flowctl_request_duration_seconds_count", resource="broken") == 3


# ---------------------------------------------------------------- cancellation


async def test_1000_aborted_requests_leave_inflight_at_zero(cleanup: list[Client]) -> None:
    env = Env(n=10_000)
    client = await start(env, cleanup)  # the test server cancels handlers on disconnect
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = str(client.make_url("/slow"))
        for batch in range(10):
            tasks = [asyncio.ensure_future(session.get(url)) for _ in range(100)]
            await wait_for(lambda: env.limiter.inflight == 100)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await wait_for(lambda: env.limiter.inflight == 0)
    assert env.entered == 1000
    assert env.requests("slow", "admitted") == 1000
    assert env.get("flowctl_inflight", resource="slow") == 0
    assert env.algo.samples == []  # cancelled: released with ignore(), no RT sample
    assert env.limiter.snapshot().tokens_leaked == 0


async def test_disconnect_without_handler_cancellation_releases_on_return() -> None:
    """aiohttp's default server lets the handler finish after a disconnect: the token goes then."""
    env = Env(n=10_000)
    runner = web.AppRunner(env.app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow")) for _ in range(20)]
            await wait_for(lambda: env.limiter.inflight == 20)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert env.limiter.inflight == 20  # handlers still running
        env.gate.set()
        await wait_for(lambda: env.limiter.inflight == 0)
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- the asyncio blind spot


async def test_blocking_handler_under_overload_is_shed_in_process(cleanup: list[Client]) -> None:
    """50 concurrent requests to a 20 ms handler that never awaits: in-flight stays ~1, lag sheds."""
    mon = LoopLagMonitor(threshold_s=0.02)
    env = Env(n=1000, hot=False, loop_lag=mon)  # BBR would never fire: CPU cool, limit 1000
    client = await start(env, cleanup)
    assert mon.running
    await asyncio.sleep(0.02)
    statuses = [r.status for r in await asyncio.gather(*(client.get("/block") for _ in range(50)))]
    shed = env.get("flowctl_shed_total", resource="block", reason="loop_lag")
    assert statuses.count(503) > 0 and shed == statuses.count(503)
    # A request was shed at a live lag >= 0.04 s (the default priority sheds at 2x the threshold):
    # the probe pending then runs at least that late, so its measured lag is a lower bound.
    await wait_for(lambda: mon.max_lag_s >= 0.04)
    await asyncio.sleep(0.01)  # longer than min_gap_s (5 ms) since the last probe ran
    mon.check(time.monotonic())  # what the next request does: queue a probe (it may also see the backlog)
    assert mon.pending
    burn(0.03)  # block the loop here: the probe cannot run
    lag = env.get("flowctl_event_loop_lag_seconds")
    assert lag is not None and lag >= 0.03  # the live lag, read without yielding
    await client.close()
    assert not mon.running  # cleanup_ctx stopped it


def _two_at_once(port: int | None, path: str) -> list[int]:
    """Two requests on two connections, sent together from this thread (not the server's loop,
    which a blocking handler stops): their status codes."""
    import socket

    assert port is not None
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for c in conns:
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return [int(c.makefile("rb").readline().split()[1]) for c in conns]
    finally:
        for c in conns:
            c.close()


@pytest.mark.skipif(not hasattr(__import__("socket"), "TCP_INFO"), reason="TCP_INFO is Linux-only")
async def test_a_request_that_waited_in_the_socket_is_shed_without_a_probe(cleanup: list[Client]) -> None:
    """The socket wait alone sheds: after the first probe no other is queued (``min_gap_s``), so
    the loop's lag is invisible, yet a request read after a 100 ms blocking handler has waited
    that long since its bytes arrived (``TCP_INFO``) and is shed by the lag stage."""
    mon = LoopLagMonitor(threshold_s=0.01, min_gap_s=1e9)
    app = web.Application()

    async def block(request: web.Request) -> web.Response:
        burn(0.1)
        return web.Response(text="blocked")

    app.router.add_get("/block", block)
    limiter = Limiter(StaticSignal("container", utilization=0.1, limit_cores=0.5))
    fa.setup(app, limiter=limiter, loop_lag=mon, metrics_path=None)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    cleanup.append(client)
    assert (await client.get("/block")).status == 200  # the one probe runs after this
    await wait_for(lambda: mon.probes == 1)
    await asyncio.sleep(0.15)  # past that probe's backlog (its 0.1 s lag counts for 0.1 s after it ran)
    statuses = sorted(await asyncio.to_thread(_two_at_once, client.port, "/block"))  # sent while the loop blocks
    assert statuses == [200, 503]
    assert mon.probes == 1  # no probe saw the second request's wait
    assert limiter.snapshot().shed_by_reason == {("/block", "loop_lag"): 1}


async def test_yielding_handler_under_overload_is_shed_by_the_limit(cleanup: list[Client]) -> None:
    env = Env(n=5, hot=True)
    client = await start(env, cleanup)
    statuses = [r.status for r in await asyncio.gather(*(client.get("/yield") for _ in range(50)))]
    assert statuses.count(503) > 0 and statuses.count(200) >= 5
    assert env.get("flowctl_shed_total", resource="yielding", reason="cpu") == statuses.count(503)


# ---------------------------------------------------------------- setup


async def test_setup_with_no_options_protects_with_container_signal(cleanup: list[Client]) -> None:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app.router.add_get("/", hello, name="hello")
    state = fa.setup(app)
    assert app[fa.FLOWCTL] is state
    assert state.limiter.signal.name == "container"
    assert state.loop_lag is not None and state.loop_lag in state.limiter.triggers
    assert state.limiter.algorithm.name == "bbr"
    sampler: Any = state.limiter.signal
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert sampler.running and state.loop_lag.running
        assert (await client.get("/")).status == 200
        text = await (await client.get("/metrics")).text()
        assert 'flowctl_requests_total{outcome="admitted",priority="default",resource="hello"} 1.0' in text
        assert "flowctl_event_loop_lag_seconds" in text
    finally:
        await client.close()
    assert not sampler.running and not state.loop_lag.running


async def test_setup_with_own_limiter_adds_and_runs_loop_lag(cleanup: list[Client]) -> None:
    limiter = Limiter(StaticSignal(utilization=0.1), RecordingLimit(10))
    app = web.Application()
    state = fa.setup(app, limiter=limiter, metrics_path=None)
    assert isinstance(state.loop_lag, LoopLagMonitor) and state.loop_lag in limiter.triggers
    # a second app reusing a limiter that already has a monitor reuses it
    app2 = web.Application()
    assert fa.setup(app2, limiter=limiter, metrics_path=None).loop_lag is state.loop_lag
    assert sum(isinstance(t, LoopLagMonitor) for t in limiter.triggers) == 1


@pytest.mark.parametrize(
    "kw",
    [
        {"reject_status": 500},
        {"default_priority": "vip"},
        {"unmatched_priority": "vip"},
        {"priorities": {"hello": "urgent"}},
        {"limiter_options": {"dry_run": True}},
    ],
)
def test_setup_rejects_bad_options(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        fa.setup(web.Application(), limiter=Limiter(StaticSignal()), **kw)


def test_setup_twice_and_bad_decorator() -> None:
    app = web.Application()
    fa.setup(app, limiter=Limiter(StaticSignal()), loop_lag=False)
    with pytest.raises(ConfigError):
        fa.setup(app, limiter=Limiter(StaticSignal()))
    with pytest.raises(ConfigError):
        fa.priority("")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    bad = web.Application()
    bad.router.add_get("/", fa.priority("urgent")(hello))  # not a class of the limiter
    with pytest.raises(ConfigError, match="urgent"):
        fa.setup(bad, limiter=Limiter(StaticSignal()), loop_lag=False)


async def test_bad_decorated_priority_added_after_setup_fails_start_up() -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    fa.setup(app, limiter=Limiter(StaticSignal()), loop_lag=False, metrics_path=None)
    app.router.add_get("/", fa.priority("urgent")(hello))
    client: Client = TestClient(TestServer(app))
    try:
        with pytest.raises(ConfigError, match="urgent"):
            await client.start_server()
    finally:
        await client.close()


async def test_compare_views_sample_and_export_the_host_view() -> None:
    app = web.Application()
    sig = StaticSignal("container", utilization=0.4)
    registry = CollectorRegistry()
    state = fa.setup(app, signal=sig, registry=registry, compare_views=("host",), loop_lag=False)
    host: Any = state.views["host"]
    assert state.views["container"] is sig and all(x is not cast(object, sig) for x in state.owned)  # the caller's signal: not ours to run
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert host.running
        await wait_for(lambda: host.reading.utilization is not None)
        assert registry.get_sample_value("flowctl_cpu_utilization_ratio", {"view": "host"}) is not None
        assert registry.get_sample_value("flowctl_cpu_utilization_ratio", {"view": "container"}) == 0.4
    finally:
        await client.close()
    assert not host.running
