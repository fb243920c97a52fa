"""The workload launcher on the live cgroup2 mount: `flowctl run --cpus 0.5` and set_cpus() in place."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flowctl.cpu.sources import ContainerSource
from flowctl.workload import launch
from tests.cgroup2 import UNIFIED
from tests.v2.helpers import BURNER, read, unique_name

pytestmark = [pytest.mark.real]


def test_flowctl_run_cpus_half_on_v2() -> None:
    name = unique_name()
    d = os.path.join(UNIFIED, name)
    # The child prints its own cgroup and its group's cpu.max: it was moved in before it exec'd sh.
    p = subprocess.run([sys.executable, "-m", "flowctl", "run", "--cpus", "0.5", "--name", name, "-v", "--",
                        "sh", "-c", f"grep '^0::' /proc/self/cgroup; cat {d}/cpu.max"],
                       capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"0::/{name}", "50000 100000"]
    assert "in cgroup v2" in p.stderr and f"cpu={d}" in p.stderr
    assert not os.path.exists(d)  # cleaned up


async def test_set_cpus_live_on_v2() -> None:
    name = unique_name()
    async with launch(BURNER, cpus=0.5, name=name) as w:
        d = os.path.join(UNIFIED, name)
        assert w.cgroup_version == 2 and w.cgroup_paths["cpu"] == d
        src = ContainerSource(pid=w.pid)
        try:
            assert src.read_limits().limit_cores == 0.5
            w.set_cpus(1.25)
            assert read(os.path.join(d, "cpu.max")) == "125000 100000"
            assert src.read_limits().limit_cores == 1.25
            w.set_cpus(None)
            assert read(os.path.join(d, "cpu.max")) == "max 100000"
            assert src.read_limits().source != "quota"
        finally:
            src.close()
    assert not os.path.exists(d)
