"""The cgroup v2 reader paths tests/v2 exercises live, on fixture trees of the switched hybrid host.

Each test names the live test it stands in for (tests/v2/...); those need root and a kernel that
lets the cpu controller move to cgroup2, these run everywhere. Time is passed in (``now``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from flowctl.cli import main
from flowctl.cpu import make_signal
from flowctl.cpu.bandwidth import BandwidthReader
from flowctl.cpu.mounts import discover_path
from flowctl.cpu.sources import ContainerSource
from flowctl.limiter.period import PeriodGate
from flowctl.limiter import Policy
from tests.cpu.v2_tree import (
    HOST_CPUS,
    PSI_TOTAL_US,
    UNIFIED,
    cpu_pressure,
    cpu_stat,
    group,
    process,
    switched_host,
)

PID = 4242
LEAF = "/flowctl-test-v2"


def _burner_tree(tmp_path: Path, *, cpu_max: str = "50000 100000") -> tuple[Path, Path, str]:
    """A switched host with pid 4242 in ``/flowctl-test-v2`` (cpu.max ``cpu_max``); the tree, the
    group's directory and the path it is read through (``ROOT/proc/4242/root/...``)."""
    switched_host(tmp_path)
    leaf = group(tmp_path, LEAF, cpu_max=cpu_max)
    at = str(process(tmp_path, PID, LEAF)) + f"/{UNIFIED}{LEAF}"
    return tmp_path, leaf, at


def test_another_pids_v2_group_is_read_through_its_root(tmp_path: Path) -> None:
    """tests/v2/test_reader.py: leaf cpu.max, cpu.stat in µs, its own cpu.pressure (test_leaf_cpu_max...,
    test_counters_are_cpu_stat_usage_usec...); cpuacct and memory still on v1 do not make it v1."""
    root, _leaf, at = _burner_tree(tmp_path)
    src = ContainerSource(str(root), pid=PID)
    limits = src.read_limits()
    c = src.read_counters()
    src.close()
    d = limits.details
    assert (d["version"], d["path"], d["quota_cores"]) == (2, at, 0.5)
    assert d["quota_source"] == os.path.join(at, "cpu.max")
    assert (d["pressure_scope"], d["pressure_source"]) == ("cgroup", os.path.join(at, "cpu.pressure"))
    assert (limits.limit_cores, limits.source, limits.source_file) == (0.5, "quota", os.path.join(at, "cpu.max"))
    assert d["dirs"]["cpuacct"].endswith("/sys/fs/cgroup/cpuacct")  # type: ignore[index]  # v1, unused on v2
    assert d["cpuset_source"] == str(root / "proc/4242/root" / UNIFIED / "cpuset.cpus.effective")  # inherited
    assert limits.errors == () and src.errors() == []
    assert c.usage_s == pytest.approx(7.0) and (c.periods, c.throttled_periods) == (400, 100)
    assert c.throttled_s == pytest.approx(3.0) and c.pressure_s == pytest.approx(PSI_TOTAL_US / 1e6)


def test_sampler_rates_from_cpu_stat_and_the_groups_own_cpu_pressure(tmp_path: Path) -> None:
    """tests/v2/test_reader.py::test_leaf_cpu_max_read_with_utilization_throttling_and_cgroup_psi:
    a burner held at 0.5 CPU, throttled in 9 of 10 periods, some task waiting 60% of the time."""
    root, leaf, _at = _burner_tree(tmp_path)
    s = make_signal("container", root=str(root), pid=PID, interval_s=0.1)
    assert s.sample(now=0.0).utilization is None  # no rate yet
    (leaf / "cpu.stat").write_text(cpu_stat(7.5, 410, 109, 3.45))
    (leaf / "cpu.pressure").write_text(cpu_pressure(PSI_TOTAL_US + 600_000))
    r = s.sample(now=1.0)
    s.close()
    assert (r.limit_cores, s.active_view) == (0.5, "container")
    assert r.usage_cores == pytest.approx(0.5) and r.utilization == pytest.approx(1.0)
    assert r.throttled_ratio == pytest.approx(0.9) and r.pressure_ratio == pytest.approx(0.6)


def test_limit_only_on_the_parent_is_found_from_the_pid(tmp_path: Path) -> None:
    """tests/v2/test_reader.py::test_pod_like_nesting_limit_only_on_the_parent."""
    switched_host(tmp_path)
    group(tmp_path, "/pod", cpu_max="50000 100000")
    group(tmp_path, "/pod/ctr")  # max 100000
    base = str(process(tmp_path, PID, "/pod/ctr")) + f"/{UNIFIED}"
    src = ContainerSource(str(tmp_path), pid=PID)
    limits = src.read_limits()
    src.close()
    d = limits.details
    assert (d["version"], d["path"], limits.limit_cores) == (2, f"{base}/pod/ctr", 0.5)
    assert d["quota_source"] == f"{base}/pod/cpu.max"


def test_cpu_max_resize_is_reread_within_the_limits_interval(tmp_path: Path) -> None:
    """tests/v2/test_reader.py::test_resize_while_running_is_reread_by_the_running_sampler."""
    root, leaf, _at = _burner_tree(tmp_path)
    s = make_signal("container", root=str(root), pid=PID, interval_s=0.1, limits_interval_s=1.0)
    assert s.sample(now=0.0).limit_cores == 0.5
    (leaf / "cpu.max").write_text("150000 100000\n")
    assert s.sample(now=0.5).limit_cores == 0.5  # not re-read yet
    assert s.sample(now=1.0).limit_cores == 1.5  # within limits_interval_s (+ one sample)
    (leaf / "cpu.max").write_text("max 100000\n")
    r = s.sample(now=2.0)
    assert (r.limit_cores, s.limits.source if s.limits else None) == (2.0, "cpuset")  # quota gone: the cpuset
    s.close()


def test_bandwidth_reader_reads_the_leafs_own_cpu_max_and_cpu_stat(tmp_path: Path) -> None:
    """tests/v2/test_reader.py::test_bandwidth_reader_follows_each_cfs_period_on_v2: discover_path of a
    v2 dir, the leaf's own quota (not an ancestor's), and cpu.stat's counters in seconds."""
    switched_host(tmp_path)
    leaf = group(tmp_path, "/pod/ctr", cpu_max="30000 100000")
    group(tmp_path, "/pod", cpu_max="20000 100000")
    disc = discover_path(str(leaf), root=str(tmp_path))
    assert disc.version == 2 and disc.errors == []
    reader = BandwidthReader(disc)
    try:
        assert reader.quota() == pytest.approx((0.03, 0.1))
        assert reader.read() == pytest.approx((7.0, 400, 100, 3.0))
        (leaf / "cpu.max").write_text("max 100000\n")
        assert reader.quota() is None  # only the parent has one: its periods are not the leaf's
        (leaf / "cpu.max").write_text("fifty 100000\n")
        assert reader.quota() is None
        (leaf / "cpu.stat").write_text("usage_usec 5\n")  # no cpu controller: no periods, so no reading
        assert reader.read() is None
    finally:
        reader.close()


def test_bandwidth_reader_feeds_the_period_gate_each_cfs_period(tmp_path: Path) -> None:
    """The gate's accounting over a simulated burner capped at 30 ms per 100 ms period, read every
    2 ms (the live test's ``check_burner_periods`` with a known answer): each whole period is seen
    to use its quota, and each boundary reports the 70 ms freeze from throttled_usec."""
    switched_host(tmp_path)
    leaf = group(tmp_path, LEAF, cpu_max="30000 100000")
    reader = BandwidthReader(discover_path(str(leaf), root=str(tmp_path)))
    quota = reader.quota()
    assert quota == pytest.approx((0.03, 0.1))
    gate = PeriodGate(Policy(period_margin=0.0))
    gate.set_quota(*quota)  # type: ignore[misc]
    period_us, quota_us = 100_000, 30_000
    seen: list[float] = []
    freezes: list[float] = []
    last_periods: int | None = None
    used: float | None = None
    try:
        for t_us in range(0, 1_500_000, 2_000):
            k, into = divmod(t_us, period_us)  # k periods ended, each throttled for the rest of it
            usage_us = k * quota_us + min(into, quota_us)
            (leaf / "cpu.stat").write_text(cpu_stat(usage_us / 1e6, k, k, k * (period_us - quota_us) / 1e6))
            counters = reader.read()
            assert counters is not None
            frozen = gate.update(t_us / 1e6, *counters[:3], throttled_s=counters[3])
            if last_periods is not None and counters[1] != last_periods:
                freezes.append(frozen)
                if used is not None and last_periods > 0:
                    seen.append(used)  # the last estimate of the whole period that just ended
            last_periods = counters[1]
            used = gate.used_s()
    finally:
        reader.close()
    assert len(seen) == 13 and seen == pytest.approx([0.03] * 13)
    assert len(freezes) == 14 and freezes == pytest.approx([0.07] * 14)


def _inspect(capsys: pytest.CaptureFixture[str], root: Path) -> dict[str, Any]:
    assert main(["inspect", "--json", "--root", str(root), "--interval", "0"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def test_docker_like_namespace_root_with_its_own_cpu_max(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tests/v2/test_namespaces.py::test_docker_like_private_namespaces_with_cgroup2_mounted_inside:
    cgroup2 mounted fresh in a private cgroup namespace (root ``/``, ``0::/``); the namespace root is
    the container's group and has a cpu.max of its own (a real root has none)."""
    switched_host(tmp_path)
    mi = tmp_path / "proc/self/mountinfo"
    mi.write_text("".join(line.replace("/sys/fs/cgroup/unified", "/sys/fs/cgroup") + "\n"
                          for line in mi.read_text().splitlines() if "cgroup" not in line or "cgroup2" in line))
    cg = tmp_path / "sys/fs/cgroup"
    for name in ("cgroup.controllers", "cpu.stat", "cpu.pressure", "cpuset.cpus.effective"):
        (cg / name).write_bytes((tmp_path / UNIFIED / name).read_bytes())
    (cg / "cpu.max").write_text("50000 100000\n")
    r = _inspect(capsys, tmp_path)
    c = r["cgroup"]
    assert (c["version"], c["path"], c["limit_cores"]) == (2, str(cg), 0.5)
    assert c["limit_source"] == str(cg / "cpu.max") and c["pressure_scope"] == "cgroup"
    assert r["effective"]["cpus"] == 0.5
    # the v1 lines of /proc/self/cgroup name hierarchies this namespace does not mount: said, not fatal
    assert all("is in" in e and "but not mounted" in e for e in r["errors"]), r["errors"]


def test_private_cgroupns_on_the_hybrid_mount_finds_its_group_by_pid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tests/v2/test_namespaces.py::test_private_cgroupns_seeing_the_host_mount_finds_its_group_by_pid:
    the host's /sys/fs/cgroup/unified seen from a private cgroup namespace three levels down
    (mountinfo root ``/../../..``, ``0::/``); the limit is on the top group, two levels up."""
    switched_host(tmp_path)
    group(tmp_path, "/top", cpu_max="50000 100000")
    group(tmp_path, "/top/pod")
    leaf = group(tmp_path, "/top/pod/ctr")
    (leaf / "cgroup.procs").write_text("4000\n")  # our pid, as proc/self/stat says
    process(tmp_path, "self", "/", mount_root="/../../..", pid_in_stat=4000)
    r = _inspect(capsys, tmp_path)
    c = r["cgroup"]
    assert (c["version"], c["path"], c["limit_cores"]) == (2, str(leaf), 0.5)
    assert c["limit_source"] == str(tmp_path / UNIFIED / "top/cpu.max")
    assert not any("outside the mount root" in e for e in r["errors"]), r["errors"]
    assert r["host"]["cpus"] == HOST_CPUS
