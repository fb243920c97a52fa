"""Wiring and lifetime: signal -> limiter -> proxy listener, plus the admin listener.

``Sidecar(config)`` builds nothing at construction; ``await start()`` creates
the CPU watch, the limiter, the metrics registry, the proxy (one upstream
ClientSession) and both listeners. ``await drain()`` is the SIGTERM path:
``/readyz`` turns 503, the proxy's listening socket closes (new connections
are refused), keep-alive connections close after their current request, and
in-flight requests get up to ``drain_seconds`` to finish. ``await stop()``
releases everything. ``run(config)`` does all of it around the signals and
returns the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signal_mod
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from flowctl.limit import make_algorithm
from flowctl.limiter import Limiter
from flowctl.quota import Quotas
from flowctl.signal import CpuSignal
from sidecar.admin import SidecarCollector, build_admin_app
from sidecar.clients import ClientGuard, GuardedServer
from sidecar.config import SidecarConfig
from sidecar.engine import SidecarEngine
from sidecar.fastpath import FastListener
from sidecar.probe import UpstreamProbe
from sidecar.proxy import Proxy
from sidecar.watch import WatchedSignal, parse_watch

__all__ = ["Sidecar", "build_limiter", "run"]

log = logging.getLogger("sidecar")

# After the drain wait, how long aiohttp may still flush responses already returned by handlers.
FLUSH_S = 1.0


def build_limiter(config: SidecarConfig, signal: CpuSignal, *, clock: Callable[[], float] = time.monotonic) -> Limiter:
    """A ``flowctl.limiter.Limiter`` on ``signal`` with the configured algorithm and thresholds."""
    return Limiter(
        signal,
        make_algorithm(config.algorithm, fixed_limit=config.fixed_limit),
        policy=config.policy(),
        dry_run=config.dry_run,
        clock=clock,
    )


class Sidecar:
    """The whole sidecar. Inject ``limiter`` / ``signal`` (e.g. a StaticSignal) in tests.

    With ``limiter=None`` a Limiter is built on the watched signal; pass
    ``limit=False`` to run as a plain proxy without admission.
    """

    def __init__(
        self,
        config: SidecarConfig,
        *,
        limiter: Limiter | None = None,
        signal: CpuSignal | None = None,
        limit: bool = True,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.limiter: Limiter | None = limiter
        self.signal: CpuSignal | None = signal
        self._limit = limit
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._clock = clock
        self.views: dict[str, CpuSignal] = {}
        self.proxy: Proxy | None = None
        self.probe: UpstreamProbe | None = None
        self.quotas: Quotas | None = None
        self.draining = False
        self._owned: list[Any] = []  # things with async stop(), stopped in reverse order
        self._proxy_server: GuardedServer | None = None
        self.clients = ClientGuard(max_clients=config.max_clients)
        self._proxy_runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._proxy_site: web.TCPSite | None = None
        self._fast: FastListener | None = None
        self.listen_port = 0
        self.admin_port = 0

    async def start(self) -> None:
        cfg = self.config
        if self.signal is None and (self.limiter is None and self._limit):
            sig = WatchedSignal(parse_watch(cfg.watch), view=cfg.view, interval_s=cfg.sample_interval_s, clock=self._clock)
            await sig.start()
            self._owned.append(sig)
            self.signal = sig
        if self.signal is not None:
            self.views[self.signal.name] = self.signal
        await self._start_comparison_views()
        if self.limiter is None and self._limit and self.signal is not None:
            self.limiter = build_limiter(cfg, self.signal, clock=self._clock)
        durations = None
        if self.limiter is not None:
            from flowctl.metrics import FlowctlCollector, RequestDurations

            self.registry.register(FlowctlCollector(self.limiter, views=self.views))
            durations = RequestDurations(self.registry).child(cfg.resource)
        self.registry.register(SidecarCollector(self))
        from flowctl.metrics import SessionMetrics

        sessions = SessionMetrics(self.registry)  # streams and WebSockets past their admission

        quotas = await self._start_quotas()
        self.proxy = Proxy(
            cfg,
            limiter=self.limiter,
            durations=durations,
            sessions=sessions,
            clock=self._clock,
            quotas=quotas,
            priorities=self.limiter.priorities if self.limiter is not None else ("default",),
            default_priority=self.limiter.default_priority if self.limiter is not None else "default",
        )
        await self.proxy.start()
        self._owned.append(self.proxy)
        self.probe = UpstreamProbe(
            cfg.upstream,
            interval_s=cfg.probe_interval_s,
            timeout_s=cfg.connect_timeout_s,
            health_path=cfg.health_path,
            session=self._session,
        )
        await self.probe.start()
        self._owned.append(self.probe)

        self._admin_runner = web.AppRunner(build_admin_app(self), access_log=None, shutdown_timeout=1.0)
        await self._admin_runner.setup()
        admin_site = web.TCPSite(self._admin_runner, cfg.admin.host, cfg.admin.port)
        await admin_site.start()
        self.admin_port = _bound_port(admin_site)

        # aiohttp closes a connection whose next head is not whole within keepalive_timeout
        # (a partial head does not restart it): on that path it is also the header timeout.
        self._proxy_server = GuardedServer(
            self.proxy.handle,
            guard=self.clients,
            access_log=None,
            max_line_size=cfg.max_header_bytes,
            max_field_size=cfg.max_header_bytes,
            auto_decompress=False,
            keepalive_timeout=min(75.0, cfg.header_timeout_s),
        )
        self._proxy_runner = web.ServerRunner(self._proxy_server, shutdown_timeout=FLUSH_S)
        await self._proxy_runner.setup()
        if cfg.client == "fast":
            # Plain requests skip aiohttp's server; the rest is handed to self._proxy_server.
            self._fast = FastListener(
                self.proxy,
                self._proxy_server.handover_protocol,
                header_timeout_s=cfg.header_timeout_s,
                body_timeout_s=cfg.body_timeout_s,
                guard=self.clients,
                max_head_bytes=cfg.max_header_bytes,
                max_body=cfg.max_body_bytes,
                priority_header=cfg.priority_header,
                clock=self._clock,
            )
            self.listen_port = await self._fast.start(cfg.listen.host, cfg.listen.port, backlog=1024)
        else:
            self._proxy_site = web.TCPSite(self._proxy_runner, cfg.listen.host, cfg.listen.port, backlog=1024)
            await self._proxy_site.start()
            self.listen_port = _bound_port(self._proxy_site)
        log.info(
            "sidecar listening on %s:%d -> %s; admin on %s:%d; watching %s",
            cfg.listen.host, self.listen_port, cfg.upstream, cfg.admin.host, self.admin_port, cfg.watch,
        )  # fmt: skip

    async def _start_quotas(self) -> Quotas | None:
        """The configured quotas (None without rules), started, with their collector on the registry."""
        cfg = self.config
        if not cfg.quota:
            return None
        from flowctl.quota import QuotaCollector, make_quotas

        quotas = make_quotas(
            cfg.quota,
            store_url=cfg.quota_store or None,
            on_error=cfg.quota_on_error,
            replicas=cfg.quota_replicas,
            timeout_s=cfg.quota_timeout_s,
        )
        if self.limiter is not None:
            quotas.check_priorities(self.limiter.priorities)
        await quotas.start()
        self._owned.append(quotas)
        self.registry.register(QuotaCollector(quotas))
        self.quotas = quotas
        return quotas

    def data_plane(self) -> dict[str, Any]:
        """The proxy's figures for the admin listener (``AdminView.data_plane``)."""
        p = self.proxy
        return {
            "engine": "python",
            "inflight": p.inflight if p is not None else 0,
            "requests_total": p.requests_total if p is not None else 0,
            "errors_total": dict(p.errors_total) if p is not None else {},
        }

    async def failed(self) -> str:
        """Returns only if the data plane failed for good: never for this engine (its errors are per request)."""
        await asyncio.Event().wait()
        return ""

    def _session(self) -> aiohttp.ClientSession:
        assert self.proxy is not None
        return self.proxy.session

    async def _start_comparison_views(self) -> None:
        """Add the host view next to the gating one (for /metrics and /debug/limiter) when available."""
        if "host" in self.views or self.signal is None:
            return
        try:
            from flowctl import cpu

            host = cpu.make_signal("host", interval_s=max(self.config.sample_interval_s, 0.5))
            await host.start()
        except Exception as e:  # noqa: BLE001 - a comparison view is optional
            log.debug("no host CPU view: %s", e)
            return
        self._owned.append(host)
        self.views["host"] = host

    async def drain(self) -> bool:
        """Refuse new connections and wait up to ``drain_seconds`` for in-flight requests.

        Returns True when everything finished within the grace period.
        """
        self.draining = True
        if self._fast is not None:
            self._fast.stop_listening()  # new connections are refused; idle keep-alive ones close
        if self._proxy_site is not None:
            await self._proxy_site.stop()  # closes the listening socket: new connections are refused
            self._proxy_site = None
        if self._proxy_server is not None:
            self._proxy_server.pre_shutdown()  # keep-alive connections close after their current request
        if self.proxy is None:
            return True
        n = self.proxy.inflight
        log.info("draining: %d request(s) in flight, waiting up to %.1f s", n, self.config.drain_seconds)
        try:
            async with asyncio.timeout(self.config.drain_seconds):
                await self.proxy.wait_idle()
        except TimeoutError:
            log.warning("drain: %d request(s) still in flight after %.1f s", self.proxy.inflight, self.config.drain_seconds)
            return False
        return True

    async def stop(self) -> None:
        """Close listeners, the upstream session, the probe and the CPU watch."""
        if self._fast is not None:
            await self._fast.close()
            self._fast = None
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()
            self._proxy_runner = None
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        while self._owned:
            thing = self._owned.pop()
            with contextlib.suppress(Exception):
                await (thing.close() if isinstance(thing, Proxy) else thing.stop())

    async def __aenter__(self) -> Sidecar:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # noqa: SLF001 - aiohttp exposes the bound socket only here
    if server is None:
        return 0
    for sock in getattr(server, "sockets", ()) or ():
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return int(sock.getsockname()[1])
    return 0


async def serve(config: SidecarConfig, *, ready: Callable[[SidecarEngine], None] | None = None) -> int:
    """Run the configured engine until SIGTERM/SIGINT, then drain and stop: exit code 0. If the data
    plane fails for good (the haproxy engine's child died twice), stop at once: exit code 1."""
    from sidecar.engine import make_engine

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal_mod.SIGTERM, signal_mod.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        engine = make_engine(config)
        try:
            await engine.start()
            if ready is not None:
                ready(engine)
            stopped = asyncio.ensure_future(stop.wait())
            failed = asyncio.ensure_future(engine.failed())
            await asyncio.wait((stopped, failed), return_when=asyncio.FIRST_COMPLETED)
            for t in (stopped, failed):
                t.cancel()
            if failed.done() and not failed.cancelled():
                log.error("data plane failed: %s", failed.result())
                return 1
            log.info("signal received: draining")
            await engine.drain()
        finally:
            await engine.stop()
        log.info("stopped")
        return 0
    finally:
        for sig in (signal_mod.SIGTERM, signal_mod.SIGINT):
            loop.remove_signal_handler(sig)


def _use_uvloop(mode: str) -> bool:
    if mode == "off":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if mode == "on":
            from flowctl.errors import ConfigError

            raise ConfigError("uvloop: 'on' but uvloop is not installed (pip install 'flowctl[speed]')") from None
        return False
    return True


def run(config: SidecarConfig) -> int:
    """Blocking entry point: configure logging, pick the event loop, serve."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if _use_uvloop(config.uvloop):
        import uvloop

        code: int = uvloop.run(serve(config))
        return code
    return asyncio.run(serve(config))
