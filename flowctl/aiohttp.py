"""aiohttp integration: one ``setup(app)`` call protects an application.

::

    from aiohttp import web
    import flowctl.aiohttp

    app = web.Application()
    app.router.add_get("/", hello)
    flowctl.aiohttp.setup(app)     # container CPU signal + BBR + loop-lag + /metrics
    web.run_app(app)

The middleware only translates (the Limiter decides):

- **resource**: the route's name, else its canonical pattern (``/users/{id}``),
  never the raw URL; requests that match no route (404/405) share the fixed
  resource ``__unmatched__``. Label cardinality is bounded by the router.
- **priority**: one of the limiter's classes (``limiter.priorities``: by
  default ``critical | default | sheddable``). From ``priorities``
  (resource -> priority), else from the handler's ``@priority(...)``
  decorator, else ``default_priority`` (None: the limiter's own default). The
  request header named by ``trusted_priority_header`` overrides it (a class
  name, case-insensitive; other values are ignored), and only when that
  option is set: otherwise no client input can change a priority. Names are
  checked against the limiter's classes by ``setup`` and at app start-up.
- **exempt paths** (default ``/healthz`` and ``/metrics``) bypass the limiter.
- **rejection**: ``reject_status`` (503, or 429) with ``Retry-After`` (whole
  seconds, at least 1) and a small JSON body
  ``{"error": "overloaded", "reason": <trigger>, "stage": <stage>, "retry_after_s": <float>}``;
  ``reason_header`` (e.g. ``"X-Flowctl-Reason"``) adds the trigger as a header.
- **timing**: RT runs from admission (``Limiter.admit``: the slot API, no
  Token object per request) to the handler's return, on the limiter's clock;
  the duration histogram records the RT the release returns (no extra clock
  reads). The outcome given back to the limiter:

  ====================================================  ==================
  handler returns / raises                               release
  ====================================================  ==================
  a response with status < 500 (2xx, 3xx, 4xx)           ``success()``
  ``web.HTTPException`` with status < 500 (e.g.          ``success()``
  ``HTTPFound``, ``HTTPNotFound``)
  a response or ``web.HTTPException`` with status >= 500 ``ignore()``
  any other exception (re-raised)                        ``ignore()``
  cancellation / client disconnect (re-raised)           ``ignore()``
  ====================================================  ==================

  4xx count as served: the handler did the route's work, and BBR's limit
  (max pass rate x min RT) stays consistent as long as both come from the
  same request mix. 5xx and exceptions are failures whose RT says nothing
  about capacity (fast fails would pull min RT down), so they only release.

- **requests and sessions**: a plain request holds its admission until the
  handler returns. A long-lived one holds it only until its response headers
  are sent, then it is a *session*:

  - a **WebSocket** (any route; the request asks for ``Connection: upgrade``)
    ends its admission when the handshake response is prepared;
  - a **long-lived route** (``@long_lived`` on the handler, or its resource in
    ``setup(long_lived=...)``: SSE, long-poll, large downloads) ends it when
    its response is prepared (``prepare()``: headers out);
  - either of them that has not sent headers ``session_after_s`` (1 s) after
    admission ends it then.

  A session's admission ends with ``ignore()``: no RT sample, no completion.
  Its start is not a request of the service's mix: a WebSocket handshake
  takes tens of microseconds, and as BBR's min RT it would take the limit and
  the ceiling's pipe down for the plain requests (a long-poll's wait, the
  other way, says nothing about capacity either).

  The admission decision still applies at the start (a shed session gets the
  same 503/429, at its route's priority). From then on the session counts in
  ``flowctl_sessions_active{resource}`` and, when the handler returns, its
  whole life (admission to return) in ``flowctl_session_duration_seconds``;
  never in ``flowctl_inflight`` or the limiter's RT window. A long-lived
  route whose handler returns before sending headers is a plain request. The
  per-request cost for plain requests is one attribute test (the upgrade flag
  aiohttp's parser already set).

- **quotas** (``quotas=[...]``, ``quota_store="redis://..."``; see ``flowctl.quota`` and
  docs/quota.md): after the limiter admits a request, the rules that match it
  debit its key (one Redis round trip, none for a key known to be over). Over a
  quota: 429 with ``Retry-After``, ``RateLimit-Policy`` / ``RateLimit`` and
  ``{"error": "quota", ...}``; the limiter's slot is released with ``ignore()``.

- **the asyncio blind spot**: a handler that blocks the loop hides the queue
  from the middleware (in-flight stays 1). A ``LoopLagMonitor`` trigger with
  ``bypass_inflight=True`` sheds requests that reach the middleware after the
  loop has been late for ``loop_lag_threshold_s``, or that waited that long
  since their bytes reached the socket (``TCP_INFO``, read per request; see
  ``flowctl.looplag``).

State lives under the ``web.AppKey`` ``FLOWCTL``; the CPU sampler(s) and the
loop-lag monitor are started and stopped by a ``cleanup_ctx`` entry. ``setup``
starts and stops only what it creates: pass your own ``limiter`` (or
``signal``) and you own its lifetime.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute, PlainResource
from prometheus_client import CollectorRegistry

from flowctl.errors import ConfigError
from flowctl.http import metrics_page, rejection_bytes
from flowctl.looplag import DEFAULT_THRESHOLD_S, LoopLagMonitor, socket_wait_s
from flowctl.metrics import (
    DURATION_BUCKETS_S,
    DurationHistogram,
    FlowctlCollector,
    MultiprocessPublisher,
    RequestDurations,
    SessionMetrics,
    multiprocess_dir,
)
from flowctl.signal import CpuSignal

if TYPE_CHECKING:
    from flowctl.limiter import Limiter, Rejection
    from flowctl.quota import QuotaRejection, QuotaRule, Quotas

__all__ = [
    "FLOWCTL",
    "UNMATCHED_RESOURCE",
    "Flowctl",
    "long_lived",
    "metrics_handler",
    "multiprocess_metrics_handler",
    "priority",
    "quota_response",
    "rejection_response",
    "setup",
]

UNMATCHED_RESOURCE = "__unmatched__"
_PRIORITY_ATTR = "__flowctl_priority__"
_GUARD_ATTR = "__flowctl_guard__"
_LONG_LIVED_ATTR = "__flowctl_long_lived__"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_F = TypeVar("_F")
#: per route: resource label, priority (None: the default), histogram child, whether to check exempt
#: paths, whether the route is long-lived (its admission ends at its response headers)
_Entry = tuple[str, "str | None", DurationHistogram, bool, bool]


class _Lifetime(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(eq=False)
class Flowctl:
    """What ``setup`` installed on an app (``app[FLOWCTL]``)."""

    limiter: Limiter
    registry: CollectorRegistry
    collector: FlowctlCollector
    durations: RequestDurations
    sessions: SessionMetrics
    loop_lag: LoopLagMonitor | None
    views: dict[str, CpuSignal]
    exempt_paths: frozenset[str]
    reject_status: int
    #: "wrap" (route handlers are wrapped at start-up) or "middleware"
    hook: str = "wrap"
    guard: Callable[[_Handler, _Entry], _Handler] | None = None
    entries: _RouteEntries | None = None
    #: things setup created and therefore starts and stops (samplers, the lag monitor)
    owned: list[_Lifetime] = field(default_factory=list)
    #: multiprocess mode (PROMETHEUS_MULTIPROC_DIR): publishes this worker's state for /metrics
    publisher: MultiprocessPublisher | None = None
    #: the last sheds, newest last: (unix time, method, path, Reason), for /debug/limiter
    rejections: collections.deque[tuple[float, str, str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=REJECTIONS_KEPT))
    #: quotas across replicas (``setup(quotas=...)``), checked after admission
    quotas: Quotas | None = None


FLOWCTL = web.AppKey("flowctl", Flowctl)
REJECTIONS_KEPT = 100
"""How many recent sheds ``/debug/limiter`` lists."""
_LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def debug_handler(state: Flowctl) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``/debug/limiter``: the limiter's snapshot and policy, every CPU view, the last sheds with the
    stage that shed each; answered to loopback clients only (404 to others)."""
    from dataclasses import asdict

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.remote not in _LOOPBACK:
            raise web.HTTPNotFound()
        limiter = state.limiter
        views = {limiter.signal.name: limiter.signal, **state.views}
        details = {}
        for name, sig in views.items():
            describe = getattr(sig, "details", None)
            details[name] = describe() if callable(describe) else None
        body = {
            "at_unix_s": time.time(),
            "limiter": limiter.snapshot().as_dict(),
            "policy": asdict(limiter.policy),
            "cpu": {name: asdict(sig.reading) for name, sig in views.items()},
            "cpu_details": details,
            "rejections": [{"at_unix_s": at, "method": method, "path": path, **reason.as_dict()}
                           for at, method, path, reason in reversed(state.rejections)],
        }  # fmt: skip
        return web.json_response(body, dumps=lambda o: json.dumps(o, indent=2, default=str))

    return handle


def priority(name: str) -> Callable[[_F], _F]:
    """Decorator giving a handler (function or ``web.View`` class) a fixed priority.

    ``name`` must be one of the limiter's classes: ``setup`` (for routes already
    added) and the app's start-up raise ``ConfigError`` otherwise.
    """
    if not (isinstance(name, str) and name):
        raise ConfigError(f"priority must be a class name, got {name!r}")

    def mark(handler: _F) -> _F:
        setattr(getattr(handler, "__func__", handler), _PRIORITY_ATTR, name)  # bound method: its function
        return handler

    return mark


def long_lived(handler: _F) -> _F:
    """Decorator marking a handler (function or ``web.View`` class) as long-lived: SSE, long-poll,
    large downloads. Its admission ends when its response headers are sent (or ``session_after_s``
    after admission); the rest of its life is a session (see the module docstring)."""
    setattr(getattr(handler, "__func__", handler), _LONG_LIVED_ATTR, True)
    return handler


def rejection_response(decision: Rejection, *, status: int = 503, reason_header: str | None = None) -> web.Response:
    """The shed response: ``status`` with ``Retry-After`` (whole seconds, at least 1) and the JSON body
    ``{"error": "overloaded", "reason": <trigger>, "stage": <stage>, "retry_after_s": <float>}``; with ``reason_header``
    the trigger is also sent in that header (``flowctl.http.rejection_parts``; the body encoded by
    ``flowctl.http.rejection_bytes``, the same bytes as ``web.json_response`` of those parts)."""
    headers, body = rejection_bytes(decision, reason_header=reason_header)
    return web.Response(body=body, status=status, headers=headers)


def quota_response(rejection: QuotaRejection) -> web.Response:
    """The answer to a request refused by a quota (429) or by a store down in mode closed (503)."""
    from flowctl.quota import quota_parts

    status, headers, body = quota_parts(rejection)
    return web.json_response(body, status=status, headers=headers)


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler serving ``registry`` in the text format the scraper asks for."""

    async def handle_metrics(request: web.Request) -> web.Response:
        body, content_type = metrics_page(registry, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle_metrics


def multiprocess_metrics_handler(publisher: MultiprocessPublisher) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp ``/metrics`` handler serving every worker's metrics (this one's published first)."""
    from prometheus_client import multiprocess

    async def handle_metrics(request: web.Request) -> web.Response:
        publisher.publish()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body, content_type = metrics_page(registry, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle_metrics


def setup(
    app: web.Application,
    *,
    limiter: Limiter | None = None,
    signal: CpuSignal | None = None,
    view: str = "container",
    registry: CollectorRegistry | None = None,
    metrics_path: str | None = "/metrics",
    debug_path: str | None = "/debug/limiter",
    exempt_paths: Iterable[str] = ("/healthz", "/metrics"),
    reject_status: int = 503,
    reason_header: str | None = None,
    trusted_priority_header: str | None = None,
    priorities: Mapping[str, str] | None = None,
    default_priority: str | None = None,
    unmatched_priority: str | None = None,
    loop_lag: LoopLagMonitor | bool = True,
    loop_lag_threshold_s: float = DEFAULT_THRESHOLD_S,
    compare_views: Iterable[str] = (),
    duration_buckets: Sequence[float] = DURATION_BUCKETS_S,
    limiter_options: Mapping[str, Any] | None = None,
    hook: str = "wrap",
    long_lived: Iterable[str] = (),
    session_after_s: float | None = 1.0,
    multiprocess: bool | None = None,
    quotas: Iterable[str | QuotaRule] | Quotas = (),
    quota_store: str | None = None,
    quota_on_error: str = "local",
    quota_replicas: int | None = None,
    quota_timeout_s: float = 0.02,
) -> Flowctl:
    """Install the flowctl middleware, metrics and lifetimes on ``app``; return its state.

    With no options: the container CPU signal (``flowctl.cpu.make_signal``),
    the default BBR limiter, a loop-lag trigger and ``/metrics`` on a fresh
    registry. ``limiter``: use this limiter (``signal``, ``view`` and
    ``limiter_options`` must then be left out); with ``loop_lag=True`` the
    ``LoopLagMonitor`` already among its triggers is reused, else one is added
    to it with ``limiter.add_trigger``. The monitor measures with
    ``time.monotonic``: the limiter's clock must be the same. A monitor is
    always run by the app (one that is not started never queues probes, so never fires). ``registry``:
    where metrics go (a new ``CollectorRegistry`` if None; never the global
    one). ``metrics_path=None`` adds no route. ``debug_path`` (default ``/debug/limiter``,
    loopback clients only) serves the limiter's state and its last sheds; None adds no route. Priorities (``priorities``
    values, ``default_priority``, ``unmatched_priority``, ``@priority``) must
    be classes of the limiter (``limiter.priorities``); ``default_priority``
    None is the limiter's ``default_priority``, ``unmatched_priority`` None is
    ``"sheddable"`` when the limiter has that class, else its default.
    ``long_lived``: resources (route names or patterns) whose requests are
    sessions, like ``@long_lived`` handlers; ``session_after_s``: a session
    that has not sent headers by then ends its admission anyway (None: only
    at its headers). ``multiprocess``: export through prometheus_client's
    multiprocess mode (several worker processes, e.g. gunicorn; see
    ``flowctl.metrics.MultiprocessPublisher``); None: when
    ``PROMETHEUS_MULTIPROC_DIR`` is set. ``/metrics`` then serves every
    worker's metrics merged; ``registry`` still holds this worker's live
    collectors. ``quotas``: quota rules (texts like
    ``"key=header:X-Tenant,rate=100/s,burst=20"`` or ``QuotaRule``s), or a ready
    ``flowctl.quota.Quotas`` (then the ``quota_*`` options must be left out);
    ``quota_store``: the Redis URL they are shared through (None: each process
    enforces them alone); ``quota_on_error``: ``local`` | ``open`` | ``closed``
    while the store cannot answer; ``quota_replicas``: what ``local`` divides by
    (None: counted from the store's heartbeats); ``quota_timeout_s``: bound of
    one store call. Raises ``ConfigError`` for invalid options.
    """
    if hook not in ("wrap", "middleware"):
        raise ConfigError(f"hook must be 'wrap' or 'middleware', got {hook!r}")
    if reject_status not in (429, 503):
        raise ConfigError(f"reject_status must be 503 or 429, got {reject_status!r}")
    if limiter is not None and (limiter_options or signal is not None):
        raise ConfigError("pass either limiter= or signal=/limiter_options=, not both")
    if FLOWCTL in app:
        raise ConfigError("flowctl.aiohttp.setup was already called on this app")
    if session_after_s is not None and not (isinstance(session_after_s, (int, float)) and session_after_s > 0):
        raise ConfigError(f"session_after_s must be a positive number of seconds or None, got {session_after_s!r}")
    long_lived_resources = frozenset([long_lived] if isinstance(long_lived, str) else long_lived)

    owned: list[_Lifetime] = []
    views: dict[str, CpuSignal] = {}
    own_signal: CpuSignal | None = None
    if limiter is None:
        from flowctl.limiter import Limiter

        if signal is None:
            signal = own_signal = _make_signal(view)
        from flowctl.limiter.policy import limiter_kwargs

        limiter = Limiter(signal, **limiter_kwargs(limiter_options or {}))
    classes = limiter.priorities
    if unmatched_priority is None:
        unmatched_priority = "sheddable" if "sheddable" in classes else limiter.default_priority
    for key, value in (("default_priority", default_priority), ("unmatched_priority", unmatched_priority)):
        if value is not None and value not in classes:
            raise ConfigError(f"{key} must be one of the limiter's priorities {classes}, got {value!r}")
    route_priorities = dict(priorities or {})
    for res, p in route_priorities.items():
        if p not in classes:
            raise ConfigError(f"priorities[{res!r}] must be one of the limiter's priorities {classes}, got {p!r}")
    _check_handler_priorities(app, classes)

    monitor: LoopLagMonitor | None = None
    if isinstance(loop_lag, LoopLagMonitor):
        monitor = loop_lag
    elif loop_lag:
        if limiter is not None:  # reuse a monitor the caller already gave their limiter
            monitor = next((t for t in limiter.triggers if isinstance(t, LoopLagMonitor)), None)
        if monitor is None:
            monitor = LoopLagMonitor(threshold_s=loop_lag_threshold_s)
    if monitor is not None:
        owned.append(monitor)  # a monitor that is not started never fires: setup always runs it
    if own_signal is not None:
        owned.append(own_signal)  # type: ignore[arg-type]  # a Sampler has start/stop
    if monitor is not None and not any(t is monitor for t in limiter.triggers):
        limiter.add_trigger(monitor)
    if signal is not None:
        views[signal.name] = signal
    for name in compare_views:
        if name not in views:
            extra = _make_signal(name, fallback=False)  # a comparison shows its own view or nothing
            views[name] = extra
            owned.append(extra)  # type: ignore[arg-type]

    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    collector = FlowctlCollector(limiter, views=views, loop_lag=monitor)
    registry.register(collector)
    quota_state = _make_quotas(quotas, quota_store, quota_on_error, quota_replicas, quota_timeout_s, classes)
    if quota_state is not None:
        from flowctl.quota import QuotaCollector

        registry.register(QuotaCollector(quota_state))
        owned.append(quota_state)
    durations = RequestDurations(registry, buckets=duration_buckets)
    sessions = SessionMetrics(registry)
    publisher: MultiprocessPublisher | None = None
    if multiprocess or (multiprocess is None and multiprocess_dir() is not None):
        publisher = MultiprocessPublisher(limiter, durations=durations, sessions=sessions, views=views, loop_lag=monitor)
        owned.append(publisher)

    exempt = set(exempt_paths)
    if debug_path is not None:
        exempt.add(debug_path)
    if metrics_path is not None:
        exempt.add(metrics_path)
        handle_metrics = metrics_handler(registry) if publisher is None else multiprocess_metrics_handler(publisher)
        app.router.add_get(metrics_path, handle_metrics, name="flowctl_metrics")

    state = Flowctl(
        limiter=limiter,
        registry=registry,
        collector=collector,
        durations=durations,
        sessions=sessions,
        loop_lag=monitor,
        views=views,
        exempt_paths=frozenset(exempt),
        reject_status=reject_status,
        hook=hook,
        owned=owned,
        publisher=publisher,
        quotas=quota_state,
    )
    if debug_path is not None:
        app.router.add_get(debug_path, debug_handler(state), name="flowctl_debug_limiter")
    state.guard = _make_guard(
        state, trusted_priority_header=trusted_priority_header, reason_header=reason_header, session_after_s=session_after_s
    )
    state.entries = _RouteEntries(
        state,
        route_priorities=route_priorities,
        default_priority=default_priority,
        unmatched_priority=unmatched_priority,
        long_lived=long_lived_resources,
    )
    app[FLOWCTL] = state
    if hook == "middleware":
        app.middlewares.append(_middleware(state))
    app.cleanup_ctx.append(_lifetime)
    return state


def _make_quotas(
    quotas: Iterable[str | QuotaRule] | Quotas,
    store: str | None,
    on_error: str,
    replicas: int | None,
    timeout_s: float,
    classes: Sequence[str],
) -> Quotas | None:
    """setup's quotas: None without rules; a ready ``Quotas`` as given; rules checked against ``classes``."""
    from flowctl.quota import Quotas, make_quotas

    if isinstance(quotas, Quotas):
        if store is not None or on_error != "local" or replicas is not None or timeout_s != 0.02:
            raise ConfigError("pass either a Quotas object or quota rules with quota_* options, not both")
        made = quotas
    else:
        rules = [quotas] if isinstance(quotas, str) else list(quotas)
        if not rules:
            if store is not None:
                raise ConfigError("quota_store given without quotas=[...] rules")
            return None
        made = make_quotas(rules, store_url=store, on_error=on_error, replicas=replicas, timeout_s=timeout_s)
    made.check_priorities(classes)
    return made


def _make_signal(view: str, *, fallback: bool = True) -> CpuSignal:
    from flowctl.cpu import make_signal

    sig: CpuSignal = make_signal(view, fallback=fallback)
    return sig


def _check_handler_priorities(app: web.Application, classes: Sequence[str]) -> None:
    """Every ``@priority`` on the app's routes names one of the limiter's classes, else ConfigError."""
    for route in app.router.routes():
        p = getattr(route.handler, _PRIORITY_ATTR, None)
        if p is not None and p not in classes:
            res = route.resource
            where = (res.name or res.canonical) if res is not None else repr(route)
            raise ConfigError(f"@priority({p!r}) on {where} is not one of the limiter's priorities {tuple(classes)}")


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: check route priorities, start what setup created, bind histogram children, stop on cleanup."""
    state = app[FLOWCTL]
    _check_handler_priorities(app, state.limiter.priorities)  # routes added after setup
    started: list[_Lifetime] = []
    try:
        for thing in state.owned:
            await thing.start()
            started.append(thing)
        if state.hook == "wrap":
            _wrap_routes(app)
        state.durations.bind(_route_resources(app, state.exempt_paths, unmatched=state.hook == "middleware"))
        yield
    finally:
        for thing in reversed(started):
            with contextlib.suppress(Exception):
                await thing.stop()


def _route_resources(app: web.Application, exempt: frozenset[str], *, unmatched: bool) -> list[str]:
    """Resource labels of the app's (non-exempt) routes, plus the unmatched one if ``unmatched``."""
    names = [UNMATCHED_RESOURCE] if unmatched else []
    for route in app.router.routes():
        res = route.resource
        if res is not None and res.canonical not in exempt:
            names.append(res.name or res.canonical)
    return names


def _make_guard(
    state: Flowctl,
    *,
    trusted_priority_header: str | None,
    reason_header: str | None,
    session_after_s: float | None = 1.0,
) -> Callable[[_Handler, _Entry], _Handler]:
    """``guard(handler, entry)``: ``handler`` behind the limiter, as one coroutine function.

    All per-request work happens in that one function (locals, no helper calls
    beyond the limiter's slot API: ``admit`` and one release; ``slot`` too when
    a trusted priority header names another class; with a loop-lag monitor, the
    request's socket wait, ``socket_wait_s`` and ``request_wait``): a request
    costs one extra coroutine frame. ``entry`` is the route's (resource, priority,
    histogram child, whether an exempt path can still reach it, long-lived).
    Sessions (a WebSocket upgrade, a long-lived route) go to ``serve_session``
    after admission; a plain request pays one attribute test for that.
    """
    from flowctl.limiter import Rejection  # noqa: F811  (at run time: the guard compares classes)

    limiter = state.limiter
    # admit() returns float | Rejection; typed Any here so that no typing.cast() call (a Python
    # function call at run time) is needed per request after the class check.
    admit: Callable[[Any], Any] = limiter.admit
    success, ignore, slot_of = limiter.success, limiter.ignore, limiter.slot
    exempt = state.exempt_paths
    reject_status = state.reject_status
    header = trusted_priority_header
    priority_by_text = {name.lower(): name for name in state.limiter.priorities}
    HTTPException = web.HTTPException
    CancelledError = asyncio.CancelledError
    sessions = state.sessions
    recent = state.rejections
    quotas = state.quotas
    request_wait = state.loop_lag.request_wait if state.loop_lag is not None else None
    default_priority = limiter.default_priority

    async def serve_session(
        handler: _Handler, request: web.Request, slot: Any, start: float, resource: str, observer: DurationHistogram
    ) -> web.StreamResponse:
        """Run a long-lived request: its admission ends at its response headers (or after
        ``session_after_s``); from then on it is a session in ``state.sessions``."""
        began_s = time.monotonic()
        held = True

        def to_session(served: bool) -> None:
            nonlocal held
            if held:
                held = False
                # A session's start (a handshake, headers out) is not a request of the service's mix:
                # its RT (tens of microseconds for a WebSocket) would be BBR's min RT and its burst
                # the best pass rate, so the limiter learns nothing from it (no RT, no completion).
                rt_s = ignore(slot, start)
                if served:
                    observer.observe(rt_s)
                sessions.begin(resource)

        hook = request._prepare_hook

        async def prepare_hook(response: web.StreamResponse) -> None:  # headers about to go out
            to_session(response.status < 500)
            await hook(response)

        # aiohttp calls request._prepare_hook(response) in StreamResponse.prepare (3.9-3.14): this
        # request only; plain requests never reach here. object.__setattr__: no DEBUG-mode warning.
        object.__setattr__(request, "_prepare_hook", prepare_hook)
        timer = None
        if session_after_s is not None:
            timer = asyncio.get_running_loop().call_later(session_after_s, to_session, False)
        served = False
        try:
            response = await handler(request)
            served = response.status < 500
            return response
        except HTTPException as exc:
            served = exc.status < 500
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if held:  # no headers sent while it ran: it was a plain request after all
                held = False
                observer.observe(success(slot, start) if served else ignore(slot, start))
            else:
                sessions.end(resource, time.monotonic() - began_s)

    def guard(handler: _Handler, entry: _Entry) -> _Handler:
        resource, prio, observer, check_path, is_long_lived = entry
        counts, bounds = observer.counts, observer.bounds
        route_slot = slot_of(resource, prio)  # resolved once: no (resource, priority) lookup per request
        route_priority = prio or default_priority

        async def flowctl_guarded(request: web.Request) -> web.StreamResponse:
            if check_path and request.path in exempt:
                return await handler(request)
            slot = route_slot
            priority_name = route_priority
            if header is not None:
                raw = request.headers.get(header)
                if raw is not None:
                    named = priority_by_text.get(raw.strip().lower(), prio)
                    slot = slot_of(resource, named)
                    priority_name = named or default_priority
            # The slot API, not acquire(): no Token object per request. Every path below releases
            # exactly once. The histogram records the RT the release returns (no clock read here).
            if request_wait is not None:  # how long its bytes waited in the socket and the loop
                transport = request.transport
                sock = transport.get_extra_info("socket") if transport is not None else None
                waited = socket_wait_s(sock) if sock is not None else None
                request_wait(0.0 if waited is None else waited)
            start = admit(slot)
            if start.__class__ is Rejection:
                recent.append((time.time(), request.method, request.path, start.reason))
                return rejection_response(start, status=reject_status, reason_header=reason_header)
            if quotas is not None:  # only an admitted request is debited
                matched = quotas.match(request.headers.get, request.path, priority_name)
                if matched:
                    try:
                        refused = await quotas.debit(matched)
                    except BaseException:
                        ignore(slot, start)
                        raise
                    if refused is not None:
                        ignore(slot, start)
                        return quota_response(refused)
            if is_long_lived or request._message.upgrade:  # a WebSocket handshake, or a long-lived route
                return await serve_session(handler, request, slot, start, resource, observer)
            try:
                response = await handler(request)
                served = response.status < 500  # in here: a handler that returns a non-response is released too
            except HTTPException as exc:
                observer.observe(success(slot, start) if exc.status < 500 else ignore(slot, start))
                raise
            except CancelledError:
                ignore(slot, start)
                raise
            except BaseException:
                observer.observe(ignore(slot, start))
                raise
            rt_s = success(slot, start) if served else ignore(slot, start)
            counts[bisect_left(bounds, rt_s)] += 1  # observer.observe(rt_s), written out: one frame fewer
            observer.sum_s += rt_s
            return response

        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(flowctl_guarded, attr, getattr(handler, attr))
        flowctl_guarded.__wrapped__ = handler  # type: ignore[attr-defined]
        marked = getattr(handler, _PRIORITY_ATTR, None)
        if marked is not None:
            setattr(flowctl_guarded, _PRIORITY_ATTR, marked)
        if getattr(handler, _LONG_LIVED_ATTR, False):
            setattr(flowctl_guarded, _LONG_LIVED_ATTR, True)
        setattr(flowctl_guarded, _GUARD_ATTR, state)
        return flowctl_guarded

    return guard


class _RouteEntries:
    """The per-route ``_Entry`` (None for an exempt route), cached by route."""

    def __init__(
        self,
        state: Flowctl,
        *,
        route_priorities: Mapping[str, str],
        default_priority: str | None,
        unmatched_priority: str,
        long_lived: frozenset[str] = frozenset(),
    ) -> None:
        self._state = state
        self._long_lived = long_lived
        self._route_priorities = route_priorities
        self._default_priority = default_priority
        self._unmatched_priority = unmatched_priority
        self._unmatched: _Entry | None = None

    @property
    def unmatched(self) -> _Entry:
        """The entry shared by requests that match no route (bound on first use: middleware hook only)."""
        if self._unmatched is None:
            durations = self._state.durations
            self._unmatched = (UNMATCHED_RESOURCE, self._unmatched_priority, durations.child(UNMATCHED_RESOURCE), True, False)
        return self._unmatched

    def entry(self, route: AbstractRoute, handler: Any = None) -> _Entry | None:
        """The route's entry; None when its path is exempt (a fixed path in ``exempt_paths``)."""
        res = route.resource
        if res is None:  # a SystemRoute: no route matched (404/405), created per request
            return self.unmatched
        exempt = self._state.exempt_paths
        fixed = isinstance(res, PlainResource)
        if fixed and res.canonical in exempt:
            return None
        resource = res.name or res.canonical
        handler = route.handler if handler is None else handler
        prio = self._route_priorities.get(resource) or getattr(handler, _PRIORITY_ATTR, None) or self._default_priority
        lived = resource in self._long_lived or bool(getattr(handler, _LONG_LIVED_ATTR, False))
        return (resource, prio, self._state.durations.child(resource), not fixed and bool(exempt), lived)


def _wrap_routes(app: web.Application) -> None:
    """``hook="wrap"``: put every (non-exempt) route handler of ``app`` behind the guard.

    Replaces the route's handler attribute (``_handler``: aiohttp has no public
    setter) before the first request; a handler already guarded by this app's
    state is left alone. Runs at app start-up, when the routes are final.
    """
    state = app[FLOWCTL]
    assert state.guard is not None and state.entries is not None
    for route in app.router.routes():
        handler = route.handler
        if getattr(handler, _GUARD_ATTR, None) is state:
            continue
        if not hasattr(route, "_handler"):
            raise ConfigError(
                f"flowctl cannot wrap route {route!r} (no handler attribute in this aiohttp version): "
                "use flowctl.aiohttp.setup(app, hook='middleware')"
            )
        entry = state.entries.entry(route, handler)
        if entry is None:
            continue
        setattr(route, "_handler", state.guard(handler, entry))  # noqa: B010 - aiohttp has no public setter


def _middleware(state: Flowctl) -> Any:
    """``hook="middleware"``: an aiohttp middleware around the guard (also sees unmatched requests)."""
    guard = state.guard
    entries = state.entries
    assert guard is not None and entries is not None
    cached: dict[AbstractRoute, tuple[Any, _Handler | None]] = {}

    @web.middleware
    async def flowctl_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        route = request.match_info.route
        hit = cached.get(route)
        if hit is not None and hit[0] is handler:
            guarded = hit[1]
        else:
            entry = entries.entry(route)
            guarded = None if entry is None else guard(handler, entry)
            if entry is not entries.unmatched:  # SystemRoutes are made per request: not cached
                cached[route] = (handler, guarded)
        if guarded is None:
            return await handler(request)
        return await guarded(request)

    return flowctl_middleware
