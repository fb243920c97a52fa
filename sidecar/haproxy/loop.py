"""``Controller``: one control step, from HAProxy's counters to the limits HAProxy is given.

Each ``tick`` (the engine calls it every 100 ms, and, while the period gate
paces, as soon as the CPU signal has a new reading: an onset is decided on
the reading that shows it, not up to a tick later):

1. ``show info`` and ``show stat`` in one exchange. A Pid other than the last
   one is a new child: its counters start over, it runs the values of its
   config, and everything is sent again.
2. The figures (in service, queued, streams, requests, sheds per class, queue
   timeouts), as totals that survive a restart.
3. HAProxy's completions since the last tick go to the Limiter
   (``Mirror.record``) before it observes the CPU reading, so the reading's
   interval and the completions counted for it end together (the CPU cost
   is their ratio).
4. ``Limiter.observe()`` and ``snapshot()``, then ``admission`` (the rule in
   ``sidecar.haproxy.control``) gives the ``Setting``. The engine's own
   cool-off (restarted by HAProxy's sheds while engaged) ends early at a
   clearly cool reading, by the Limiter's rule. The Limiter's in-flight is
   held at HAProxy's sessions, up to the new ``maxconn`` (``Mirror.hold``:
   the Limiter never refuses one).
5. The set commands that differ from what the child last got are sent.

Between ticks, ``pace`` (every ``PACE_S`` while the watched group is busy)
reads the group's CFS counters into the period gate (``sidecar.haproxy.pace``)
and sends each paced class's room capped by what the current period's quota
still covers, when that changes.

A failure of the admin socket is counted, logged once per distinct error,
and retried next tick; it never raises.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from flowctl.errors import DataPlaneError
from flowctl.limiter import LimiterSnapshot
from flowctl.limiter.gate import clearly_cool
from flowctl.signal import BandwidthSignal, CpuReading, CpuSignal
from sidecar.clients import ClientGuard
from sidecar.config import SidecarConfig
from sidecar.haproxy.control import Admission, Mirror, Setting, admission, rt_seconds, uncapped
from sidecar.haproxy.pace import Pacer
from sidecar.haproxy.render import APP, FRONTEND, RT_SAMPLE_VAR, SERVER, STREAMS, shed_backend
from sidecar.haproxy.runtime import Stats, set_map, set_maxconn, set_var

__all__ = ["Controller", "LimiterView", "RuntimeApi"]

log = logging.getLogger("sidecar.haproxy")

RT_SAMPLES_PER_TICK = 16  # responses a tick whose time HAProxy sums (the per mille follows the request rate)


class RuntimeApi(Protocol):
    """The two calls the controller makes on ``sidecar.haproxy.runtime.Runtime``."""

    async def stats(self) -> Stats: ...
    async def apply(self, commands: Sequence[str]) -> None: ...


class LimiterView(Admission, Protocol):
    """The Limiter as the controller uses it: the slot API (``Mirror``), ``observe`` and ``snapshot``."""

    def observe(self) -> None: ...
    def snapshot(self) -> LimiterSnapshot: ...


class Controller:
    """The control state of one engine: what HAProxy was told, what it did, what the Limiter learnt."""

    def __init__(
        self,
        config: SidecarConfig,
        limiter: LimiterView,
        runtime: RuntimeApi,
        *,
        priorities: Sequence[str],
        default_priority: str,
        map_path: str,
        why_path: str = "",
        clients: ClientGuard | None = None,
        signal: CpuSignal | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.limiter = limiter
        self.runtime = runtime
        self.priorities = tuple(priorities)
        self.default_priority = default_priority
        self.map_path = map_path
        self.why_path = why_path
        self.clients = clients
        self._clock = clock
        self._policy = config.policy()
        self._gated = self._policy.cpu_gate  # an ungated limiter (fixed, gradient) is always engaged
        self.mirror = Mirror(limiter, resource=config.resource, clock=clock)
        self.signal = signal
        parts = {p: limiter.slot(config.resource, p).partition for p in self.priorities}
        self.reserve = frozenset(p for p, part in parts.items() if part.reserve)
        # the period gate, when the policy has it: the classes it may cap (a reserve class never)
        self.pacer: Pacer | None = None
        if self._policy.period_gate and self._gated:
            self.pacer = Pacer(self._policy, {p: part.level for p, part in parts.items() if not part.reserve})
        self.caps: dict[str, int] = {}  # per paced class: the room the current period's quota covers
        self.cost_s: float | None = None  # the Limiter's CPU per request, at the last tick
        self.chance_inflight: float | None = None  # and its in-flight by chance at capacity (the pacer's slack)
        self._follow_at = -1.0
        self._send_lock = asyncio.Lock()
        self.rt_sample = 1000  # per mille of the app's requests whose response time HAProxy sums (RT_SAMPLE_VAR)
        self._rt_last: tuple[int, int] | None = None  # the last ``flowctl rt`` (sum us, count) of this child
        self.setting: Setting = uncapped(self.priorities, max_connections=config.max_connections,
                                         max_clients=config.max_clients)  # fmt: skip
        # what the running child has (its config), by what each command sets
        self.sent: dict[str, str] | None = self._keyed(self.commands(self.setting))
        self.pid: int | None = None
        self.figures: dict[str, int] = {}
        self.sheds_total: dict[str, int] = {p: 0 for p in self.priorities}
        self.control_errors_total = 0
        self.last_error: str | None = None
        self.quiet = False  # draining: errors are expected, not logged
        self._base: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._cool_until = -1.0
        self._capped = False  # the period gate capped a class below its room since the last tick
        self._tick_lock = asyncio.Lock()
        self._ticked_reading: CpuReading | None = None  # the CPU reading the last tick decided on
        self.ticked_at = -math.inf  # when the last tick began (clock seconds)

    def _over_threshold(self, r: CpuReading) -> bool:
        """The fast reading at or over the CPU threshold (one reading of the Limiter's hot streak)."""
        return r.utilization is not None and r.utilization >= self._policy.cpu_threshold

    def applied(self, s: Setting) -> tuple[int, dict[str, int], dict[str, tuple[str, str]]]:
        """What HAProxy is given for ``s``: its maxconn, rooms and shed answers, or nothing capped (dry-run)."""
        if s.capped:
            return s.maxconn, dict(s.rooms), dict(s.why)
        return (self.config.max_connections, {p: self.config.max_clients for p in s.rooms},
                {p: ("queue", "ceiling") for p in s.rooms})  # fmt: skip

    def commands(self, s: Setting) -> list[str]:
        """Every set command for ``s``, with the period gate's caps on the rooms (a capped room's shed
        says ``cpu_period``/``period``, as the Python engine's)."""
        maxconn, rooms, why = self.applied(s)
        if s.capped:
            for p, cap in self.caps.items():
                if p in rooms and cap < rooms[p]:
                    rooms[p], why[p] = cap, ("cpu_period", "period")
        out = [set_maxconn(APP, SERVER, maxconn), *(set_map(self.map_path, p, n) for p, n in rooms.items()),
               set_var(RT_SAMPLE_VAR, self.rt_sample)]
        if self.why_path:
            for p, (reason, stage) in why.items():
                out += [set_map(self.why_path, f"{p}.reason", reason), set_map(self.why_path, f"{p}.stage", stage)]
        return out

    def _total(self, key: str, value: int) -> int:
        """A counter of the current child plus those of the children before it."""
        seen = self._seen.get(key)
        if seen is not None and value < seen:
            self._base[key] = self._base.get(key, 0) + seen
        self._seen[key] = value
        return self._base.get(key, 0) + value

    def read(self, stats: Stats) -> tuple[int, int, float]:
        """Update the figures from one ``show stat``; returns (the upstream's responses so far, in service
        now, the RT estimate in seconds)."""
        server = stats.row(APP, SERVER)
        backend = stats.row(APP, "BACKEND")
        front = stats.row(FRONTEND, "FRONTEND")
        streams = stats.row(STREAMS, SERVER)
        if server is None or backend is None or front is None:
            raise DataPlaneError("show stat: the flowctl frontend, the app backend or its server is missing")
        f = self.figures
        f["current_sessions"] = server.num("scur")
        f["queue"] = backend.num("qcur") + server.num("qcur")
        f["stream_sessions"] = streams.num("scur") if streams is not None else 0
        f["requests_total"] = self._total("requests", front.num("req_tot"))
        # the 5xx HAProxy itself answered in the app backend (queue timeouts): the backend's minus the server's
        f["queue_timeouts_total"] = self._total("queue_timeouts", max(0, backend.num("hrsp_5xx") - server.num("hrsp_5xx")))
        for p in self.priorities:
            row = stats.row(shed_backend(p), "BACKEND")
            self.sheds_total[p] = self._total("shed_" + p, row.num("req_tot") if row is not None else 0)
        if self.clients is not None:
            self.clients.open = front.num("scur")
            self.clients.bad_requests_total = self._total("ereq", front.num("ereq"))
        rt_s = rt_seconds(server.num("ctime"), server.num("rtime"))  # HAProxy's: 1024 requests, whole ms
        last, self._rt_last = self._rt_last, stats.rt
        if stats.rt is not None and last is not None and stats.rt[1] > last[1] and stats.rt[0] >= last[0]:
            # the mean of the responses sampled since the last tick, to the microsecond
            rt_s = max(1e-5, (stats.rt[0] - last[0]) / (stats.rt[1] - last[1]) / 1e6)
        return server.responses(), server.num("scur"), rt_s

    @staticmethod
    def _keyed(commands: list[str]) -> dict[str, str]:
        """Commands by what they set (the command less its value)."""
        return {c.rsplit(" ", 1)[0]: c for c in commands}

    async def _send(self) -> None:
        """Send the commands of the current setting and caps that differ from what the child has."""
        async with self._send_lock:
            commands = self.commands(self.setting)
            sent = self.sent or {}
            todo = [c for c in commands if sent.get(c.rsplit(" ", 1)[0]) != c]
            if not todo:
                return
            await self.runtime.apply(todo)
            self.sent = {**sent, **self._keyed(todo)}

    def _follow(self, now: float, snap: LimiterSnapshot) -> None:
        """Once a second: the period gate follows the watched group's bandwidth (as the Limiter's does)."""
        if self.pacer is None or now < self._follow_at:
            return
        self._follow_at = now + 1.0
        sig = self.signal
        bandwidth = sig.bandwidth() if isinstance(sig, BandwidthSignal) else None
        self.pacer.follow(bandwidth, snap.cpu.cores)

    @property
    def pacing(self) -> bool:
        """The period gate paces the watched group (it has a quota of its own) and HAProxy is capped."""
        return self.pacer is not None and self.pacer.active and self.setting.capped

    async def pace(self) -> bool:
        """One read of the period gate between ticks: the paced rooms sent when they change. True while
        the group uses CPU (the caller reads again after ``PACE_S``, else after ``IDLE_PACE_S``)."""
        pacer = self.pacer
        if pacer is None or not self.pacing:
            if self.caps:
                self.caps = {}
                await self._send_quietly()
            return False
        now = self._clock()
        busy, engage = pacer.read(now)
        if engage:  # a long freeze: the load does not fit, engage now (as the Limiter's _froze)
            self._cool_until = max(self._cool_until, now + self.config.cool_off_s)
        engaged = self.setting.engaged or now < self._cool_until
        self.caps = pacer.caps(now, self.setting.rooms, self.cost_s, engaged, self.chance_inflight)
        rooms = self.setting.rooms
        self._capped = self._capped or any(cap < rooms.get(p, cap) for p, cap in self.caps.items())
        await self._send_quietly()
        return busy

    async def _send_quietly(self) -> None:
        try:
            await self._send()
        except DataPlaneError as e:
            self.control_errors_total += 1
            if str(e) != self.last_error and not self.quiet:
                log.warning("haproxy control loop: %s", e)
            self.last_error = str(e)

    @property
    def new_reading(self) -> bool:
        """The CPU signal has a reading the last tick did not decide on (the caller may tick now)."""
        return self.signal is not None and self.signal.reading is not self._ticked_reading

    async def tick(self) -> None:
        """One control step (the module docstring); ticks never overlap."""
        async with self._tick_lock:
            self.ticked_at = self._clock()
            if self.signal is not None:
                self._ticked_reading = self.signal.reading
            await self._tick()

    async def _tick(self) -> None:
        try:
            stats = await self.runtime.stats()
            if stats.pid != self.pid:
                if self.pid is not None:  # not the first child, whose config holds what ``sent`` says
                    log.warning("haproxy Pid %s -> %s: sending the limits again", self.pid, stats.pid)
                    self.sent = None
                    self.mirror.reset()
                    self._rt_last = None
                self.pid = stats.pid
            sheds_before = sum(self.sheds_total.values())
            completed, inflight, rt_s = self.read(stats)
            # HAProxy's completions to the Limiter before it observes the CPU reading they belong to
            done = self.mirror.record(completed, inflight, rt_s)
            now = self._clock()
            shed = sum(self.sheds_total.values()) > sheds_before
            if self.setting.engaged and shed:
                self._cool_until = now + self.config.cool_off_s  # HAProxy shed over a limit: as a limiter shed
            self.limiter.observe()  # the latest CPU reading and limit (snapshot() only reads)
            snap = self.limiter.snapshot()
            queued = shed and not self.setting.engaged and self._gated and self._over_threshold(snap.cpu)
            if queued:
                # HAProxy shed at a ceiling or a spent period while not engaged: queue evidence, which with one
                # reading over the threshold makes the Limiter's hot gate hot (it sees no shed of HAProxy's)
                self._cool_until = now + self.config.cool_off_s
            self._follow(now, snap)
            self.cost_s = snap.cpu_per_request_s
            self.chance_inflight = snap.chance_inflight
            # as the limiter's cool-off: a clearly cool reading ends it early; while the period gate capped
            # a class since the last tick, the smoothed reading must be well under the threshold too
            settled, self._capped = self._capped, False
            if now < self._cool_until and clearly_cool(self._policy, snap.cpu, settled=settled):
                self._cool_until = now
            engaged = not self._gated or snap.hot or snap.cool_off or now < self._cool_until
            if not self._gated:
                reason = "limit"
            elif queued:
                reason = "cpu"
            elif snap.hot:
                reason = snap.hot_triggers[0] if snap.hot_triggers else "cpu"
            else:
                reason = "cool_off"
            paced = self.pacer is not None and self.pacer.active and not snap.dry_run
            self.setting = admission(snap, priorities=self.priorities, default=self.default_priority, engaged=engaged,
                                     max_connections=self.config.max_connections,
                                     max_clients=self.config.max_clients, reason=reason, reserve=self.reserve,
                                     paced=paced)  # fmt: skip
            if not paced:
                self.caps = {}
            # the Limiter's in-flight held at HAProxy's sessions, up to what the new setting admits
            self.mirror.hold(inflight, self.setting.maxconn if self.setting.capped else inflight)
            self.rt_sample = max(1, min(1000, math.ceil(RT_SAMPLES_PER_TICK * 1000 / max(1, done))))
            await self._send()
            if self.last_error is not None and not self.quiet:
                log.warning("haproxy control loop: recovered (%s)", self.last_error)
            self.last_error = None
        except DataPlaneError as e:
            self.control_errors_total += 1
            if str(e) != self.last_error and not self.quiet:
                log.warning("haproxy control loop: %s", e)
            self.last_error = str(e)
