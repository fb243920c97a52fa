"""Sampler: rates from two readings, unknown first sample, backwards counters, EMA, async lifetime."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flowctl.cpu.sampler import Sampler
from flowctl.cpu.sources import Counters, Limits
from flowctl.errors import ConfigError
from flowctl.signal import CpuSignal


class FakeSource:
    def __init__(self, limit: float | None = 0.5, name: str = "container") -> None:
        self._name = name
        self.limit = limit
        self.counters = Counters(usage_s=0.0, periods=0, throttled_periods=0, throttled_s=0.0, pressure_s=0.0)
        self.limit_reads = 0
        self.closed = 0

    @property
    def name(self) -> str:
        return self._name

    def read_limits(self) -> Limits:
        self.limit_reads += 1
        return Limits(limit_cores=self.limit, source="quota")

    def read_counters(self) -> Counters:
        return self.counters

    def errors(self) -> list[str]:
        return []

    def close(self) -> None:
        self.closed += 1


def test_is_a_cpu_signal_named_after_its_source() -> None:
    s = Sampler(FakeSource(name="lxcfs"))
    assert isinstance(s, CpuSignal) and s.name == "lxcfs"


def test_first_sample_unknown_then_rates() -> None:
    src = FakeSource(limit=0.5)
    s = Sampler(src, clock=lambda: 0.0)
    r = s.sample(now=10.0)
    assert r.utilization is None and r.usage_cores is None and r.limit_cores == 0.5
    src.counters = Counters(usage_s=0.04, periods=10, throttled_periods=3, throttled_s=0.01, pressure_s=0.02)
    r = s.sample(now=10.1)
    assert r.usage_cores == pytest.approx(0.4)
    assert r.utilization == pytest.approx(0.8)
    assert r.throttled_ratio == pytest.approx(0.3)
    assert r.pressure_ratio == pytest.approx(0.2)
    assert r.utilization_smoothed == pytest.approx(0.8)  # the first EMA value is the sample itself
    assert r.at == 10.1


def test_no_periods_elapsed_means_not_throttled_and_missing_means_unknown() -> None:
    src = FakeSource()
    s = Sampler(src)
    s.sample(now=0.0)
    src.counters = Counters(usage_s=0.01, periods=0, throttled_periods=0, throttled_s=0.0, pressure_s=None)
    r = s.sample(now=0.1)
    assert r.throttled_ratio == 0.0 and r.pressure_ratio is None


def test_counter_backwards_drops_sample_and_resets() -> None:
    src = FakeSource(limit=1.0)
    s = Sampler(src)
    s.sample(now=0.0)
    src.counters = Counters(usage_s=0.05, periods=10, throttled_periods=0, throttled_s=0.0, pressure_s=0.0)
    assert s.sample(now=0.1).utilization == pytest.approx(0.5)
    src.counters = Counters(usage_s=0.01, periods=1, throttled_periods=0, throttled_s=0.0, pressure_s=0.0)  # recreated
    r = s.sample(now=0.2)
    assert r.utilization is None and r.utilization_smoothed is None and s.dropped_total == 1
    src.counters = Counters(usage_s=0.02, periods=2, throttled_periods=0, throttled_s=0.0, pressure_s=0.0)
    r = s.sample(now=0.3)
    assert r.utilization == pytest.approx(0.1) and r.utilization_smoothed == pytest.approx(0.1)


def test_generation_change_drops_sample_and_resets() -> None:
    """A source that now reads another cgroup (higher counters everywhere) must not yield a delta."""
    src = FakeSource(limit=1.0)
    s = Sampler(src)
    s.sample(now=0.0)
    src.counters = Counters(usage_s=0.05, periods=10, throttled_periods=0, throttled_s=0.0, pressure_s=0.0)
    assert s.sample(now=0.1).utilization_smoothed == pytest.approx(0.5)
    src.counters = Counters(usage_s=7.0, periods=900, throttled_periods=5, throttled_s=1.0, pressure_s=2.0,
                            generation=1)
    r = s.sample(now=0.2)
    assert r.utilization is None and r.utilization_smoothed is None and r.pressure_ratio is None
    assert s.dropped_total == 1
    src.counters = Counters(usage_s=7.01, periods=901, throttled_periods=5, throttled_s=1.0, pressure_s=2.0,
                            generation=1)
    r = s.sample(now=0.3)
    assert r.utilization == pytest.approx(0.1) and r.utilization_smoothed == pytest.approx(0.1)


def test_clock_not_advancing_drops() -> None:
    src = FakeSource()
    s = Sampler(src)
    s.sample(now=1.0)
    assert s.sample(now=1.0).utilization is None and s.dropped_total == 1


def test_host_style_utilization_uses_total() -> None:
    src = FakeSource(limit=2.0, name="host")
    src.counters = Counters(usage_s=0.0, total_s=0.0)
    s = Sampler(src)
    s.sample(now=0.0)
    src.counters = Counters(usage_s=0.05, total_s=0.2)
    r = s.sample(now=0.1)
    assert r.utilization == pytest.approx(0.25) and r.usage_cores == pytest.approx(0.5)


def test_ema_time_constant() -> None:
    src = FakeSource(limit=1.0)
    s = Sampler(src, tau_s=1.0)
    usage = 0.0
    s.sample(now=0.0)
    src.counters = Counters(usage_s=0.0)
    s.sample(now=0.1)  # utilization 0 -> EMA starts at 0
    t = 0.1
    for _ in range(10):  # 1 s of full load
        t += 0.1
        usage += 0.1
        src.counters = Counters(usage_s=usage)
        r = s.sample(now=round(t, 6))
    assert r.utilization == pytest.approx(1.0)
    assert r.utilization_smoothed == pytest.approx(1 - 2.718281828 ** -1, rel=1e-3)


def test_limits_reread_periodically() -> None:
    src = FakeSource(limit=0.5)
    s = Sampler(src, limits_interval_s=1.0)
    s.sample(now=0.0)
    src.limit = 1.5
    assert s.sample(now=0.5).limit_cores == 0.5
    assert s.sample(now=1.0).limit_cores == 1.5
    assert src.limit_reads == 2


async def test_async_context_samples_periodically_and_closes() -> None:
    src = FakeSource(limit=1.0)
    t = [0.0]

    def clock() -> float:
        t[0] += 0.01
        return t[0]

    async with Sampler(src, interval_s=0.01, clock=clock) as s:
        assert s.running
        for _ in range(200):
            await asyncio.sleep(0.005)
            if s.samples_total >= 3:
                break
        assert s.samples_total >= 3
    assert not s.running and src.closed == 1


def test_nothing_starts_without_an_owner() -> None:
    s = Sampler(FakeSource())
    assert not s.running and s.samples_total == 0


@pytest.mark.parametrize(("kw", "name"), [
    ({"interval_s": 0}, "interval_s"), ({"interval_s": float("nan")}, "interval_s"),
    ({"interval_s": float("inf")}, "interval_s"), ({"tau_s": 0}, "tau_s"), ({"tau_s": float("inf")}, "tau_s"),
    ({"limits_interval_s": -1.0}, "limits_interval_s"), ({"limits_interval_s": float("nan")}, "limits_interval_s"),
    ({"limits_interval_s": float("inf")}, "limits_interval_s"),
])
def test_bad_arguments_are_config_errors_naming_the_parameter(kw: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Sampler(FakeSource(), **kw)


def test_limits_interval_zero_rereads_every_sample() -> None:
    src = FakeSource()
    s = Sampler(src, limits_interval_s=0)
    s.sample(now=0.0)
    s.sample(now=0.0)
    assert src.limit_reads == 2


# -- fallback between views -------------------------------------------------------------------


class DyingSource(FakeSource):
    """A view that can die (no limit, no usage: what a dead lxcfs gives) and come back."""

    def __init__(self, name: str, limit: float) -> None:
        super().__init__(limit=limit, name=name)
        self.alive = True
        self.usage_s = 0.0

    def read_limits(self) -> Limits:
        self.limit_reads += 1
        return Limits(limit_cores=self.limit if self.alive else None, source="x",
                      errors=() if self.alive else ("ENOTCONN",))

    def read_counters(self) -> Counters:
        return Counters(usage_s=self.usage_s) if self.alive else Counters()


def test_a_failing_view_falls_back_in_order_and_returns(caplog: pytest.LogCaptureFixture) -> None:
    lx, ct, host = DyingSource("lxcfs", 1.0), DyingSource("container", 0.5), DyingSource("host", 2.0)
    s = Sampler(lx, fallbacks=[ct, host], limits_interval_s=1.0)
    seen: list[tuple[str, float | None, float | None]] = []

    def step(now: float, used: float) -> None:
        for src in (lx, ct, host):
            src.usage_s += used
        r = s.sample(now=now)
        seen.append((s.active_view, r.limit_cores, r.utilization_smoothed))

    step(0.0, 0.0)
    step(0.1, 0.04)
    assert seen[-1][0] == "lxcfs" and seen[-1][1] == 1.0
    lx.alive = False
    caplog.clear()
    for i in range(2, 20):  # 1.7 s dead: one warning, the container view, a limit and a utilization throughout
        step(i / 10, 0.04)
    assert all(v == "container" and lim == 0.5 and u is not None for v, lim, u in seen[2:]), seen
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "falling back to container" in caplog.text
    assert s.name == "lxcfs" and s.configured_view == "lxcfs" and s.switches_total == 1
    ct.alive = False  # the fallback fails too: the next one
    step(2.0, 0.04)
    assert s.active_view == "host" and s.reading.limit_cores == 2.0 and s.reading.utilization_smoothed is not None
    lx.alive = True
    caplog.clear()
    step(2.1, 0.04)  # retried at most once per limits_interval_s: 2.1 - 2.0 < 1
    assert s.active_view == "host"
    step(3.0, 0.04)
    assert s.active_view == "lxcfs" and s.reading.limit_cores == 1.0 and s.switches_total == 3
    assert "works again" in caplog.text and len(caplog.records) == 1
    step(3.1, 0.04)
    assert s.reading.utilization == pytest.approx(0.4)  # a rate on the configured view again


def test_no_view_works_logs_once_and_reads_unknown(caplog: pytest.LogCaptureFixture) -> None:
    lx, ct = DyingSource("lxcfs", 1.0), DyingSource("container", 0.5)
    lx.alive = ct.alive = False
    s = Sampler(lx, fallbacks=[ct])
    for i in range(5):
        r = s.sample(now=i / 10)
    assert r.limit_cores is None and r.utilization is None and s.active_view == "lxcfs"
    assert len(caplog.records) == 1 and "no fallback view works" in caplog.text


def test_without_fallbacks_a_dead_view_stays_unknown() -> None:
    lx = DyingSource("lxcfs", 1.0)
    lx.alive = False
    s = Sampler(lx)
    s.sample(now=0.0)
    assert s.sample(now=0.1).limit_cores is None and s.active_view == "lxcfs" and s.switches_total == 0


def test_make_signal_chains_views_in_fallback_order() -> None:
    from flowctl.cpu import make_signal

    assert [v.name for v in make_signal("lxcfs")._chain] == ["lxcfs", "container", "host"]  # noqa: SLF001
    assert [v.name for v in make_signal("container")._chain] == ["container", "host"]  # noqa: SLF001
    assert [v.name for v in make_signal("host")._chain] == ["host"]  # noqa: SLF001
    assert [v.name for v in make_signal("lxcfs", fallback=False)._chain] == ["lxcfs"]  # noqa: SLF001


def test_readings_are_numbered_in_order() -> None:
    """CpuReading.seq grows by one per published reading (the limiter counts hot readings in a row by it)."""
    clock = [100.0]
    s = Sampler(FakeSource(), clock=lambda: clock[0])
    seqs = []
    for _ in range(5):
        clock[0] += 0.1
        seqs.append(s.sample().seq)
    assert seqs == [1, 2, 3, 4, 5]
