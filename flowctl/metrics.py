"""Prometheus export: live limiter and CPU state at scrape time, plus request durations.

Nothing here touches the global registry: callers pass a ``CollectorRegistry``.

- ``FlowctlCollector`` reads ``limiter.snapshot()`` (and each CPU view's
  latest reading) when Prometheus scrapes. The limiter counts requests with
  plain ints on its hot path; they become ``flowctl_requests_total`` and
  ``flowctl_shed_total`` here, so a request costs no prometheus call for them.
- ``RequestDurations`` owns the one per-request metric,
  ``flowctl_request_duration_seconds{resource}``, with one child bound per
  resource the first time it is seen (never ``.labels()`` per request).
- ``metrics_handler(registry)`` is a ready aiohttp handler for ``/metrics``.

Metric names are fixed (dashboards and alerts depend on them)::

    flowctl_requests_total{resource,priority,outcome}   outcome: admitted|shed|dry_run_shed
    flowctl_shed_total{resource,reason}                 reason: the trigger (cpu, cool_off, loop_lag, ...)
    flowctl_inflight{resource}
    flowctl_max_inflight, flowctl_min_rt_seconds, flowctl_max_pass_per_second
    flowctl_cpu_utilization_ratio{view}                 fast utilization of the view's CPU budget
    flowctl_cpu_utilization_smoothed_ratio{view}        its EMA
    flowctl_cpu_usage_cores, flowctl_cpu_limit_cores,
    flowctl_cpu_throttled_ratio, flowctl_cpu_pressure_ratio   (the limiter's own signal)
    flowctl_hot, flowctl_dry_run                        0/1
    flowctl_event_loop_lag_seconds                      when a loop-lag monitor is attached
    flowctl_request_duration_seconds{resource}          histogram, admission to handler return

A value that is unknown (no second CPU sample yet, PSI unavailable) is left
out of the scrape rather than reported as 0.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from flowctl.signal import CpuReading, CpuSignal

if TYPE_CHECKING:
    from flowctl.limiter import LimiterSnapshot
    from flowctl.looplag import LoopLagMonitor

__all__ = [
    "DURATION_BUCKETS_S",
    "FlowctlCollector",
    "RequestDurations",
    "metrics_handler",
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
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """Take one limiter snapshot and yield every family with its current samples."""
        snap = self._limiter.snapshot()
        fams = {f.name: f for f in self._families()}

        requests = fams["flowctl_requests"]
        assert isinstance(requests, CounterMetricFamily)
        for (resource, priority, outcome), n in sorted(snap.requests.items()):
            requests.add_metric([resource, priority, outcome], n)
        shed = fams["flowctl_shed"]
        assert isinstance(shed, CounterMetricFamily)
        for (resource, reason), n in sorted(snap.shed_by_reason.items()):
            shed.add_metric([resource, reason], n)

        _add(fams["flowctl_inflight"], snap.inflight_by_resource)
        _set(fams["flowctl_max_inflight"], snap.max_inflight)
        _set(fams["flowctl_min_rt_seconds"], snap.min_rt_s)
        _set(fams["flowctl_max_pass_per_second"], snap.max_pass_per_s)
        _set(fams["flowctl_hot"], 1.0 if snap.hot else 0.0)
        _set(fams["flowctl_dry_run"], 1.0 if snap.dry_run else 0.0)

        views: dict[str, CpuReading] = {snap.signal_name: snap.cpu}
        for name, sig in self._views.items():
            views.setdefault(name, sig.reading)
        util = fams["flowctl_cpu_utilization_ratio"]
        smooth = fams["flowctl_cpu_utilization_smoothed_ratio"]
        for name, reading in sorted(views.items()):
            if reading.utilization is not None:
                util.add_metric([name], reading.utilization)
            if reading.utilization_smoothed is not None:
                smooth.add_metric([name], reading.utilization_smoothed)
        cpu = snap.cpu
        _set(fams["flowctl_cpu_usage_cores"], cpu.usage_cores)
        _set(fams["flowctl_cpu_limit_cores"], cpu.limit_cores)
        _set(fams["flowctl_cpu_throttled_ratio"], cpu.throttled_ratio)
        _set(fams["flowctl_cpu_pressure_ratio"], cpu.pressure_ratio)
        if self._loop_lag is not None:
            _set(fams["flowctl_event_loop_lag_seconds"], self._loop_lag.lag_s(self._clock()))
        return list(fams.values())

    def _families(self) -> list[Metric]:
        g, c = GaugeMetricFamily, CounterMetricFamily
        fams: list[Metric] = [
            c("flowctl_requests", "Admission decisions by resource, priority and outcome (admitted, shed, dry_run_shed).",
              labels=["resource", "priority", "outcome"]),
            c("flowctl_shed", "Requests shed, by resource and reason (the trigger that fired).",
              labels=["resource", "reason"]),
            g("flowctl_inflight", "Admitted requests not yet finished, by resource.", labels=["resource"]),
            g("flowctl_max_inflight", "Current in-flight limit (max pass rate x min RT for BBR)."),
            g("flowctl_min_rt_seconds", "Lowest recent response time the limit is based on."),
            g("flowctl_max_pass_per_second", "Highest recent completion rate the limit is based on."),
            g("flowctl_hot", "1 while the limiter considers the CPU saturated (or is cooling off), else 0."),
            g("flowctl_dry_run", "1 when the limiter only reports what it would shed, else 0."),
            g("flowctl_cpu_utilization_ratio", "CPU used over the last interval / the view's CPU budget.",
              labels=["view"]),
            g("flowctl_cpu_utilization_smoothed_ratio", "EMA of flowctl_cpu_utilization_ratio.", labels=["view"]),
            g("flowctl_cpu_usage_cores", "CPU cores in use over the last interval (limiter's signal)."),
            g("flowctl_cpu_limit_cores", "Effective CPU budget in cores (limiter's signal)."),
            g("flowctl_cpu_throttled_ratio", "Fraction of CFS periods throttled over the last interval."),
            g("flowctl_cpu_pressure_ratio", "Fraction of wall time some task waited for CPU (PSI some)."),
        ]  # fmt: skip
        if self._loop_lag is not None:
            fams.append(g("flowctl_event_loop_lag_seconds",
                          "How late the event loop runs a due timer (live while late, else the last tick)."))  # fmt: skip
        return fams


def _set(family: Metric, value: float | None) -> None:
    if value is not None and isinstance(family, GaugeMetricFamily):
        family.add_metric([], float(value))


def _add(family: Metric, values: Mapping[str, int | float]) -> None:
    if isinstance(family, GaugeMetricFamily):
        for label, value in sorted(values.items()):
            family.add_metric([label], float(value))


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class RequestDurations:
    """``flowctl_request_duration_seconds{resource}``: one bound child per resource.

    ``child(resource)`` binds on first use and caches, so the per-request cost
    is one ``observe`` on an already-bound child. Keep resources bounded
    (route names or patterns, never raw paths).
    """

    def __init__(self, registry: CollectorRegistry, *, buckets: Sequence[float] = DURATION_BUCKETS_S) -> None:
        self._histogram = Histogram(
            "flowctl_request_duration_seconds",
            "Time from admission to the handler's return, for admitted requests.",
            ["resource"],
            registry=registry,
            buckets=tuple(buckets),
        )
        self._children: dict[str, _Observer] = {}

    def child(self, resource: str) -> _Observer:
        """The bound child for ``resource`` (bound once, then cached)."""
        c = self._children.get(resource)
        if c is None:
            c = self._children[resource] = self._histogram.labels(resource)
        return c

    def bind(self, resources: Iterable[str]) -> None:
        """Bind children up front (e.g. every route at start-up) so they show before traffic."""
        for r in resources:
            self.child(r)


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler serving ``registry`` in the text format the scraper asks for."""

    async def handle_metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    return handle_metrics
