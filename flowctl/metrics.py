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
    flowctl_cpu_usage_cores, flowctl_cpu_limit_cores,
    flowctl_cpu_throttled_ratio                           (the limiter's own signal)
    flowctl_cpu_pressure_ratio{view}                      PSI "some" of each view that has it
    flowctl_hot, flowctl_cool_off, flowctl_dry_run      0/1
    flowctl_tokens_leaked_total                         tokens never released (a bug if it grows)
    flowctl_event_loop_lag_seconds                      when a loop-lag monitor is attached
    flowctl_request_duration_seconds{resource}          histogram, admission to handler return
    flowctl_signal_view{configured,active}              1 per CPU signal: the view asked for, the one read
    flowctl_signal_view_switches_total{configured}      fallbacks to another view and returns to it

A value that is unknown (no second CPU sample yet, PSI unavailable) is left
out of the scrape rather than reported as 0.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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
    "RequestDurations",
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
        _set(g["flowctl_hot"], 1.0 if snap.hot else 0.0)
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
            G("flowctl_hot", "1 while a shedding signal (CPU, throttling, PSI, a trigger) is over its threshold."),
            G("flowctl_cool_off", "1 during the cool-off after a shed (shedding continues over the limit)."),
            G("flowctl_dry_run", "1 when the limiter only reports what it would shed, else 0."),
            G("flowctl_cpu_utilization_ratio", "CPU used over the last interval / the view's CPU budget.",
              labels=["view"]),
            G("flowctl_cpu_utilization_smoothed_ratio", "EMA of flowctl_cpu_utilization_ratio.", labels=["view"]),
            G("flowctl_cpu_usage_cores", "CPU cores in use over the last interval (limiter's signal)."),
            G("flowctl_cpu_limit_cores", "Effective CPU budget in cores (limiter's signal)."),
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
