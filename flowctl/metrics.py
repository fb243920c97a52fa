"""Prometheus export: live limiter and CPU state at scrape time, plus request durations.

Nothing here touches the global registry: callers pass a ``CollectorRegistry``.

- ``FlowctlCollector`` reads ``limiter.snapshot()`` (and each CPU view's
  latest reading) when Prometheus scrapes. The limiter counts requests with
  plain ints on its hot path; they become ``flowctl_requests_total`` and
  ``flowctl_shed_total`` here, so a request costs no prometheus call for them.
- ``RequestDurations`` owns the one per-request metric,
  ``flowctl_request_duration_seconds{resource}``, with one child bound per
  resource the first time it is seen (never a label lookup per request); its
  buckets are plain ints too, exported at scrape time.
- Serving: ``flowctl.http.metrics_page`` renders a registry; ``flowctl.aiohttp.metrics_handler``
  is the ready aiohttp handler for ``/metrics``.

Metric names are fixed (dashboards and alerts depend on them)::

    flowctl_requests_total{resource,priority,outcome}   outcome: admitted|shed|dry_run_shed
    flowctl_shed_total{resource,reason}                 reason: the trigger (cpu, cool_off, loop_lag, ...)
    flowctl_inflight{resource}
    flowctl_max_inflight, flowctl_min_rt_seconds, flowctl_max_pass_per_second
    flowctl_cpu_utilization_ratio{view}                 fast utilization of the view's CPU budget
    flowctl_cpu_utilization_smoothed_ratio{view}        its EMA
    flowctl_cpu_usage_cores, flowctl_cpu_limit_cores, flowctl_cpu_usable_cores,
    flowctl_cpu_throttled_ratio                           (the limiter's own signal)
    flowctl_cpu_pressure_ratio{view}                      PSI "some" of each view that has it
    flowctl_hot, flowctl_engaged, flowctl_cool_off, flowctl_dry_run      0/1
    flowctl_tokens_leaked_total                         tokens never released (a bug if it grows)
    flowctl_event_loop_lag_seconds                      when a loop-lag monitor is attached
    flowctl_request_duration_seconds{resource}          histogram, admission to handler return
    flowctl_signal_view{configured,active}              1 per CPU signal: the view asked for, the one read
    flowctl_signal_view_switches_total{configured}      fallbacks to another view and returns to it
    flowctl_sessions_active{resource}                   long-lived sessions past their admission (SessionMetrics)
    flowctl_session_duration_seconds{resource}          histogram, a session's whole life

A value that is unknown (no second CPU sample yet, PSI unavailable) is left
out of the scrape rather than reported as 0.
"""

from __future__ import annotations

import math

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from flowctl.errors import ConfigError
from flowctl.signal import CpuReading, CpuSignal

if TYPE_CHECKING:
    from flowctl.limiter import LimiterSnapshot
    from flowctl.looplag import LoopLagMonitor

__all__ = [
    "DURATION_BUCKETS_S",
    "DurationHistogram",
    "FallbackSignal",
    "FlowctlCollector",
    "MULTIPROCESS_PUBLISH_S",
    "MultiprocessPublisher",
    "RequestDurations",
    "SESSION_BUCKETS_S",
    "SessionMetrics",
    "check_multiprocess",
    "multiprocess_dir",
    "signal_view_families",
]

#: Request-duration buckets in seconds: sub-millisecond handlers up to slow ones.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class SnapshotSource(Protocol):
    """What the collector needs from a limiter: a consistent snapshot on demand."""

    def snapshot(self) -> LimiterSnapshot: ...


class FlowctlCollector:
    """A prometheus_client Collector over a limiter, extra CPU views and a loop-lag monitor.

    ``views`` maps a view label (``container``, ``host``, ``lxcfs``) to a CPU
    signal whose utilization is exported as ``flowctl_cpu_utilization_ratio{view}``;
    the limiter's own signal is always included under its name. Register it
    with ``registry.register(FlowctlCollector(limiter))``.
    """

    def __init__(
        self,
        limiter: SnapshotSource,
        *,
        views: Mapping[str, CpuSignal] | None = None,
        loop_lag: LoopLagMonitor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._views: dict[str, CpuSignal] = dict(views or {})
        self._loop_lag = loop_lag
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (so registering does not take a snapshot)."""
        return [*_Families(with_loop_lag=self._loop_lag is not None).all(), *signal_view_families(())]

    def collect(self) -> Iterable[Metric]:
        """Take one limiter snapshot and return every family with its current samples."""
        snap = self._limiter.snapshot()
        f = _Families(with_loop_lag=self._loop_lag is not None)
        c, g = f.counters, f.gauges

        for (resource, priority, outcome), n in sorted(snap.requests.items()):
            c["flowctl_requests"].add_metric([resource, priority, outcome], n)
        for (resource, reason), n in sorted(snap.shed_by_reason.items()):
            c["flowctl_shed"].add_metric([resource, reason], n)
        c["flowctl_tokens_leaked"].add_metric([], snap.tokens_leaked)
        for resource, n in sorted(snap.inflight_by_resource.items()):
            g["flowctl_inflight"].add_metric([resource], n)

        _set(g["flowctl_max_inflight"], snap.max_inflight)
        _set(g["flowctl_min_rt_seconds"], snap.min_rt_s)
        _set(g["flowctl_max_pass_per_second"], snap.max_pass_per_s)
        for priority, ceiling in sorted(snap.priority_ceilings.items()):
            if ceiling != math.inf:
                g["flowctl_inflight_ceiling"].add_metric([priority], ceiling)
        _set(g["flowctl_cpu_per_request_seconds"], snap.cpu_per_request_s)
        _set(g["flowctl_cpu_period_margin_ratio"], snap.period_margin)
        _set(g["flowctl_lag_budget_seconds"], snap.lag_budget_s)
        _set(g["flowctl_arrivals_within_capacity"], 1.0 if snap.arrivals_within else 0.0)
        _set(g["flowctl_hot"], 1.0 if snap.hot else 0.0)
        _set(g["flowctl_engaged"], 1.0 if snap.engaged else 0.0)
        _set(g["flowctl_cool_off"], 1.0 if snap.cool_off else 0.0)
        _set(g["flowctl_dry_run"], 1.0 if snap.dry_run else 0.0)

        views: dict[str, CpuReading] = {snap.signal_name: snap.cpu}
        for name, sig in self._views.items():
            views.setdefault(name, sig.reading)
        for name, reading in sorted(views.items()):
            if reading.utilization is not None:
                g["flowctl_cpu_utilization_ratio"].add_metric([name], reading.utilization)
            if reading.utilization_smoothed is not None:
                g["flowctl_cpu_utilization_smoothed_ratio"].add_metric([name], reading.utilization_smoothed)
            if reading.pressure_ratio is not None:
                g["flowctl_cpu_pressure_ratio"].add_metric([name], reading.pressure_ratio)
        cpu = snap.cpu
        _set(g["flowctl_cpu_usage_cores"], cpu.usage_cores)
        _set(g["flowctl_cpu_limit_cores"], cpu.limit_cores)
        _set(g["flowctl_cpu_usable_cores"], cpu.usable_cores)
        _set(g["flowctl_cpu_throttled_ratio"], cpu.throttled_ratio)
        if self._loop_lag is not None:
            _set(g["flowctl_event_loop_lag_seconds"], self._loop_lag.lag_s(self._clock()))
        return [*f.all(), *signal_view_families(self._views.values())]


class _Families:
    """One fresh, empty family per exported metric (counters keyed without ``_total``)."""

    def __init__(self, *, with_loop_lag: bool) -> None:
        C, G = CounterMetricFamily, GaugeMetricFamily
        self.counters: dict[str, CounterMetricFamily] = {
            m.name: m
            for m in (
                C("flowctl_requests", "Admission decisions by resource, priority and outcome "
                  "(admitted, shed, dry_run_shed).", labels=["resource", "priority", "outcome"]),
                C("flowctl_shed", "Requests shed, by resource and reason (the trigger that fired).",
                  labels=["resource", "reason"]),
                C("flowctl_tokens_leaked", "Admitted tokens garbage-collected unreleased (a bug if it grows)."),
            )
        }  # fmt: skip
        gauges = [
            G("flowctl_inflight", "Admitted requests not yet finished, by resource.", labels=["resource"]),
            G("flowctl_max_inflight", "Current in-flight limit (max pass rate x min RT for BBR)."),
            G("flowctl_min_rt_seconds", "Lowest recent response time the limit is based on."),
            G("flowctl_max_pass_per_second", "Highest recent completion rate the limit is based on."),
            G("flowctl_inflight_ceiling", "Always-on in-flight ceiling by priority (CPU capacity x min RT + the "
              "queue allowance); absent until the CPU cost per request is known.", labels=["priority"]),
            G("flowctl_cpu_per_request_seconds", "Group CPU time per completed request (the ceiling's cost)."),
            G("flowctl_cpu_period_margin_ratio", "Fraction of each CFS period's quota the period gate holds back "
              "(learned from throttled periods); absent while the gate is off or has no quota."),
            G("flowctl_lag_budget_seconds", "The lag stage's budget before the class's scale and the trigger's "
              "own threshold (5 ms by default) as a floor; looser while arrivals are within the capacity."),
            G("flowctl_arrivals_within_capacity", "1 when the last window of arrivals was within the group's CPU "
              "capacity, give or take chance: a request may wait for the next CFS period, the lag budget is looser."),
            G("flowctl_hot", "1 while a shedding signal (CPU, throttling, PSI, a trigger) is over its threshold."),
            G("flowctl_engaged", "1 while the limiter is engaged (hot, or in its cool-off): the limit and the "
              "period gate's pacing shed only then."),
            G("flowctl_cool_off", "1 during the cool-off after a shed (shedding continues over the limit)."),
            G("flowctl_dry_run", "1 when the limiter only reports what it would shed, else 0."),
            G("flowctl_cpu_utilization_ratio", "CPU used over the last interval / the view's CPU budget.",
              labels=["view"]),
            G("flowctl_cpu_utilization_smoothed_ratio", "EMA of flowctl_cpu_utilization_ratio.", labels=["view"]),
            G("flowctl_cpu_usage_cores", "CPU cores in use over the last interval (limiter's signal)."),
            G("flowctl_cpu_limit_cores", "Effective CPU budget in cores (limiter's signal)."),
            G("flowctl_cpu_usable_cores", "Cores the group's processes can keep busy (<= the limit: one Python "
              "process uses 1); utilization is measured against it."),
            G("flowctl_cpu_throttled_ratio", "Fraction of CFS periods throttled over the last interval."),
            G("flowctl_cpu_pressure_ratio", "Fraction of wall time some task waited for CPU (PSI some), per view: "
              "container = the cgroup's own cpu.pressure, host = /proc/pressure/cpu.", labels=["view"]),
        ]  # fmt: skip
        if with_loop_lag:
            gauges.append(G("flowctl_event_loop_lag_seconds",
                            "How late the event loop runs a due timer (live while late, else the last tick)."))  # fmt: skip
        self.gauges: dict[str, GaugeMetricFamily] = {m.name: m for m in gauges}

    def all(self) -> list[Metric]:
        return [*self.counters.values(), *self.gauges.values()]


def _set(family: GaugeMetricFamily, value: float | None) -> None:
    if value is not None:
        family.add_metric([], float(value))


class DurationHistogram:
    """One resource's duration histogram: plain-int buckets, exported at scrape time.

    ``observe`` is a bisect and two additions (no lock, no prometheus call);
    ``counts`` is never replaced (the aiohttp guard keeps a reference to it):
    like the limiter, it assumes one thread (one event loop).
    """

    __slots__ = ("bounds", "counts", "sum_s")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds: tuple[float, ...] = tuple(bounds)  # upper bounds (le), without +Inf
        self.counts: list[int] = [0] * (len(self.bounds) + 1)  # per bucket, last one is +Inf
        self.sum_s = 0.0

    def observe(self, amount: float) -> None:
        """Record one duration in seconds."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum_s += amount


class RequestDurations:
    """``flowctl_request_duration_seconds{resource}``: one histogram bound per resource.

    ``child(resource)`` binds on first use and caches, so the per-request cost
    is one ``observe`` on an already-bound child (about 0.2 us; a
    prometheus_client Histogram child costs about 1-2 us). The counts are
    exported by a collector registered on ``registry``. Keep resources bounded
    (route names or patterns, never raw paths).
    """

    name = "flowctl_request_duration_seconds"

    def __init__(self, registry: CollectorRegistry, *, buckets: Sequence[float] = DURATION_BUCKETS_S) -> None:
        bounds = sorted(float(b) for b in buckets if b != float("inf"))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ConfigError(f"duration buckets must be distinct finite numbers, got {buckets!r}")
        self._bounds = tuple(bounds)
        self._children: dict[str, DurationHistogram] = {}
        registry.register(self)

    @property
    def bounds(self) -> tuple[float, ...]:
        """The bucket upper bounds in seconds (without +Inf)."""
        return self._bounds

    def children(self) -> Mapping[str, DurationHistogram]:
        """Every bound child, by resource (read-only view for exporters)."""
        return self._children

    def child(self, resource: str) -> DurationHistogram:
        """The bound child for ``resource`` (bound once, then cached)."""
        c = self._children.get(resource)
        if c is None:
            c = self._children[resource] = DurationHistogram(self._bounds)
        return c

    def bind(self, resources: Iterable[str]) -> None:
        """Bind children up front (e.g. every route at start-up) so they show before traffic."""
        for r in resources:
            self.child(r)

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        fam = self._family()
        les = [_le(b) for b in self._bounds] + ["+Inf"]
        for resource, h in sorted(self._children.items()):
            total, cumulative = 0, []
            for le, n in zip(les, h.counts):
                total += n
                cumulative.append((le, float(total)))
            fam.add_metric([resource], cumulative, h.sum_s)
        return [fam]

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            self.name, "Time from admission to the handler's return, for admitted requests.", labels=["resource"]
        )


def _le(bound: float) -> str:
    """Bucket label as prometheus_client writes it (0.005 -> "0.005", 1 -> "1.0")."""
    return repr(float(bound))


# -- which CPU view a signal reads (fallback when the configured one fails) ----------------------


@runtime_checkable
class FallbackSignal(Protocol):
    """A CPU signal that may read another view than the configured one (``flowctl.cpu.Sampler``)."""

    @property
    def configured_view(self) -> str: ...

    @property
    def active_view(self) -> str: ...

    @property
    def switches_total(self) -> int: ...


def signal_view_families(signals: Iterable[object]) -> list[Metric]:
    """``flowctl_signal_view{configured,active}`` (1) and the switch counter for each fallback signal."""
    view = GaugeMetricFamily("flowctl_signal_view", "1 for each CPU signal: the view configured and the view "
                             "read now (another one while the configured view fails).", labels=["configured", "active"])
    switches = CounterMetricFamily("flowctl_signal_view_switches", "Switches of a CPU signal to a fallback view "
                                   "and back.", labels=["configured"])
    seen: set[str] = set()
    for sig in signals:
        if isinstance(sig, FallbackSignal) and sig.configured_view not in seen:
            seen.add(sig.configured_view)
            view.add_metric([sig.configured_view, sig.active_view], 1.0)
            switches.add_metric([sig.configured_view], sig.switches_total)
    return [view, switches]


# -- long-lived sessions (WebSockets, SSE, streams past their admission) ---------------------------

#: Session-duration buckets in seconds: a short download up to an hour-long WebSocket.
SESSION_BUCKETS_S: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)


class SessionMetrics:
    """``flowctl_sessions_active{resource}`` and ``flowctl_session_duration_seconds{resource}``.

    A session is a long-lived request after its admission ended (a WebSocket
    after its handshake, a stream after its headers): it no longer counts in
    the limiter's in-flight or RT window, only here. Plain ints, exported at
    scrape time; one event loop (no lock). ``begin``/``end`` are called once
    per session, never per plain request.
    """

    active_name = "flowctl_sessions_active"
    duration_name = "flowctl_session_duration_seconds"

    def __init__(self, registry: CollectorRegistry | None, *, buckets: Sequence[float] = SESSION_BUCKETS_S) -> None:
        self._bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        self.bounds = self._bounds
        self.active: dict[str, int] = {}
        self.durations: dict[str, DurationHistogram] = {}
        if registry is not None:
            registry.register(self)

    def begin(self, resource: str) -> None:
        """A session of ``resource`` started (its admission just ended)."""
        self.active[resource] = self.active.get(resource, 0) + 1
        if resource not in self.durations:
            self.durations[resource] = DurationHistogram(self._bounds)

    def end(self, resource: str, duration_s: float) -> None:
        """A session of ``resource`` that ``begin`` counted ended after ``duration_s`` (admission to end)."""
        self.active[resource] -= 1
        self.durations[resource].observe(duration_s)

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        active, hist = self._families()
        for resource, n in sorted(self.active.items()):
            active.add_metric([resource], n)
        les = [_le(b) for b in self._bounds] + ["+Inf"]
        for resource, h in sorted(self.durations.items()):
            total, cumulative = 0, []
            for le, n in zip(les, h.counts):
                total += n
                cumulative.append((le, float(total)))
            hist.add_metric([resource], cumulative, h.sum_s)
        return [active, hist]

    def _families(self) -> tuple[GaugeMetricFamily, HistogramMetricFamily]:
        return (
            GaugeMetricFamily(self.active_name, "Long-lived sessions (WebSockets, streams) past their admission, "
                              "by resource: not in flowctl_inflight.", labels=["resource"]),
            HistogramMetricFamily(self.duration_name, "Whole life of a session, admission to end (never in the "
                                  "limiter's RT window).", labels=["resource"]),
        )  # fmt: skip


# -- prometheus_client multiprocess mode (gunicorn and other pre-fork servers) ----------------------

#: How often each worker copies its live state into the multiprocess files (and at each of its scrapes).
MULTIPROCESS_PUBLISH_S = 1.0


def multiprocess_dir() -> str | None:
    """prometheus_client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``), or None when unset."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


def check_multiprocess() -> str:
    """The multiprocess directory; ConfigError when it is unset or was set too late to take effect."""
    from prometheus_client import values

    path = multiprocess_dir()
    if path is None:
        raise ConfigError("multiprocess metrics need PROMETHEUS_MULTIPROC_DIR (an empty directory) in the environment")
    if values.ValueClass is values.MutexValue:
        raise ConfigError(
            "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported, so this process writes no "
            "multiprocess files: set it in the shell (or gunicorn's environment) that starts the workers"
        )
    if not os.path.isdir(path):
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={path!r} is not a directory")
    return path


class MultiprocessPublisher:
    """One worker's flowctl state, published to prometheus_client's multiprocess files.

    Custom collectors (``FlowctlCollector``, the duration and session
    collectors) read live objects of one process, so under several workers a
    scrape would see only the worker that answered it. This copies the same
    numbers into multiprocess metrics, under the same names, on every
    ``publish()`` (the owner calls it every ``MULTIPROCESS_PUBLISH_S`` and
    before each scrape it answers). A ``MultiProcessCollector`` then merges
    every worker's files:

    - counters and histograms (requests, sheds, leaked tokens, request and
      session durations) are **summed** over workers, dead ones included;
    - ``flowctl_inflight`` and ``flowctl_sessions_active`` are summed over
      live workers (``livesum``);
    - each worker's own limit (``flowctl_max_inflight``, ``flowctl_min_rt_seconds``,
      ``flowctl_max_pass_per_second``) and loop lag keep one series per live
      worker, with the ``pid`` label prometheus_client adds (``liveall``);
    - shared readings (the CPU views, ``flowctl_hot``, ``flowctl_cool_off``,
      ``flowctl_dry_run``) are the largest over live workers (``livemax``).

    A value that is unknown keeps its last published value. Values of other
    workers are as fresh as their last publish (at most about a second old).
    """

    def __init__(
        self,
        limiter: SnapshotSource,
        *,
        durations: RequestDurations | None = None,
        sessions: SessionMetrics | None = None,
        views: Mapping[str, CpuSignal] | None = None,
        loop_lag: LoopLagMonitor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        check_multiprocess()
        self._limiter = limiter
        self._durations = durations
        self._sessions = sessions
        self._views: dict[str, CpuSignal] = dict(views or {})
        self._loop_lag = loop_lag
        self._clock = clock
        C, G = Counter, Gauge
        self._requests = C("flowctl_requests", "Admission decisions by resource, priority and outcome.",
                           ["resource", "priority", "outcome"], registry=None)
        self._shed = C("flowctl_shed", "Requests shed, by resource and reason.", ["resource", "reason"], registry=None)
        self._leaked = C("flowctl_tokens_leaked", "Admitted tokens garbage-collected unreleased.", registry=None)
        self._inflight = G("flowctl_inflight", "Admitted requests not yet finished, by resource (sum over workers).",
                           ["resource"], registry=None, multiprocess_mode="livesum")
        self._sessions_active = G(SessionMetrics.active_name, "Long-lived sessions past their admission, by resource "
                                  "(sum over workers).", ["resource"], registry=None, multiprocess_mode="livesum")
        per_worker = {
            "flowctl_max_inflight": "This worker's in-flight limit.",
            "flowctl_min_rt_seconds": "Lowest recent response time this worker's limit is based on.",
            "flowctl_max_pass_per_second": "Highest recent completion rate this worker's limit is based on.",
        }
        if loop_lag is not None:
            per_worker["flowctl_event_loop_lag_seconds"] = "How late this worker's event loop runs a due timer."
        self._per_worker = {n: G(n, h, registry=None, multiprocess_mode="liveall") for n, h in per_worker.items()}
        shared = {
            "flowctl_hot": "1 while a shedding signal is over its threshold in some worker.",
            "flowctl_engaged": "1 while some worker's limiter is engaged (hot, or in its cool-off).",
            "flowctl_cool_off": "1 while some worker is in its cool-off.",
            "flowctl_dry_run": "1 when the limiter only reports what it would shed.",
            "flowctl_cpu_usage_cores": "CPU cores in use over the last interval (limiter's signal).",
            "flowctl_cpu_limit_cores": "Effective CPU budget in cores (limiter's signal).",
            "flowctl_cpu_usable_cores": "Cores the group's processes can keep busy (<= the limit).",
            "flowctl_cpu_throttled_ratio": "Fraction of CFS periods throttled over the last interval.",
        }
        self._shared = {n: G(n, h, registry=None, multiprocess_mode="livemax") for n, h in shared.items()}
        self._per_view = {
            n: G(n, h, ["view"], registry=None, multiprocess_mode="livemax")
            for n, h in (
                ("flowctl_cpu_utilization_ratio", "CPU used over the last interval / the view's CPU budget."),
                ("flowctl_cpu_utilization_smoothed_ratio", "EMA of flowctl_cpu_utilization_ratio."),
                ("flowctl_cpu_pressure_ratio", "Fraction of wall time some task waited for CPU (PSI some)."),
            )
        }  # fmt: skip
        self._request_hist: Histogram | None = None
        if durations is not None:
            self._request_hist = Histogram(durations.name, "Time from admission to the handler's return, for admitted "
                                           "requests.", ["resource"], buckets=durations.bounds, registry=None)
        self._session_hist: Histogram | None = None
        if sessions is not None:
            self._session_hist = Histogram(SessionMetrics.duration_name, "Whole life of a session, admission to end.",
                                           ["resource"], buckets=sessions.bounds, registry=None)
        self._last: dict[object, float] = {}  # published cumulative values, by key
        self._inflight_seen: set[str] = set()
        self._sessions_seen: set[str] = set()
        from flowctl.periodic import Periodic

        self._periodic = Periodic(self.publish, MULTIPROCESS_PUBLISH_S, name="flowctl-multiprocess-publish", clock=clock)

    async def start(self) -> None:
        """Publish now, then every ``MULTIPROCESS_PUBLISH_S`` (owned by ``flowctl.aiohttp.setup``'s cleanup_ctx)."""
        self.publish()
        await self._periodic.start()

    async def stop(self) -> None:
        """Stop the periodic publish and publish a last time (a worker's final counts stay in the sum)."""
        await self._periodic.stop()
        self.publish()

    def publish(self) -> None:
        """Copy the current snapshot into the multiprocess files (counters as deltas since the last call)."""
        snap = self._limiter.snapshot()
        for key, n in snap.requests.items():
            self._add(self._requests.labels(*key), ("req", key), n)
        for shed_key, n in snap.shed_by_reason.items():
            self._add(self._shed.labels(*shed_key), ("shed", shed_key), n)
        self._add(self._leaked, "leaked", snap.tokens_leaked)
        self._set_by_label(self._inflight, snap.inflight_by_resource, self._inflight_seen)
        if self._sessions is not None:
            self._set_by_label(self._sessions_active, self._sessions.active, self._sessions_seen)
        values: dict[str, float | None] = {
            "flowctl_max_inflight": snap.max_inflight,
            "flowctl_min_rt_seconds": snap.min_rt_s,
            "flowctl_max_pass_per_second": snap.max_pass_per_s,
            "flowctl_hot": 1.0 if snap.hot else 0.0,
            "flowctl_engaged": 1.0 if snap.engaged else 0.0,
            "flowctl_cool_off": 1.0 if snap.cool_off else 0.0,
            "flowctl_dry_run": 1.0 if snap.dry_run else 0.0,
            "flowctl_cpu_usage_cores": snap.cpu.usage_cores,
            "flowctl_cpu_limit_cores": snap.cpu.limit_cores,
            "flowctl_cpu_usable_cores": snap.cpu.usable_cores,
            "flowctl_cpu_throttled_ratio": snap.cpu.throttled_ratio,
        }
        if self._loop_lag is not None:
            values["flowctl_event_loop_lag_seconds"] = self._loop_lag.lag_s(self._clock())
        for name, value in values.items():
            gauge = self._per_worker.get(name) or self._shared[name]
            if value is not None:
                gauge.set(float(value))
        readings: dict[str, CpuReading] = {snap.signal_name: snap.cpu}
        for name, sig in self._views.items():
            readings.setdefault(name, sig.reading)
        for view, reading in readings.items():
            for metric, value in (
                ("flowctl_cpu_utilization_ratio", reading.utilization),
                ("flowctl_cpu_utilization_smoothed_ratio", reading.utilization_smoothed),
                ("flowctl_cpu_pressure_ratio", reading.pressure_ratio),
            ):
                if value is not None:
                    self._per_view[metric].labels(view).set(value)
        if self._request_hist is not None and self._durations is not None:
            self._add_histograms(self._request_hist, "rt", self._durations.children())
        if self._session_hist is not None and self._sessions is not None:
            self._add_histograms(self._session_hist, "session", self._sessions.durations)

    def _add(self, counter: Any, key: object, total: float) -> None:
        delta = total - self._last.get(key, 0.0)
        if delta > 0:
            counter.inc(delta)
            self._last[key] = total

    @staticmethod
    def _set_by_label(gauge: Any, current: Mapping[str, int], seen: set[str]) -> None:
        for label in seen - current.keys():
            gauge.labels(label).set(0)  # no longer in flight here: 0, not its last value
        for label, n in current.items():
            gauge.labels(label).set(n)
        seen.update(current)

    def _add_histograms(self, hist: Any, kind: str, children: Mapping[str, DurationHistogram]) -> None:
        for resource, h in children.items():
            child = hist.labels(resource)
            buckets = getattr(child, "_buckets", None)  # prometheus_client keeps per-bucket counts here
            if buckets is None or len(buckets) != len(h.counts):
                raise ConfigError("this prometheus_client version's Histogram cannot be published in bulk")
            for i, n in enumerate(h.counts):
                key = (kind, resource, i)
                delta = n - self._last.get(key, 0.0)
                if delta > 0:
                    buckets[i].inc(delta)
                    self._last[key] = n
            key_sum = (kind, resource, "sum")
            delta_s = h.sum_s - self._last.get(key_sum, 0.0)
            if delta_s != 0:
                child._sum.inc(delta_s)
                self._last[key_sum] = h.sum_s
