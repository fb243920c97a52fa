"""The cgroup v2 reader and Sampler on the live cgroup2 mount (cpu on v2; see tests/v2/conftest.py).

A ``while :; do :; done`` burner in a group with ``cpu.max 50000 100000`` wants a whole CPU and gets
0.5: utilization ~1, throttled in ~every period, and its own cpu.pressure rises (CFS throttling
alone raises a group's PSI). Bounds are loose because the machine is shared: under contention the
burner gets less than its quota and is throttled less often (seen: 0.31 cores, 33% of periods).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from flowctl.cpu import make_signal
from flowctl.cpu.bandwidth import BandwidthReader
from flowctl.cpu.mounts import discover_path
from flowctl.cpu.parse import parse_flat_keyed
from flowctl.cpu.sources import ContainerSource
from tests.bandwidth_live import check_burner_periods
from tests.v2.helpers import burner_in, read, v2_group, write

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_leaf_cpu_max_read_with_utilization_throttling_and_cgroup_psi() -> None:
    with v2_group(cpu_max={"": "50000 100000"}) as leaf, burner_in(leaf) as p:
        sig = make_signal("container", pid=p.pid, interval_s=0.1)
        try:
            sig.sample()
            time.sleep(1.0)
            r = sig.sample()
            limits = sig.limits
        finally:
            sig.close()
    assert limits is not None
    d = limits.details
    at = f"/proc/{p.pid}/root{leaf}"  # another pid is read through its own mount namespace
    assert (d["version"], d["path"], d["quota_cores"]) == (2, at, 0.5)
    assert d["quota_source"] == os.path.join(at, "cpu.max")
    assert (d["pressure_scope"], d["pressure_source"]) == ("cgroup", os.path.join(at, "cpu.pressure"))
    assert (r.limit_cores, limits.source) == (0.5, "quota")
    # Alone it reads ~1.0 / ~1.0 / ~0.5; loose bounds because other jobs share these 2 CPUs.
    assert r.utilization is not None and r.utilization > 0.3
    assert r.throttled_ratio is not None and r.throttled_ratio > 0.1
    assert r.pressure_ratio is not None and r.pressure_ratio > 0.1


def test_pod_like_nesting_limit_only_on_the_parent() -> None:
    with v2_group("ctr", cpu_max={"": "50000 100000"}) as leaf, burner_in(leaf) as p:
        src = ContainerSource(pid=p.pid)
        limits = src.read_limits()
        src.close()
        assert read(os.path.join(leaf, "cpu.max")) == "max 100000"
    d = limits.details
    at = f"/proc/{p.pid}/root{leaf}"
    assert d["path"] == at and d["version"] == 2
    assert limits.limit_cores == 0.5
    assert d["quota_source"] == os.path.join(os.path.dirname(at), "cpu.max")


async def test_resize_while_running_is_reread_by_the_running_sampler() -> None:
    with v2_group(cpu_max={"": "50000 100000"}) as leaf, burner_in(leaf) as p:
        sig = make_signal("container", pid=p.pid, interval_s=0.1, limits_interval_s=1.0)
        async with sig:
            while sig.reading.limit_cores is None:
                await asyncio.sleep(0.02)
            assert sig.reading.limit_cores == 0.5
            write(os.path.join(leaf, "cpu.max"), "150000 100000")
            t0 = time.monotonic()
            while sig.reading.limit_cores != 1.5 and time.monotonic() - t0 < 5.0:
                await asyncio.sleep(0.01)
            seen_after_s = time.monotonic() - t0
    assert sig.reading.limit_cores == 1.5, "the new cpu.max was never re-read"
    # The contract: limits re-read every limits_interval_s (1 s) plus one sample; 2x that for a shared machine.
    assert seen_after_s <= 2 * (sig.limits_interval_s + sig.interval_s), seen_after_s


def test_counters_are_cpu_stat_usage_usec_and_throttling_and_cpu_pressure() -> None:
    with v2_group(cpu_max={"": "50000 100000"}) as leaf, burner_in(leaf) as p:
        src = ContainerSource(pid=p.pid)
        src.read_limits()
        t0, c0 = time.monotonic(), src.read_counters()
        time.sleep(1.0)
        t1, c1 = time.monotonic(), src.read_counters()
        stat = parse_flat_keyed(read(os.path.join(leaf, "cpu.stat")).encode())
        src.close()
    assert src.errors() == []
    assert None not in (c0.usage_s, c0.periods, c0.throttled_periods, c0.throttled_s, c0.pressure_s)
    assert c1.usage_s is not None and c0.usage_s is not None
    assert c1.usage_s <= stat["usage_usec"] / 1e6 < c1.usage_s + 0.1  # µs converted to seconds
    usage_cores = (c1.usage_s - c0.usage_s) / (t1 - t0)
    assert 0.1 < usage_cores <= 0.6  # the 0.5 CPU cap (+ slack for the period boundary; less under contention)
    assert c1.periods is not None and c0.periods is not None and c1.periods - c0.periods >= 5
    assert c1.throttled_periods is not None and c0.throttled_periods is not None
    assert c1.throttled_periods - c0.throttled_periods >= 0.1 * (c1.periods - c0.periods)
    assert c1.throttled_s is not None and c0.throttled_s is not None and c1.throttled_s > c0.throttled_s
    assert c1.pressure_s is not None and c0.pressure_s is not None
    assert (c1.pressure_s - c0.pressure_s) / (t1 - t0) > 0.1  # PSI some from the group's own cpu.pressure


def test_bandwidth_reader_follows_each_cfs_period_on_v2() -> None:
    """The period gate's counters on v2: cpu.stat usage_usec/nr_periods/nr_throttled, the leaf's cpu.max."""
    with v2_group(cpu_max={"": "30000 100000"}) as leaf, burner_in(leaf):
        time.sleep(0.3)
        reader = BandwidthReader(discover_path(leaf))
        try:
            print("\n" + check_burner_periods(reader, 0.03))
        finally:
            reader.close()
