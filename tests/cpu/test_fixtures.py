"""Fixture cgroup trees (tests/fixtures/cgroup/<case>) read through ``flowctl inspect``'s report."""

from __future__ import annotations

import filecmp
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from flowctl.commands.inspect import collect
from flowctl.cpu import make_signal
from flowctl.cpu.sources import ContainerSource

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cgroup"
NO = object()  # "key must be None"

# case -> {dotted report key: expected value}; "path" is the cgroup dir relative to the case root;
# "error" a substring that must appear in one of the errors; "no_errors": the errors list is empty.
CASES: dict[str, dict[str, Any]] = {
    "v1-separate": {"cgroup.version": 1, "cgroup.limit_cores": 0.5, "cgroup.cpuset_cpus": 4, "effective.cpus": 0.5,
                    "effective.source": "quota", "cgroup.memory_limit_bytes": 268435456, "host.cpus": 8,
                    "path": "sys/fs/cgroup/cpu/docker/abc", "lxcfs": None, "no_errors": True},
    "v1-comounted": {"cgroup.version": 1, "cgroup.limit_cores": 1.5, "effective.cpus": 1.5,
                     "path": "sys/fs/cgroup/cpu,cpuacct/docker/x", "no_errors": True},
    "v1-comounted-reversed": {"cgroup.limit_cores": 2.0, "effective.cpus": 2.0, "path": "sys/fs/cgroup/cpuacct,cpu/x"},
    "v1-docker-mount-root": {"cgroup.limit_cores": 0.25, "path": "sys/fs/cgroup/cpu", "no_errors": True},
    "v1-below-mount-root": {"cgroup.limit_cores": 0.75, "path": "sys/fs/cgroup/cpu/sub", "no_errors": True},
    "v1-prefix-not-component": {"path": "sys/fs/cgroup/cpu", "error": "outside the mount root", "cgroup.limit_cores": 0.25},
    "v1-outside-dotdot": {"path": "sys/fs/cgroup/cpu", "error": "outside the mount root", "cgroup.limit_cores": 0.3},
    "v1-ancestor-tighter": {"cgroup.limit_cores": 0.5, "cgroup.limit_source": "sys/fs/cgroup/cpu/kubepods/pod1/cpu.cfs_quota_us",
                            "effective.source": "quota"},
    "v1-unlimited": {"cgroup.limit_cores": NO, "cgroup.cpuset_cpus": 2, "effective.cpus": 2.0, "effective.source": "cpuset"},
    "v1-fractional": {"cgroup.limit_cores": 12345 / 50000, "cgroup.cpuset_cpus": NO, "effective.cpus": 12345 / 50000},
    "v1-cpuset-list": {"cgroup.cpuset_cpus": 6, "cgroup.cpuset": "0-2,4,6-7", "effective.cpus": 6.0, "effective.source": "cpuset"},
    "v1-cpuset-cpus-only": {"cgroup.cpuset_cpus": 2, "cgroup.cpuset_source": "sys/fs/cgroup/cpuset/app/cpuset.cpus",
                            "effective.source": "cpuset"},
    "v1-memory-no-limit": {"cgroup.memory_limit_bytes": NO, "no_errors": True},
    "v1-no-cpuacct": {"cgroup.version": 1, "cgroup.limit_cores": 0.5, "error": "usage unavailable"},
    "v1-psi-absent": {"error": "pressure unavailable", "cgroup.pressure_source": NO, "host.pressure_source": NO},
    "v2-basic": {"cgroup.version": 2, "cgroup.limit_cores": 0.5, "cgroup.cpuset_cpus": 2, "effective.cpus": 0.5,
                 "cgroup.memory_limit_bytes": 536870912, "path": "sys/fs/cgroup/kubepods/pod1/c1",
                 "cgroup.pressure_scope": "cgroup", "no_errors": True},
    "v2-unlimited": {"cgroup.version": 2, "cgroup.limit_cores": NO, "cgroup.memory_limit_bytes": NO, "effective.cpus": 8.0,
                     "effective.source": "host", "no_errors": True},
    "v2-ancestor-tighter": {"cgroup.limit_cores": 1.0, "cgroup.limit_source": "sys/fs/cgroup/a/b/cpu.max"},
    "v2-cgroupns-root": {"cgroup.version": 2, "path": "sys/fs/cgroup", "cgroup.limit_cores": NO, "no_errors": True},
    "v2-no-cpu-controller": {"cgroup.version": 2, "cgroup.limit_cores": NO, "effective.cpus": 2.0, "no_errors": True},
    "v2-cpuset-from-parent": {"cgroup.cpuset_cpus": 2, "cgroup.cpuset": "2-3",
                              "cgroup.cpuset_source": "sys/fs/cgroup/app/cpuset.cpus.effective"},
    # No cpu.pressure in the cgroup: the container has no pressure (the system PSI is the host's, labelled so).
    "v2-psi-absent": {"cgroup.pressure_scope": NO, "cgroup.pressure_source": NO, "cgroup.pressure_ratio": NO,
                      "host.pressure_scope": "system", "host.pressure_source": "proc/pressure/cpu"},
    "v2-with-v1-leftovers": {"cgroup.version": 2, "path": "sys/fs/cgroup/app", "cgroup.limit_cores": 0.5},
    "v2-non-root-mount": {"cgroup.version": 2, "path": "sys/fs/cgroup/c9", "cgroup.limit_cores": 0.2, "no_errors": True},
    "v2-cgroupns-host-mount": {"cgroup.version": 2, "path": "sys/fs/cgroup/kubepods/pod1/c1", "cgroup.limit_cores": 0.5,
                               "cgroup.limit_source": "sys/fs/cgroup/kubepods/pod1/cpu.max", "effective.cpus": 0.5,
                               "no_errors": True},
    "v2-cgroupns-host-mount-pid-gone": {"cgroup.version": 2, "path": "sys/fs/cgroup", "cgroup.limit_cores": 1.5,
                                        "error": "pid 4242 is in no cgroup.procs under it; using the mount point"},
    "hybrid-v1-cpu": {"cgroup.version": 1, "path": "sys/fs/cgroup/cpu/app", "cgroup.limit_cores": 0.5,
                      "cgroup.pressure_scope": NO, "cgroup.pressure_ratio": NO, "host.pressure_scope": "system",
                      "no_errors": True},
    "hybrid-v2-cpu": {"cgroup.version": 2, "path": "sys/fs/cgroup/unified/app", "cgroup.limit_cores": 0.5},
    "octal-escape": {"cgroup.version": 1, "path": "sys/fs/cgroup/my cpu/app", "cgroup.limit_cores": 0.5, "no_errors": True},
    "optional-fields": {"cgroup.version": 2, "cgroup.limit_cores": 1.5, "no_errors": True},
    "garbage-quota": {"cgroup.limit_cores": NO, "effective.cpus": 3.0, "effective.source": "cpuset",
                      "error": "cpu.cfs_quota_us: not an integer"},
    "garbage-cpu-max": {"cgroup.limit_cores": NO, "effective.source": "cpuset", "error": "cpu.max quota: not an integer"},
    "garbage-cpuset": {"cgroup.cpuset_cpus": NO, "effective.cpus": 8.0, "effective.source": "host", "error": "cpu list"},
    "garbage-mountinfo": {"cgroup.version": NO, "effective.source": "host", "error": "mountinfo"},
    "garbage-proc-cgroup": {"cgroup.version": NO, "effective.source": "host", "error": "expected ID:controllers:path"},
    "garbage-cpu-stat": {"cgroup.throttled_ratio": NO, "error": "cpu.stat nr_periods: not an integer"},
    "garbage-memory": {"cgroup.memory_limit_bytes": NO, "error": "memory.limit_in_bytes: not an integer"},
    "garbage-psi": {"error": "pressure"},
    "garbage-host": {"host.cpus": NO, "effective.source": "quota", "error": "cpuinfo"},
    "missing-leaf": {"cgroup.limit_cores": NO, "effective.source": "host", "error": "missing"},
    "host-cpuinfo-fallback": {"host.cpus": 8, "host.cpus_source": "proc/cpuinfo"},
    "lxcfs-overlay": {"lxcfs.cpus": 1, "lxcfs.mem_total_bytes": 262144 * 1024, "host.virtualized": True,
                      "effective.cpus": 0.5},
    "lxcfs-dir": {"lxcfs.cpus": 2, "lxcfs.mem_total_bytes": 524288 * 1024, "host.virtualized": False, "host.cpus": 8},
    "lxcfs-garbage": {"lxcfs.cpus": 1, "lxcfs.mem_total_bytes": NO, "error": "meminfo"},
}


def _get(report: dict[str, Any], dotted: str) -> Any:
    cur: Any = report
    for part in dotted.split("."):
        cur = cur[part]
    return cur


def test_at_least_25_distinct_cases_and_all_present() -> None:
    dirs = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and not p.name.startswith("__"))
    assert len(dirs) >= 25
    assert sorted(CASES) == dirs


def test_committed_trees_match_the_builder(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("fixture_build", FIXTURES / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.write(str(tmp_path))
    for case in CASES:
        cmp = filecmp.dircmp(tmp_path / case, FIXTURES / case)
        stack = [cmp]
        while stack:
            c = stack.pop()
            assert not c.left_only and not c.right_only and not c.diff_files, (case, c.left_only, c.right_only, c.diff_files)
            stack.extend(c.subdirs.values())


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_case(case: str) -> None:
    root = str(FIXTURES / case)
    report = collect(root, interval_s=0)
    for key, want in CASES[case].items():
        if key == "path":
            assert report["cgroup"]["path"] == os.path.join(root, want)
        elif key == "error":
            assert any(want in e for e in report["errors"]), report["errors"]
        elif key == "no_errors":
            assert report["errors"] == []
        else:
            got = _get(report, key)
            if want is NO:
                assert got is None, (key, got)
            elif isinstance(want, str) and key.endswith(("_source", "source_file")) and "/" in want:
                assert got == os.path.join(root, want), (key, got)
            elif isinstance(want, float):
                assert got == pytest.approx(want), (key, got)
            else:
                assert got == want, (key, got)
    # Report shape: the keys the issue names are always there.
    for key in ("host.cpus", "host.utilization", "cgroup.version", "cgroup.path", "cgroup.limit_cores",
                "cgroup.cpuset_cpus", "cgroup.utilization", "cgroup.throttled_ratio", "cgroup.pressure_ratio",
                "cgroup.memory_limit_bytes", "effective.cpus", "effective.source"):
        _get(report, key)
    assert "lxcfs" in report and isinstance(report["errors"], list)


# case -> (usage_s, periods, throttled, throttled_s, pressure_s): v1-separate has no cpu.pressure of its own,
# so its container pressure is unknown even though the tree has a system-wide /proc/pressure/cpu.
V1_COUNTERS = {"v1-separate": (5.0, 1000, 250, 5.0, None), "v2-basic": (7.0, 400, 100, 3.0, 123.456789)}


@pytest.mark.parametrize("case", sorted(V1_COUNTERS))
def test_counters_are_unit_correct(case: str) -> None:
    src = ContainerSource(str(FIXTURES / case))
    src.read_limits()
    c = src.read_counters()
    usage_s, periods, throttled, throttled_s, pressure_s = V1_COUNTERS[case]
    assert c.usage_s == pytest.approx(usage_s)
    assert (c.periods, c.throttled_periods) == (periods, throttled)
    assert c.throttled_s == pytest.approx(throttled_s)
    assert c.pressure_s == pytest.approx(pressure_s)
    src.close()


def test_v2_without_cpu_controller_has_no_throttling_counters() -> None:
    src = ContainerSource(str(FIXTURES / "v2-no-cpu-controller"))
    c = src.read_counters()
    assert c.usage_s == pytest.approx(7.0) and c.periods is None and c.throttled_s is None
    src.close()


def test_host_view_reads_proc_stat_with_clock_ticks() -> None:
    s = make_signal("host", root=str(FIXTURES / "v1-separate"))
    s.sample(now=0.0)
    assert s.counters is not None
    hz = os.sysconf("SC_CLK_TCK")
    # busy = user+nice+system+irq+softirq+steal = 10000+200+3000+0+100+0; total adds idle 80000 + iowait 500
    assert s.counters.usage_s == pytest.approx(13300 / hz)
    assert s.counters.total_s == pytest.approx(93800 / hz)
    assert s.reading.limit_cores == 8.0
    s.close()
