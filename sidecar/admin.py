"""The admin listener (127.0.0.1 by default): /metrics, /healthz, /readyz, /debug/limiter.

- ``/healthz``: 200 while the process serves (liveness).
- ``/readyz``: 200 when the upstream answers the probe and we are not draining, else 503.
  While the watched cgroup cannot be read it stays 200 but says ``degraded`` and why:
  readiness decides whether the Pod gets traffic, and a sidecar that cannot read
  the app's CPU still proxies; failing it would turn a lost protection into an
  outage of every replica that shares the mistake (usually all of them). The loud
  parts are the ERROR log line, ``flowctl_signal_ok 0`` and ``/debug/limiter``.
- ``/metrics``: the flowctl metrics plus ``flowctl_upstream_ready``, ``flowctl_draining``,
  ``flowctl_signal_ok{view}`` and ``flowctl_sidecar_errors_total{status}``.
- ``/debug/limiter``: JSON with the limiter snapshot, every CPU view, the watch
  target and the last N rejections with their reasons.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Iterable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from prometheus_client import CollectorRegistry

from flowctl.http import metrics_page
from flowctl.limiter import Limiter
from flowctl.signal import CpuSignal
from sidecar.clients import ClientGuard
from sidecar.config import SidecarConfig
from sidecar.proxy import Proxy

__all__ = ["SIDECAR_KEY", "AdminView", "Probe", "SidecarCollector", "build_admin_app", "jsonable"]


class Probe(Protocol):
    """Readiness as ``/readyz`` reads it (``sidecar.probe.UpstreamProbe``, or the haproxy engine's)."""

    @property
    def ready(self) -> bool: ...
    @property
    def last_error(self) -> str | None: ...
    def describe(self) -> dict[str, object]: ...


class AdminView(Protocol):
    """What the admin endpoints and the collector read of the running sidecar (``sidecar.app.Sidecar``,
    ``sidecar.haproxy.engine.HaproxySidecar``)."""

    @property
    def config(self) -> SidecarConfig: ...
    @property
    def registry(self) -> CollectorRegistry: ...
    @property
    def limiter(self) -> Limiter | None: ...
    @property
    def signal(self) -> CpuSignal | None: ...
    @property
    def views(self) -> dict[str, CpuSignal]: ...
    @property
    def proxy(self) -> Proxy | None: ...
    @property
    def probe(self) -> Probe | None: ...
    @property
    def clients(self) -> ClientGuard: ...
    @property
    def draining(self) -> bool: ...
    def data_plane(self) -> dict[str, Any]:
        """The data plane's figures: ``engine``, ``inflight``, ``requests_total``, ``errors_total`` by status, ..."""
        ...


SIDECAR_KEY: web.AppKey[AdminView] = web.AppKey("flowctl_sidecar")


class SidecarCollector:
    """Sidecar-only state at scrape time: upstream readiness, draining, whether the watch reads, error counts."""

    def __init__(self, sidecar: AdminView) -> None:
        self._sc = sidecar

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families(live=True)

    def _families(self, live: bool = False) -> list[Metric]:
        ready = GaugeMetricFamily("flowctl_upstream_ready", "1 when the upstream answers the readiness probe.")
        draining = GaugeMetricFamily("flowctl_draining", "1 after SIGTERM while in-flight requests drain.")
        signal_ok = GaugeMetricFamily(
            "flowctl_signal_ok",
            "1 while the watched cgroup is read; 0 when it cannot be (the limiter then does not shed on CPU: "
            "see /debug/limiter watch.last_error).",
            labels=["view"],
        )
        errors = CounterMetricFamily(
            "flowctl_sidecar_errors",
            "Responses the sidecar made itself, by status (408 body too slow, 413 body too large, 429 over a quota, "
            "502, 503 shed or quota store down in mode closed, 504).",
            labels=["status"],
        )
        clients = GaugeMetricFamily("flowctl_sidecar_client_connections", "Client connections open now.")
        refused = CounterMetricFamily("flowctl_sidecar_client_connections_refused",
                                      "Client connections closed at once: max_clients were open.")
        bad = CounterMetricFamily("flowctl_sidecar_bad_requests", "Requests answered 400: they could not be parsed.")
        slow = CounterMetricFamily("flowctl_sidecar_client_timeouts", "Clients closed for a head (header_timeout) "
                                   "or a body (body_timeout) too slow.", labels=["kind"])
        if live:
            sc = self._sc
            guard = sc.clients
            clients.add_metric([], guard.open)
            refused.add_metric([], guard.refused_total)
            bad.add_metric([], guard.bad_requests_total)
            for kind in ("header", "body"):
                slow.add_metric([kind], guard.timeouts_total[kind])
            ready.add_metric([], 1.0 if sc.probe is not None and sc.probe.ready else 0.0)
            draining.add_metric([], 1.0 if sc.draining else 0.0)
            ok = _signal_ok(sc)
            if ok is not None:
                signal_ok.add_metric([str(getattr(sc.signal, "name", "container"))], 1.0 if ok else 0.0)
            counts = sc.data_plane().get("errors_total", {})
            for status in ("408", "413", "429", "502", "503", "504"):
                errors.add_metric([status], counts.get(status, 0))
        return [ready, draining, signal_ok, errors, clients, refused, bad, slow]


def _signal_ok(sc: AdminView) -> bool | None:
    """Whether the watched signal is being read (None for an injected signal that does not say)."""
    ok = getattr(sc.signal, "signal_ok", None)
    return ok if isinstance(ok, bool) else None


def jsonable(value: Any) -> Any:
    """Dataclasses, enums, tuple keys and non-finite floats made JSON-safe."""
    if hasattr(value, "as_dict") and callable(value.as_dict):
        return jsonable(value.as_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {("/".join(map(str, k)) if isinstance(k, tuple) else str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    sc = request.app[SIDECAR_KEY]
    if sc.draining:
        return web.Response(status=503, text="draining\n")
    if sc.probe is None or not sc.probe.ready:
        err = sc.probe.last_error if sc.probe is not None else "not started"
        return web.Response(status=503, text=f"upstream not ready: {err}\n")
    if _signal_ok(sc) is False:
        why = getattr(sc.signal, "last_error", None)
        return web.Response(text=f"ready, degraded: CPU signal unavailable ({why}); not shedding on CPU\n")
    return web.Response(text="ready\n")


async def _debug_limiter(request: web.Request) -> web.Response:
    sc = request.app[SIDECAR_KEY]
    limiter = sc.limiter
    body: dict[str, Any] = {
        "at_unix_s": time.time(),
        "draining": sc.draining,
        "upstream": sc.config.upstream,
        "probe": sc.probe.describe() if sc.probe is not None else None,
        "watch": sc.signal.describe() if sc.signal is not None and hasattr(sc.signal, "describe") else None,
        "limiter": jsonable(limiter.snapshot()) if limiter is not None and hasattr(limiter, "snapshot") else None,
        "cpu": {name: jsonable(sig.reading) for name, sig in sc.views.items()},
        "cpu_details": {
            name: jsonable(getattr(sig, "views", None) or getattr(getattr(sig, "sampler", None), "views", None))
            for name, sig in sc.views.items()
        },
        "proxy": sc.data_plane(),
        "rejections": sc.proxy.rejection_log() if sc.proxy is not None else [],
    }
    return web.json_response(jsonable(body), dumps=_dumps)


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)


def build_admin_app(sidecar: AdminView) -> web.Application:
    """The admin application; ``sidecar.registry`` backs /metrics."""
    app = web.Application()
    app[SIDECAR_KEY] = sidecar
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    registry = sidecar.registry

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = metrics_page(registry, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/limiter", _debug_limiter)
    return app
