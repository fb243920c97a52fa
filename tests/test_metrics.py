"""FlowctlCollector, RequestDurations and metrics_handler, asserted via registry.get_sample_value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from flowctl.errors import ConfigError
from flowctl.looplag import LoopLagMonitor
from flowctl.aiohttp import metrics_handler
from flowctl.metrics import FlowctlCollector, RequestDurations
from flowctl.signal import CpuReading, StaticSignal


@dataclass
class FakeSnapshot:
    """The LimiterSnapshot fields the collector reads (contract in /tmp/contract.md)."""

    inflight: int = 3
    inflight_by_resource: dict[str, int] = field(default_factory=lambda: {"hello": 2, "/users/{id}": 1})
    max_inflight: float = 12.5
    min_rt_s: float | None = 0.004
    max_pass_per_s: float | None = 3125.0
    priority_ceilings: dict[str, float] = field(default_factory=lambda: {"critical": 6.0, "default": 4.0})
    cpu_per_request_s: float | None = 0.005
    period_margin: float | None = 0.1
    lag_budget_s: float | None = 0.026
    arrivals_within: bool = True
    cpu: CpuReading = CpuReading(
        at=1.0, utilization=0.91, utilization_smoothed=0.85, usage_cores=0.455, limit_cores=0.5,
        throttled_ratio=0.2, pressure_ratio=None,
    )  # fmt: skip
    signal_name: str = "container"
    hot: bool = True
    engaged: bool = True
    cool_off: bool = True
    dry_run: bool = False
    tokens_leaked: int = 0
    requests: dict[tuple[str, str, str], int] = field(
        default_factory=lambda: {("hello", "default", "admitted"): 7, ("hello", "sheddable", "shed"): 2}
    )
    shed_by_reason: dict[tuple[str, str], int] = field(default_factory=lambda: {("hello", "cpu"): 2})


class FakeLimiter:
    def __init__(self) -> None:
        self.snap = FakeSnapshot()
        self.snapshots = 0

    def snapshot(self) -> Any:
        self.snapshots += 1
        return self.snap


def test_collector_exports_snapshot_at_scrape_time() -> None:
    reg = CollectorRegistry()
    lim = FakeLimiter()
    reg.register(FlowctlCollector(lim, views={"host": StaticSignal("host", utilization=0.23, pressure_ratio=0.07)}))
    assert lim.snapshots == 0  # describe() does not snapshot
    get = reg.get_sample_value
    assert get("flowctl_requests_total", {"resource": "hello", "priority": "default", "outcome": "admitted"}) == 7
    assert get("flowctl_requests_total", {"resource": "hello", "priority": "sheddable", "outcome": "shed"}) == 2
    assert get("flowctl_shed_total", {"resource": "hello", "reason": "cpu"}) == 2
    assert get("flowctl_inflight", {"resource": "hello"}) == 2
    assert get("flowctl_inflight", {"resource": "/users/{id}"}) == 1
    assert get("flowctl_max_inflight") == 12.5
    assert get("flowctl_min_rt_seconds") == 0.004
    assert get("flowctl_max_pass_per_second") == 3125.0
    assert get("flowctl_inflight_ceiling", {"priority": "default"}) == 4.0
    assert get("flowctl_cpu_per_request_seconds") == 0.005
    assert get("flowctl_cpu_period_margin_ratio") == 0.1
    assert get("flowctl_lag_budget_seconds") == 0.026
    assert get("flowctl_arrivals_within_capacity") == 1
    assert get("flowctl_hot") == 1 and get("flowctl_cool_off") == 1 and get("flowctl_dry_run") == 0
    assert get("flowctl_engaged") == 1
    assert get("flowctl_tokens_leaked_total") == 0
    assert get("flowctl_cpu_utilization_ratio", {"view": "container"}) == 0.91
    assert get("flowctl_cpu_utilization_ratio", {"view": "host"}) == 0.23
    assert get("flowctl_cpu_utilization_smoothed_ratio", {"view": "container"}) == 0.85
    assert get("flowctl_cpu_usage_cores") == 0.455
    assert get("flowctl_cpu_limit_cores") == 0.5
    assert get("flowctl_cpu_throttled_ratio") == 0.2
    # pressure per view; unknown is absent, not 0 (the container has no cgroup PSI here)
    assert get("flowctl_cpu_pressure_ratio", {"view": "host"}) == 0.07
    assert get("flowctl_cpu_pressure_ratio", {"view": "container"}) is None
    assert get("flowctl_cpu_utilization_smoothed_ratio", {"view": "host"}) is None
    # no monitor attached: no lag metric
    assert get("flowctl_event_loop_lag_seconds") is None
    # live: a later scrape sees new state
    lim.snap.requests[("hello", "default", "admitted")] = 8
    lim.snap.inflight_by_resource = {"hello": 0}
    assert get("flowctl_requests_total", {"resource": "hello", "priority": "default", "outcome": "admitted"}) == 8
    assert get("flowctl_inflight", {"resource": "hello"}) == 0


def test_collector_unknown_cpu_and_loop_lag() -> None:
    reg = CollectorRegistry()
    lim = FakeLimiter()
    lim.snap.cpu = CpuReading()
    lim.snap.min_rt_s = None
    mon = LoopLagMonitor(clock=lambda: 10.3)
    mon.arm(10.0)
    mon.probe_ran(10.04)  # 40 ms late
    mon.arm(10.06)  # the next batch's probe, pending
    reg.register(FlowctlCollector(lim, loop_lag=mon, clock=lambda: 10.3))
    get = reg.get_sample_value
    assert get("flowctl_cpu_utilization_ratio", {"view": "container"}) is None
    assert get("flowctl_cpu_limit_cores") is None
    assert get("flowctl_min_rt_seconds") is None
    assert abs((get("flowctl_event_loop_lag_seconds") or 0) - 0.24) < 1e-9  # the live lag of the pending probe


def test_request_durations_bind_once() -> None:
    reg = CollectorRegistry()
    d = RequestDurations(reg, buckets=(0.01, 0.1))
    d.bind(["a", "b"])
    assert reg.get_sample_value("flowctl_request_duration_seconds_count", {"resource": "b"}) == 0
    c = d.child("a")
    assert d.child("a") is c
    c.observe(0.05)
    get = reg.get_sample_value
    assert get("flowctl_request_duration_seconds_count", {"resource": "a"}) == 1
    assert get("flowctl_request_duration_seconds_bucket", {"resource": "a", "le": "0.01"}) == 0
    assert get("flowctl_request_duration_seconds_bucket", {"resource": "a", "le": "0.1"}) == 1


def test_request_durations_match_prometheus_histogram() -> None:
    """Same observations, same buckets: our plain-int histogram exports what prometheus_client's would."""
    import random

    from prometheus_client import Histogram

    from flowctl.metrics import DURATION_BUCKETS_S

    rng = random.Random(7)
    values = [rng.choice([0.0, 0.001, 0.01, 10.0]) for _ in range(50)] + [rng.expovariate(20) for _ in range(500)]
    ours_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    ours = RequestDurations(ours_reg).child("r")
    ref = Histogram("flowctl_request_duration_seconds", "d", ["resource"], registry=ref_reg,
                    buckets=DURATION_BUCKETS_S).labels("r")  # fmt: skip
    for v in values:
        ours.observe(v)
        ref.observe(v)
    for le in [repr(b) for b in DURATION_BUCKETS_S] + ["+Inf"]:
        labels = {"resource": "r", "le": le}
        assert ours_reg.get_sample_value("flowctl_request_duration_seconds_bucket", labels) == \
            ref_reg.get_sample_value("flowctl_request_duration_seconds_bucket", labels), le
    for suffix in ("_count", "_sum"):
        a = ours_reg.get_sample_value("flowctl_request_duration_seconds" + suffix, {"resource": "r"})
        b = ref_reg.get_sample_value("flowctl_request_duration_seconds" + suffix, {"resource": "r"})
        assert a == pytest.approx(b)


def test_request_durations_reject_bad_buckets() -> None:
    with pytest.raises(ConfigError):
        RequestDurations(CollectorRegistry(), buckets=(0.1, 0.1))
    with pytest.raises(ConfigError):
        RequestDurations(CollectorRegistry(), buckets=())


async def test_metrics_handler_text_and_openmetrics() -> None:
    reg = CollectorRegistry()
    reg.register(FlowctlCollector(FakeLimiter()))
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(reg))
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
        assert 'flowctl_requests_total{outcome="admitted",priority="default",resource="hello"} 7.0' in text
        assert "# TYPE flowctl_max_inflight gauge" in text
        r = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await r.text()).rstrip().endswith("# EOF")


def test_signal_view_says_which_view_is_read() -> None:
    from flowctl.cpu.sampler import Sampler
    from flowctl.cpu.sources import Counters, Limits

    class View:
        def __init__(self, name: str) -> None:
            self.name, self.alive = name, True

        def read_limits(self) -> Limits:
            return Limits(limit_cores=1.0 if self.alive else None, source="x")

        def read_counters(self) -> Counters:
            return Counters(usage_s=1.0) if self.alive else Counters()

        def errors(self) -> list[str]:
            return []

        def close(self) -> None:
            pass

    lx, ct = View("lxcfs"), View("container")
    sampler = Sampler(lx, fallbacks=[ct])
    reg = CollectorRegistry()
    reg.register(FlowctlCollector(FakeLimiter(), views={"lxcfs": sampler, "host": StaticSignal("host")}))
    get = reg.get_sample_value
    sampler.sample(now=0.0)
    assert get("flowctl_signal_view", {"configured": "lxcfs", "active": "lxcfs"}) == 1
    lx.alive = False
    sampler.sample(now=0.1)
    assert get("flowctl_signal_view", {"configured": "lxcfs", "active": "lxcfs"}) is None
    assert get("flowctl_signal_view", {"configured": "lxcfs", "active": "container"}) == 1
    assert get("flowctl_signal_view_switches_total", {"configured": "lxcfs"}) == 1
    assert get("flowctl_signal_view", {"configured": "host", "active": "host"}) is None  # not a fallback signal
