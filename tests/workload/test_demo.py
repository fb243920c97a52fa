"""``flowctl demo cpu``: the report from synthetic numbers, and one real short run (root, v1, lxcfs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowctl.commands.demo import DemoResult, DemoSample, _require_matplotlib, format_report, plot, verdict_text
from flowctl.errors import ConfigError
from flowctl.workload.probe import InsideView, parse_probe_output
from tests import realenv

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _result(host_usage: float = 0.5) -> DemoResult:
    samples = [DemoSample(t_s=float(i), host_utilization=0.25, host_cpus=2, host_usage_cores=host_usage,
                          cgroup_utilization=1.0, cgroup_usage_cores=0.5, cgroup_limit_cores=0.5,
                          cgroup_throttled_ratio=0.48, lxcfs_utilization=0.5, lxcfs_cpus=1) for i in (1, 2)]
    r = DemoResult(cpus=0.5, memory_bytes=256 << 20, seconds=2, lxcfs=True, lxcfs_note="test", samples=samples,
                   summary={"host_utilization": 0.25, "host_cpus": 2, "host_usage_cores": host_usage,
                            "cgroup_utilization": 1.0, "cgroup_usage_cores": 0.5, "cgroup_limit_cores": 0.5,
                            "cgroup_throttled_ratio": 0.48, "lxcfs_utilization": 0.5, "lxcfs_cpus": 1})
    r.inside = [InsideView(False, 2, 2, 2, 24683656, 2), InsideView(True, 1, 1, 1, 262144, 2)]
    return r


def test_verdict_and_report_from_known_numbers() -> None:
    r = _result()
    assert verdict_text(r) == ("host says 25% busy on 2 CPUs; cgroup says 100% of 0.5 CPU, throttled in 48% of "
                               "periods; lxcfs says 1 CPU (50% busy).")
    report = format_report(r)
    assert "never sheds" in report.splitlines()[4]  # host row
    assert "sheds (sees the overload)" in report.splitlines()[5]  # cgroup row
    assert "262144 kB (256 MiB)" in report
    assert "nproc still says 2 with lxcfs" in report
    assert "other processes" not in report
    assert "other processes kept 1.50 cores" in format_report(_result(host_usage=2.0))


def test_probe_output_parsing() -> None:
    v = parse_probe_output("getconf=1\ncpu_count=1\ncpuinfo=1\nmemtotal_kb=262144\nnproc=2\n", lxcfs=True)
    assert v == InsideView(True, 1, 1, 1, 262144, 2)
    assert parse_probe_output("getconf=\nnproc=x\n", lxcfs=False).getconf_nprocessors_onln is None


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "demo.png"
    plot(_result(), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"--plot needs matplotlib: pip install 'flowctl\[plot\]'"):
        _require_matplotlib()


@pytest.mark.real
@pytest.mark.slow
def test_real_short_demo(tmp_path: Path) -> None:
    realenv.need_cgroup_v1("cpu", "cpuacct", "cpuset", "memory")
    realenv.need_binary("lxcfs")
    png = tmp_path / "demo.png"
    proc = subprocess.run([sys.executable, "-m", "flowctl", "demo", "cpu", "--seconds", "3", "--json",
                           "--plot", str(png)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["lxcfs"] is True and len(r["samples"]) == 3
    m = r["summary"]
    assert m["cgroup_limit_cores"] == 0.5
    assert m["host_cpus"] == os.cpu_count()
    assert m["cgroup_usage_cores"] is not None and m["cgroup_usage_cores"] > 0
    assert m["lxcfs_cpus"] == 1
    inside = {v["lxcfs"]: v for v in r["inside"]}
    assert inside[True]["os_cpu_count"] == inside[True]["getconf_nprocessors_onln"] == 1
    assert inside[True]["memtotal_kb"] == 262144
    assert inside[True]["nproc"] == len(os.sched_getaffinity(0))
    assert inside[False]["os_cpu_count"] == os.cpu_count()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_demo_values_are_one_line_errors() -> None:
    for args in (["--cpus", "x"], ["--seconds", "0"], ["--memory", "1Q"]):
        proc = subprocess.run([sys.executable, "-m", "flowctl", "demo", "cpu", *args], capture_output=True,
                              text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and "flowctl demo cpu: error: invalid" in proc.stderr
