"""Usable cores on a real cgroup v1 group (root only): one saturated Python process in a 1.5-CPU
quota (no cpuset) reads about 1 usable core and utilization about 1.0, not 0.67 of the quota.

Only the reading is asserted (no timing): the group is unique and removed in ``finally``.
"""

from __future__ import annotations

import sys
import time

import pytest

from flowctl.cpu import make_signal
from tests.cpu.test_live import _join, cgroup, child
from tests.realenv import need_cgroup_v1

pytestmark = [pytest.mark.real, pytest.mark.slow]

SPIN = """
import sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
while True:
    pass
"""


def test_one_saturated_python_process_in_a_1_5_cpu_quota_reads_one_usable_core() -> None:
    need_cgroup_v1("cpu", "cpuacct")
    ctrls = ("cpu", "cpuacct")
    with cgroup(ctrls, quota_us=150000) as name, child([sys.executable, "-c", SPIN]) as spinner:
        assert spinner.stdout is not None and spinner.stdin is not None
        assert spinner.stdout.readline().strip() == "ready"
        _join(name, spinner.pid, ctrls)
        spinner.stdin.write("go\n")
        spinner.stdin.flush()
        sig = make_signal("container", pid=spinner.pid, limits_interval_s=0.5)
        try:
            readings = []
            for _ in range(8):  # the best of several 0.5 s readings: the machine is shared
                sig.sample()
                time.sleep(0.5)
                readings.append(sig.sample())
            best = max(readings, key=lambda r: r.utilization or 0.0)
            assert best.limit_cores == pytest.approx(1.5), sig.details()
            assert best.usable_cores == 1.0, sig.details()
            assert best.utilization is not None and 0.8 <= best.utilization <= 1.1, (best, sig.details())
            assert sig.limits is not None and sig.limits.usable_why == "one Python process"
        finally:
            sig.close()
