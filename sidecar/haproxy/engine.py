"""``HaproxySidecar``: the sidecar with HAProxy as its data plane and flowctl as the brain.

``start()`` checks that the listen port is free and HAProxy is installed,
writes the config (``render``) in a private run directory (mode 0700: the
admin socket, 0600, is reachable by this user alone), starts the child, the
CPU watch, the Limiter (``sidecar.app.build_limiter``), the control loop and
the admin listener. The control loop (every ``TICK_S``) reads ``show info``
and ``show stat`` in one exchange, replays the upstream's completions into
the Limiter (``Mirror``), takes a snapshot, and sets ``maxconn`` and the
rooms when they change, and again whenever HAProxy's Pid changed.

Supervision: a child that exits while it should run is restarted once (the
config carries the current limits; the loop re-sends them); a second exit
ends the sidecar with a failure (``failed()`` returns), so the Pod restarts.
``drain()`` is HAProxy's soft stop (listeners close, in-flight requests
finish) bounded by ``drain_seconds``; ``stop()`` kills what is left and
removes the run directory.

The Limiter runs without its own period gate (it would refuse the mirrored
admissions); the period gate runs beside HAProxy instead (``_pace``, every
``PACE_S`` while the watched group is busy: ``sidecar.haproxy.pace``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from flowctl.errors import DataPlaneError
from flowctl.limiter import Limiter
from flowctl.periodic import Periodic
from flowctl.signal import CpuSignal
from sidecar.admin import SidecarCollector, build_admin_app
from sidecar.clients import ClientGuard
from sidecar.config import SidecarConfig
from sidecar.haproxy.control import Setting
from sidecar.haproxy.loop import Controller
from sidecar.haproxy.metrics import HaproxyCollector
from sidecar.haproxy.pace import IDLE_PACE_S, PACE_S
from sidecar.haproxy.process import HaproxyProcess, find_haproxy
from sidecar.haproxy.render import HOP_LUA, Plan, map_text, render, why_text
from sidecar.haproxy.runtime import Runtime
from sidecar.probe import UpstreamProbe
from sidecar.watch import WatchedSignal, parse_watch

__all__ = ["TICK_S", "HaproxySidecar"]

log = logging.getLogger("sidecar.haproxy")

TICK_S = 0.1  # the control loop's period: one show stat, one snapshot, set commands only on change
MAX_RESTARTS = 1


def _port_free(host: str, port: int) -> None:
    """Raise OSError (one line, naming the address) unless ``host:port`` can be bound now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def own_threads() -> int | None:
    """HAProxy's threads: this container's CPUs rounded up (its quota, cpuset or affinity, whichever is
    least; HAProxy itself counts only the affinity, so a 1-CPU sidecar on a 32-core node would run 32
    threads). None when unknown (HAProxy's default then)."""
    try:
        from flowctl.cpu.sources import ContainerSource

        cores = ContainerSource().read_limits().limit_cores
    except Exception:  # noqa: BLE001 - an unreadable cgroup leaves HAProxy its default
        return None
    return max(1, math.ceil(cores - 1e-9)) if cores else None


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Readiness:
    """``/readyz``'s probe for this engine: the upstream answers and HAProxy runs."""

    def __init__(self, probe: UpstreamProbe, engine: HaproxySidecar) -> None:
        self.upstream = probe
        self._engine = engine

    @property
    def ready(self) -> bool:
        return self.upstream.ready and self._engine.up

    @property
    def last_error(self) -> str | None:
        if not self._engine.up:
            return "haproxy is not running"
        return self.upstream.last_error

    def describe(self) -> dict[str, object]:
        return {**self.upstream.describe(), "haproxy_up": self._engine.up}


class HaproxySidecar:
    """The sidecar on HAProxy. Inject ``signal`` (a StaticSignal) in tests; ``binary`` to pick a haproxy."""

    engine = "haproxy"

    def __init__(
        self,
        config: SidecarConfig,
        *,
        signal: CpuSignal | None = None,
        registry: CollectorRegistry | None = None,
        binary: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = TICK_S,
    ) -> None:
        self.config = config
        self.signal: CpuSignal | None = signal
        self.limiter: Limiter | None = None
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.views: dict[str, CpuSignal] = {}
        self.proxy = None
        self.probe: _Readiness | None = None
        self.clients = ClientGuard(max_clients=config.max_clients)
        self.draining = False
        self._binary = binary
        self._clock = clock
        self._tick_s = tick_s
        self._owned: list[Any] = []
        self._session: aiohttp.ClientSession | None = None
        self._admin_runner: web.AppRunner | None = None
        self._loop: Periodic | None = None
        self._pacing: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._failed: asyncio.Future[str] | None = None
        self._stopping = False
        self.run_dir = ""
        self.runtime: Runtime | None = None
        self.process: HaproxyProcess | None = None
        self.listen_port = 0
        self.admin_port = 0
        self.controller: Controller | None = None
        self._plan: Plan | None = None
        self.restarts_total = 0
        self.priorities: tuple[str, ...] = ()
        self.default_priority = "default"

    # -- the AdminView the admin listener reads ---------------------------------------------------

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def setting(self) -> Setting | None:
        return self.controller.setting if self.controller is not None else None

    @property
    def figures(self) -> dict[str, int]:
        return self.controller.figures if self.controller is not None else {}

    @property
    def sheds_total(self) -> dict[str, int]:
        return self.controller.sheds_total if self.controller is not None else {}

    @property
    def control_errors_total(self) -> int:
        return self.controller.control_errors_total if self.controller is not None else 0

    def data_plane(self) -> dict[str, Any]:
        """/debug/limiter's "proxy" section: HAProxy's figures and what the loop told it."""
        c = self.controller
        s = self.setting
        f = self.figures
        shed = sum(self.sheds_total.values()) + f.get("queue_timeouts_total", 0)
        return {
            "engine": "haproxy",
            "inflight": f.get("current_sessions", 0),
            "requests_total": f.get("requests_total", 0),
            "errors_total": {"503": shed},
            "haproxy": {
                "up": self.up,
                "pid": c.pid if c is not None else None,
                "binary": self._binary,
                "run_dir": self.run_dir,
                "restarts_total": self.restarts_total,
                "maxconn": s.maxconn if s is not None else None,
                "rooms": dict(s.rooms) if s is not None else {},
                "engaged": s.engaged if s is not None else False,
                "capped": s.capped if s is not None else False,
                "queue": f.get("queue", 0),
                "stream_sessions": f.get("stream_sessions", 0),
                "shed_total": dict(self.sheds_total),
                "queue_timeouts_total": f.get("queue_timeouts_total", 0),
                "replayed_total": c.mirror.replayed_total if c is not None else 0,
                "mirror_held": c.mirror.held if c is not None else 0,
                "mirror_refused": c.mirror.refused if c is not None else 0,
                "control_errors_total": self.control_errors_total,
                "period_gate": {**c.pacer.describe(), "caps": dict(c.caps), "pacing": c.pacing}
                if c is not None and c.pacer is not None else None,
                "last_error": c.last_error if c is not None else None,
            },
        }

    # -- lifetime --------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        binary = find_haproxy(self._binary)
        if binary is None:
            raise DataPlaneError("engine haproxy: no haproxy binary (apt-get install haproxy, or --engine python)")
        self._binary = binary
        listen_port = cfg.listen.port or _free_port(cfg.listen.host)
        _port_free(cfg.listen.host, listen_port)
        self._failed = asyncio.get_running_loop().create_future()
        self.run_dir = tempfile.mkdtemp(prefix="flowctl-haproxy-")  # 0700, ours alone
        sock = os.path.join(self.run_dir, "admin.sock")
        self.runtime = Runtime(sock)
        if self.signal is None:
            sig = WatchedSignal(parse_watch(cfg.watch), view=cfg.view, interval_s=cfg.sample_interval_s, clock=self._clock)
            await sig.start()
            self._owned.append(sig)
            self.signal = sig
        self.views[self.signal.name] = self.signal
        # The mirror's admissions must never be refused: the period gate runs in the Controller instead.
        from sidecar.app import build_limiter

        self.limiter = build_limiter(replace(cfg, period_gate=False), self.signal, clock=self._clock)
        self.priorities = self.limiter.priorities
        self.default_priority = self.limiter.default_priority
        map_path = os.path.join(self.run_dir, "admission.map")
        why_path = os.path.join(self.run_dir, "why.map")
        self.controller = Controller(cfg, self.limiter, self.runtime, priorities=self.priorities,
                                     default_priority=self.default_priority, map_path=map_path, why_path=why_path,
                                     clients=self.clients, signal=self.signal, clock=self._clock)  # fmt: skip
        self._plan = Plan(listen_port, sock, map_path, why_path, os.path.join(self.run_dir, "hop.lua"), self.priorities,
                          self.default_priority, 1, {}, nbthread=own_threads())  # fmt: skip
        with open(self._plan.lua_path, "w") as f:
            f.write(HOP_LUA)
        self._write_files()  # ConfigError here: nothing started yet but the watch
        from flowctl.metrics import FlowctlCollector

        self.registry.register(FlowctlCollector(self.limiter, views=self.views))
        self.registry.register(SidecarCollector(self))
        self.registry.register(HaproxyCollector(self))
        self.process = HaproxyProcess(binary, os.path.join(self.run_dir, "haproxy.cfg"), self.runtime)
        await self.process.start()
        self.controller.pid = self.process.pid
        self.listen_port = listen_port
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="flowctl-haproxy-supervisor")
        self._loop = Periodic(self.tick, self._tick_s, name="flowctl-haproxy-control")
        await self._loop.start()
        self._pacing = asyncio.get_running_loop().create_task(self._pace(), name="flowctl-haproxy-pace")
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        probe = UpstreamProbe(cfg.upstream, interval_s=cfg.probe_interval_s, timeout_s=cfg.connect_timeout_s,
                              health_path=cfg.health_path, session=self._get_session)  # fmt: skip
        await probe.start()
        self._owned.append(probe)
        self.probe = _Readiness(probe, self)
        self._admin_runner = web.AppRunner(build_admin_app(self), access_log=None, shutdown_timeout=1.0)
        await self._admin_runner.setup()
        site = web.TCPSite(self._admin_runner, cfg.admin.host, cfg.admin.port)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp exposes the bound socket only here
        for s in getattr(server, "sockets", ()) or ():
            self.admin_port = int(s.getsockname()[1])
            break
        log.info("sidecar (haproxy %s, pid %s) listening on %s:%d -> %s; admin on %s:%d; watching %s",
                 binary, self.process.pid, cfg.listen.host, listen_port, cfg.upstream, cfg.admin.host, self.admin_port,
                 cfg.watch)  # fmt: skip

    def _get_session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    def _write_files(self) -> None:
        """The config and admission.map with the controller's current values, for a (re)start."""
        assert self._plan is not None and self.controller is not None
        c = self.controller
        maxconn, rooms, why = c.applied(c.setting)
        plan = replace(self._plan, maxconn=maxconn, rooms=rooms)
        text = render(self.config, plan)
        with open(plan.map_path, "w") as f:
            f.write(map_text(rooms))
        with open(plan.why_path, "w") as f:
            f.write(why_text(why))
        with open(os.path.join(self.run_dir, "haproxy.cfg"), "w") as f:
            f.write(text)

    async def _supervise(self) -> None:
        """Restart a child that exits unasked once; the next exit fails the sidecar."""
        while True:
            proc = self.process
            assert proc is not None and self._failed is not None
            rc = await proc.wait()
            if self._stopping or self.draining:
                return
            if self.restarts_total >= MAX_RESTARTS:
                msg = f"haproxy exited again (code {rc}) after {self.restarts_total} restart(s); giving up"
                log.error("%s", msg)
                if not self._failed.done():
                    self._failed.set_result(msg)
                return
            self.restarts_total += 1
            log.error("haproxy exited unexpectedly (code %s); restarting it (%d of %d)", rc, self.restarts_total, MAX_RESTARTS)
            try:
                self._write_files()
                await proc.start()
            except DataPlaneError as e:
                if not self._failed.done():
                    self._failed.set_result(f"haproxy could not be restarted: {e}")
                return

    async def failed(self) -> str:
        """Returns (why) when the data plane failed for good; the sidecar must then exit non-zero."""
        assert self._failed is not None
        return await asyncio.shield(self._failed)

    # -- the control loop ------------------------------------------------------------------------

    async def tick(self) -> None:
        """One control step while the child runs (``Controller.tick``); skipped when the pace loop
        ticked less than half a period ago (on a new CPU reading)."""
        c = self.controller
        if c is not None and self.up and self._clock() - c.ticked_at >= self._tick_s / 2:
            await c.tick()

    async def _pace(self) -> None:
        """The period gate between ticks (``Controller.pace``): every ``PACE_S`` while the watched group
        uses CPU, every ``IDLE_PACE_S`` while it does not, every tick while there is nothing to pace."""
        c = self.controller
        assert c is not None
        while True:
            busy = False
            if self.up and not self.draining:
                busy = await c.pace()
                if c.pacing and c.new_reading:  # decide on a new CPU reading now, not up to a tick later
                    await c.tick()
            await asyncio.sleep(PACE_S if busy else IDLE_PACE_S if c.pacing else self._tick_s)

    # -- drain and stop --------------------------------------------------------------------------

    async def drain(self) -> bool:
        """HAProxy's soft stop: listeners close, in-flight requests finish; True if it ended within
        ``drain_seconds``."""
        self.draining = True
        if self.controller is not None:
            self.controller.quiet = True  # the admin socket closes with the listeners
        proc = self.process
        if proc is None or not proc.running:
            return True
        log.info("draining: %d request(s) in service, %d queued; waiting up to %.1f s",
                 self.figures.get("current_sessions", 0), self.figures.get("queue", 0), self.config.drain_seconds)  # fmt: skip
        proc.soft_stop()
        try:
            async with asyncio.timeout(self.config.drain_seconds):
                await proc.wait()
        except TimeoutError:
            log.warning("drain: haproxy still serving after %.1f s", self.config.drain_seconds)
            return False
        return True

    async def stop(self) -> None:
        """Stop the loop and the child (killed if still running), the admin listener, the probe and the watch."""
        self._stopping = True
        if self._loop is not None:
            await self._loop.stop()
            self._loop = None
        if self._pacing is not None:
            self._pacing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pacing
            self._pacing = None
        if self.process is not None:
            await self.process.kill()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        while self._owned:
            thing = self._owned.pop()
            with contextlib.suppress(Exception):
                await thing.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = ""

    async def __aenter__(self) -> HaproxySidecar:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
