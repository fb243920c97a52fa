"""The launcher and ``flowctl demo cpu`` on a host whose cpu controller is on cgroup v2, on fixture trees.

tests/v2/test_launcher.py and tests/v2/test_demo.py run these live (root, and a kernel that lets
the cpu controller move to cgroup2). Here the switched hybrid host is a tmp tree (tests/cpu/v2_tree.py):
the launcher's choice of v2, the files it writes, what the reader then reads, and the demo's v2
report. What only a kernel does (moving the child in before exec, rmdir of a populated group,
CFS itself) stays live.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flowctl.commands import demo
from flowctl.cpu import make_signal
from flowctl.cpu.sampler import Sampler
from flowctl.cpu.sources import ContainerSource
from flowctl.workload.cgroupfs import Group, create_group, find_hierarchies
from flowctl.workload.probe import InsideView
from flowctl.workload.spec import WorkloadSpec
from tests.cpu.v2_tree import (
    PSI_TOTAL_US,
    UNIFIED,
    cpu_pressure,
    cpu_stat,
    group,
    process,
    switched_host,
)

NAME = "flowctl-test-run"
PID = 4242


def _launched(root: Path) -> Group:
    """What ``flowctl run --cpus 0.5 --name flowctl-test-run`` creates from ``root``'s /proc/self,
    with the child (pid 4242) moved in as the kernel would show it."""
    switched_host(root)
    h = find_hierarchies(str(root))
    g = create_group(WorkloadSpec.build(name=NAME, cpus=0.5), hierarchies=h)  # version="auto"
    g.add_pid(PID)
    process(root, PID, f"/{NAME}")
    return g


def test_run_cpus_half_creates_one_v2_group_when_cpu_is_on_cgroup2(tmp_path: Path) -> None:
    """tests/v2/test_launcher.py::test_flowctl_run_cpus_half_on_v2: auto picks v2 (cpu is on no v1
    hierarchy, though cpuacct and memory are), one group under the launcher's own, cpu.max 0.5 CPU."""
    g = _launched(tmp_path)
    d = str(tmp_path / UNIFIED / NAME)
    h = find_hierarchies(str(tmp_path))
    assert h.v2 == str(tmp_path / UNIFIED) and "cpu" not in h.v1 and {"cpuacct", "memory"} <= set(h.v1)
    assert g.version == 2 and g.dirs == [d] and set(g.paths.values()) == {d}
    assert (tmp_path / UNIFIED / NAME / "cpu.max").read_text() == "50000 100000"
    assert (tmp_path / UNIFIED / "cgroup.subtree_control").read_text() == "+cpu"  # delegated by the parent
    assert (tmp_path / UNIFIED / NAME / "cgroup.procs").read_text() == str(PID)
    src = ContainerSource(str(tmp_path), pid=PID)
    lim = src.read_limits()
    src.close()
    assert (lim.details["version"], lim.limit_cores, lim.source) == (2, 0.5, "quota")
    assert lim.details["path"] == str(tmp_path / "proc/4242/root" / UNIFIED / NAME)


def test_set_cpus_in_place_on_v2_is_what_the_reader_reads(tmp_path: Path) -> None:
    """tests/v2/test_launcher.py::test_set_cpus_live_on_v2."""
    g = _launched(tmp_path)
    cpu_max = tmp_path / UNIFIED / NAME / "cpu.max"
    src = ContainerSource(str(tmp_path), pid=PID)
    try:
        assert src.read_limits().limit_cores == 0.5
        g.set_cpus(1.25)
        assert cpu_max.read_text() == "125000 100000"
        assert src.read_limits().limit_cores == 1.25
        g.set_cpus(None)
        assert cpu_max.read_text() == "max 100000"
        lim = src.read_limits()
        assert lim.source != "quota" and (lim.limit_cores, lim.source) == (2.0, "cpuset")
    finally:
        src.close()


async def test_demo_cpu_on_v2_reads_the_groups_psi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/v2/test_demo.py::test_demo_cpu_on_v2_shows_the_groups_psi, with the burner's launch and the
    inside probe faked and a clock that ticks 1 s per sample: the demo reads the group by its
    directory (a v2 dir), reports version 2 and the group's own PSI, and says so in the report."""
    switched_host(tmp_path)
    leaf = group(tmp_path, "/flowctl-run-demo", cpu_max="50000 100000")
    asked: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def fake_launch(cmd: Sequence[str], **options: Any) -> AsyncIterator[SimpleNamespace]:
        asked.update(options)
        stdout = asyncio.StreamReader()
        stdout.feed_eof()  # no lxcfs: the inside reader prints nothing
        yield SimpleNamespace(cgroup_paths={"cpu": str(leaf)}, process=SimpleNamespace(stdout=stdout))

    def fake_make_signal(view: str, **options: Any) -> Sampler:
        ticks = itertools.count(0.0)
        return make_signal(view, root=str(tmp_path), clock=lambda: next(ticks), **options)

    async def fake_probe(*, cpus: float, memory_bytes: int, lxcfs: bool) -> InsideView:
        return InsideView(lxcfs, 8, 8, 8, 16384000, 8)

    monkeypatch.setattr(demo, "launch", fake_launch)
    monkeypatch.setattr(demo, "make_signal", fake_make_signal)
    monkeypatch.setattr(demo, "probe_inside", fake_probe)

    ticked: list[demo.DemoSample] = []

    def burn(sample: demo.DemoSample) -> None:
        """Until the next sample (1 s later) the burner uses its 0.5 CPU and waits 60% of the time."""
        ticked.append(sample)
        n = len(ticked)
        (leaf / "cpu.stat").write_text(cpu_stat(7.0 + 0.5 * n, 400 + 10 * n, 100 + 9 * n, 3.0 + 0.45 * n))
        (leaf / "cpu.pressure").write_text(cpu_pressure(PSI_TOTAL_US + 600_000 * n))

    r = await demo.run_cpu_demo(cpus=0.5, memory_bytes=256 << 20, seconds=0.003, interval_s=0.001, use_lxcfs=False,
                                progress=burn)  # fmt: skip
    assert (asked["cpus"], asked["memory_bytes"], asked["lxcfs"]) == (0.5, 256 << 20, False)
    assert r.cgroup_version == 2 and len(r.samples) == 3
    assert all(s.cgroup_pressure_ratio is not None and s.cgroup_limit_cores == 0.5 for s in r.samples)
    last = r.samples[-1]  # the first sample saw no burn yet; the others one tick each
    assert (last.cgroup_usage_cores, last.cgroup_utilization) == (0.5, 1.0)
    assert last.cgroup_throttled_ratio == pytest.approx(0.9) and last.cgroup_pressure_ratio == pytest.approx(0.6)
    m = json.loads(json.dumps(r.as_dict()))["summary"]
    assert m["cgroup_limit_cores"] == 0.5 and m["cgroup_pressure_ratio"] == pytest.approx(0.4)
    assert m["cgroup_throttled_ratio"] == pytest.approx(0.6)
    text = demo.format_report(r)
    assert "cpu.max, cpu.stat, cpu.pressure (v2)" in text and "PSI some" in text
    assert "its own cpu.pressure has some task waiting 40% of the time" in text
    png = tmp_path / "demo.png"
    demo.plot(r, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
