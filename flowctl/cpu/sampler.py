"""The Sampler: turns two counter readings into rates; the live ``CpuSignal``.

Owned by its caller: nothing starts at import or construction. Call
``sample()`` yourself (tests, benchmarks, ``flowctl inspect``) or run the
periodic task with ``async with sampler:`` / ``await start()`` + ``await stop()``.

Per sample: ``usage_cores = Δusage / Δwall``; ``utilization = usage_cores /
usable_cores`` (the limit, or less when the group's processes cannot use it
all: ``flowctl.cpu.parallelism``; host-style views: Δbusy / Δtotal, as
/proc/stat tools compute it); ``throttled_ratio = Δthrottled_periods / Δperiods`` (0.0 when no period
elapsed); ``pressure_ratio = Δpressure / Δwall``. The first sample is unknown
(no rate yet). A counter that goes backwards (the cgroup was recreated) or a
change of ``Counters.generation`` (the source re-discovered another cgroup)
drops the sample and resets the smoothing.

``utilization_smoothed`` is an EMA of ``utilization`` with time constant
``tau_s`` (default 1.0 s: a step reaches 63% after 1 s and 95% after 3 s,
whatever ``interval_s`` is). Limits are re-read every ``limits_interval_s``
(default 1 s) so an in-place resize is seen within about a second.

Fallback: given ``fallbacks`` (``make_signal`` passes lxcfs -> container -> host),
a sample whose view gives no limit or no usage (ENOTCONN/EIO from a dead lxcfs,
vanished cgroup files, a group removed under us) switches to the next view that
gives both, in the same sample, and logs that once. While on a fallback the
configured view is retried every ``limits_interval_s``; when it works again the
sampler returns to it (logged once too). ``name`` stays the configured view;
``active_view`` says which one is read. Across a switch the reading keeps the last
utilization (no rate exists yet across two views) and the new view's limit, so a
limit and a utilization are known throughout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from flowctl.periodic import Periodic
from flowctl.cpu.sources import BandwidthSource, Counters, CpuSource, Limits
from flowctl.errors import ConfigError
from flowctl.cpu.ema import Ema
from flowctl.signal import CfsBandwidth, CpuReading

__all__ = ["DEFAULT_INTERVAL_S", "DEFAULT_LIMITS_INTERVAL_S", "DEFAULT_TAU_S", "Sampler"]

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.1
DEFAULT_TAU_S = 1.0
DEFAULT_LIMITS_INTERVAL_S = 1.0


def _usable(limits: Limits, counters: Counters) -> bool:
    """A view works when it gives a CPU budget and a usage counter."""
    return limits.limit_cores is not None and counters.usage_s is not None


def _delta(cur: float | None, prev: float | None) -> float | None:
    if cur is None or prev is None:
        return None
    return cur - prev


class Sampler:
    """Periodic sampler of one ``CpuSource``; implements ``flowctl.signal.CpuSignal``.

    ``ConfigError`` (naming the parameter) for a non-positive or infinite ``interval_s`` or
    ``tau_s``, or a negative ``limits_interval_s``.
    """

    def __init__(
        self,
        source: CpuSource,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        tau_s: float = DEFAULT_TAU_S,
        limits_interval_s: float = DEFAULT_LIMITS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        fallbacks: Sequence[CpuSource] = (),
    ) -> None:
        if not 0 < interval_s < math.inf:
            raise ConfigError(f"interval_s: must be > 0 and finite, got {interval_s!r}")
        if not 0 <= limits_interval_s < math.inf:
            raise ConfigError(f"limits_interval_s: must be >= 0 (0: every sample) and finite, got {limits_interval_s!r}")
        self.source = source
        self.interval_s = interval_s
        self.limits_interval_s = limits_interval_s
        self.clock = clock
        self.reading: CpuReading = CpuReading()
        self.limits: Limits | None = None
        self.counters: Counters | None = None
        self.samples_total = 0
        self.dropped_total = 0
        self._ema = Ema(tau_s)
        self._limits_at = float("-inf")
        self._prev: Counters | None = None
        self._prev_at = 0.0
        self._chain: tuple[CpuSource, ...] = (source, *fallbacks)
        self._active = 0  # index in _chain of the view being read
        self._retry_at = float("-inf")
        self._blind = False  # no view works (logged once)
        self.switches_total = 0
        self._periodic = Periodic(self.sample, interval_s, name=f"flowctl-sampler-{source.name}")

    @property
    def name(self) -> str:
        """The view: "container", "host" or "lxcfs"."""
        return self.source.name

    @property
    def configured_view(self) -> str:
        """The view asked for (the same as ``name``)."""
        return self.source.name

    @property
    def active_view(self) -> str:
        """The view being read now: the configured one, or the fallback that works."""
        return self._chain[self._active].name

    @property
    def tau_s(self) -> float:
        return self._ema.tau_s

    def bandwidth(self) -> CfsBandwidth | None:
        """The CFS bandwidth of the view read now (``flowctl.signal.BandwidthSignal``): the container
        view's group; None for the host and lxcfs views."""
        src = self._chain[self._active]
        return src.bandwidth() if isinstance(src, BandwidthSource) else None

    def refresh_limits(self, now: float | None = None) -> Limits:
        """Re-read the active view's limits now."""
        self.limits = self._chain[self._active].read_limits()
        self._limits_at = self.clock() if now is None else now
        return self.limits

    def _switch(self, index: int, limits: Limits, cur: Counters, now: float, why: str) -> CpuReading:
        """Read ``_chain[index]`` from now on; its counters are the base of the next rate."""
        old = self.active_view
        self._active = index
        self.switches_total += 1
        self._blind = False
        self.limits, self._limits_at = limits, now
        self._prev, self._prev_at, self.counters = cur, now, cur
        self._retry_at = now
        if index == 0:
            log.warning("cpu view %s works again; back from %s", self.active_view, old)
        else:
            log.warning("cpu view %s failed (%s); falling back to %s", old, why, self.active_view)
        r = self.reading
        usable = limits.usable_cores if limits.usable_cores is not None else limits.limit_cores
        self.reading = CpuReading(at=now, utilization=r.utilization, utilization_smoothed=r.utilization_smoothed,
                                  usage_cores=r.usage_cores, limit_cores=limits.limit_cores, seq=r.seq + 1,
                                  usable_cores=usable)  # fmt: skip
        return self.reading

    def _fall_back(self, limits: Limits, cur: Counters, now: float) -> CpuReading | None:
        """The active view gave no limit or usage: switch to the next view that works, if any."""
        src = self._chain[self._active]
        why = "; ".join(list(limits.errors) + src.errors()) or "no limit or usage"
        for i in range(self._active + 1, len(self._chain)):
            nxt = self._chain[i]
            lim, c = nxt.read_limits(), nxt.read_counters()
            if _usable(lim, c):
                return self._switch(i, lim, c, now, why)
        if not self._blind:
            self._blind = True
            log.warning("cpu view %s failed (%s) and no fallback view works", src.name, why)
        return None

    def sample(self, now: float | None = None) -> CpuReading:
        """Take one sample synchronously, update and return ``reading``; never raises on bad input."""
        if now is None:
            now = self.clock()
        if self._active and now - self._retry_at >= self.limits_interval_s:
            self._retry_at = now  # on a fallback: is the configured view back?
            lim, c = self.source.read_limits(), self.source.read_counters()
            if _usable(lim, c):
                return self._switch(0, lim, c, now, "")
        limits = self.limits
        if limits is None or now - self._limits_at >= self.limits_interval_s:
            limits = self.refresh_limits(now)
        cur = self._chain[self._active].read_counters()
        if len(self._chain) > 1 and not _usable(limits, cur):
            switched = self._fall_back(limits, cur, now)
            if switched is not None:
                return switched
        elif self._blind:
            self._blind = False
        prev, prev_at = self._prev, self._prev_at
        self._prev, self._prev_at, self.counters = cur, now, cur
        self.samples_total += 1
        limit = limits.limit_cores
        usable_now = limits.usable_cores if limits.usable_cores is not None else limit
        if prev is None:
            self.reading = CpuReading(at=now, limit_cores=limit, seq=self.reading.seq + 1, usable_cores=usable_now)
            return self.reading
        dt = now - prev_at
        du = _delta(cur.usage_s, prev.usage_s)
        dtot = _delta(cur.total_s, prev.total_s)
        dper = _delta(cur.periods, prev.periods)
        dthr = _delta(cur.throttled_periods, prev.throttled_periods)
        dpsi = _delta(cur.pressure_s, prev.pressure_s)
        if (dt <= 0 or cur.generation != prev.generation
                or any(d is not None and d < 0 for d in (du, dtot, dper, dthr, dpsi))):
            # Clock did not advance, the source now reads another cgroup (process moved), or a
            # counter went backwards (cgroup recreated): a delta is meaningless; drop and reset.
            self.dropped_total += 1
            self._ema.reset()
            self.reading = CpuReading(at=now, limit_cores=limit, seq=self.reading.seq + 1, usable_cores=usable_now)
            return self.reading
        usage_cores = None if du is None else du / dt
        usable = usable_now
        utilization: float | None = None
        if dtot is not None:
            utilization = du / dtot if du is not None and dtot > 0 else None
        elif usage_cores is not None and usable:
            utilization = usage_cores / usable
        throttled: float | None = None
        if dper is not None and dthr is not None:
            throttled = min(1.0, dthr / dper) if dper > 0 else 0.0
        pressure = None if dpsi is None else min(1.0, dpsi / dt)
        smoothed = self._ema.update(utilization, now) if utilization is not None else self._ema.value
        self.reading = CpuReading(
            at=now,
            utilization=utilization,
            utilization_smoothed=smoothed,
            usage_cores=usage_cores,
            limit_cores=limit,
            throttled_ratio=throttled,
            pressure_ratio=pressure,
            seq=self.reading.seq + 1,
            usable_cores=usable,
        )
        return self.reading

    def details(self) -> dict[str, object]:
        """A JSON-able debug view: limits, their sources, the last reading and current errors."""
        lim = self.limits
        r = self.reading
        return {
            "name": self.name,
            "active_view": self.active_view,
            "switches_total": self.switches_total,
            "limit_cores": lim.limit_cores if lim else None,
            "limit_source": lim.source if lim else None,
            "usable_cores": (lim.usable_cores if lim.usable_cores is not None else lim.limit_cores) if lim else None,
            "usable_why": lim.usable_why if lim else None,
            "limit_file": lim.source_file if lim else None,
            "details": dict(lim.details) if lim else {},
            "reading": {
                "at": r.at,
                "utilization": r.utilization,
                "utilization_smoothed": r.utilization_smoothed,
                "usage_cores": r.usage_cores,
                "limit_cores": r.limit_cores,
                "usable_cores": r.usable_cores,
                "throttled_ratio": r.throttled_ratio,
                "pressure_ratio": r.pressure_ratio,
            },
            "interval_s": self.interval_s,
            "tau_s": self.tau_s,
            "samples_total": self.samples_total,
            "dropped_total": self.dropped_total,
            "errors": self.errors(),
        }

    @property
    def views(self) -> dict[str, object]:
        """Alias of ``details()``: the sidecar's /debug/limiter ``cpu_details`` reads it (via getattr)."""
        return self.details()

    def errors(self) -> list[str]:
        """Reasons some values are unknown (limit reads and counter reads), deduplicated."""
        out = list(self.limits.errors) if self.limits else []
        for e in self._chain[self._active].errors():
            if e not in out:
                out.append(e)
        return out

    # ---------------------------------------------------------------- periodic task

    @property
    def running(self) -> bool:
        return self._periodic.running

    async def start(self) -> None:
        """Take a first sample now and sample every ``interval_s`` from a task (idempotent)."""
        if not self.running:
            self.sample()
            await self._periodic.start()

    async def stop(self) -> None:
        """Stop the periodic task and close the source's files."""
        await self._periodic.stop()
        self.close()

    def close(self) -> None:
        """Close every view's files (for synchronous users); sampling reopens them if needed."""
        for src in self._chain:
            src.close()

    async def __aenter__(self) -> Sampler:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
