"""One variable: a limiter fed a CPU view takes every machine input from that view.

The fixture root holds a 2-CPU host's /proc, an lxcfs mount and a 0.5-CPU cgroup
v1 group side by side. A limiter fed the host or the lxcfs view, built as the
benchmarks and the sidecar build it, is driven through readings, admissions and
completions while every ``os.open`` is recorded: it must open no cgroup file
(no period gate, no group counters), and its ceiling must come from its view's
CPUs. Fed the container view, the same drive does read the group and pace by its
quota, so the check can fail.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from flowctl.cpu import make_signal
from flowctl.limit.bbr import Bbr
from flowctl.limiter import Limiter, Rejection
from flowctl.signal import CpuSignal
from sidecar.app import build_limiter
from sidecar.config import SidecarConfig
from sidecar.watch import WatchedSignal, parse_watch

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "cgroup" / "lxcfs-dir"
HZ = os.sysconf("SC_CLK_TCK")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Machine:
    """The fixture's counters, moved forward as a 0.5-CPU group at 40% of its quota on a busier 2-CPU host."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sys/devices/system/cpu/online").write_text("0-1\n")
        (root / "var/lib/lxcfs/sys/devices/system/cpu/online").write_text("0\n")  # lxcfs rounds 0.5 up to 1
        self.host_busy = self.host_idle = self.lx_busy = self.lx_idle = 0
        self.group_ns = self.periods = 0

    def advance(self, seconds: float) -> None:
        ticks = round(seconds * HZ)
        self.host_busy += round(0.7 * ticks)  # 35% of 2 CPUs: the group's 0.2 and 0.5 of others
        self.host_idle += 2 * ticks - round(0.7 * ticks)
        self.lx_busy += round(0.2 * ticks)
        self.lx_idle += ticks - round(0.2 * ticks)
        self.group_ns += round(0.2 * seconds * 1e9)
        self.periods += round(seconds / 0.1)
        r = self.root
        (r / "proc/stat").write_text(f"cpu  {self.host_busy} 0 0 {self.host_idle} 0 0 0 0 0 0\n")
        (r / "var/lib/lxcfs/proc/stat").write_text(f"cpu  {self.lx_busy} 0 0 {self.lx_idle} 0 0 0 0 0 0\n")
        (r / "sys/fs/cgroup/cpuacct/app/cpuacct.usage").write_text(f"{self.group_ns}\n")
        (r / "sys/fs/cgroup/cpu/app/cpu.stat").write_text(
            f"nr_periods {self.periods}\nnr_throttled 0\nthrottled_time 0\n"
        )


def _signal(kind: str, view: str, root: str, clock: Clock) -> Any:
    """The signal as each integration builds it: the in-process Sampler, or the sidecar's WatchedSignal."""
    if kind == "in-process":
        return make_signal(view, root=root, clock=clock, fallback=False)
    return WatchedSignal(parse_watch("self"), view=view, clock=clock,
                         sampler_factory=lambda pid, path: make_signal(view, root=root, clock=clock, fallback=False))  # fmt: skip


def _limiter(kind: str, signal: CpuSignal, clock: Clock) -> Limiter:
    if kind == "in-process":  # bench.upstream's bbr-<view> variants
        return Limiter(signal, Bbr(), clock=clock)
    return build_limiter(SidecarConfig(), signal, clock=clock)


def drive(lim: Limiter, signal: Any, machine: Machine, clock: Clock, seconds: float = 3.0) -> None:
    """Readings every 100 ms; in between, requests of 10 ms, 3 in flight at a time."""
    for _ in range(round(seconds / 0.1)):
        machine.advance(0.1)
        signal.sample()
        for _ in range(5):
            held = [lim.acquire() for _ in range(3)]
            clock.now += 0.01
            for d in held:
                if not isinstance(d, Rejection):
                    d.success()
            clock.now += 0.01


@pytest.mark.parametrize("kind", ["in-process", "sidecar"])
@pytest.mark.parametrize("view,cpus", [("host", 2.0), ("lxcfs", 1.0), ("container", 0.5)])
def test_every_machine_input_comes_from_the_view_under_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, view: str, cpus: float
) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    monkeypatch.delenv("FLOWCTL_LXCFS_DIR", raising=False)
    machine = Machine(root)
    machine.advance(0.1)
    clock = Clock()
    signal = _signal(kind, view, str(root), clock)
    lim = _limiter(kind, signal, clock)
    opened: list[str] = []
    real_open = os.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    drive(lim, signal, machine, clock)
    snap = lim.snapshot()
    cgroup_files = sorted({p for p in opened if "/sys/fs/cgroup/" in p or p.endswith("/self/cgroup")})
    assert snap.cpu.limit_cores == cpus
    cost, min_rt = snap.cpu_per_request_s, snap.min_rt_s
    assert cost is not None and min_rt is not None
    # The ceiling is the view's capacity (its CPUs / CPU per request, the cost learned from the view's
    # usage) times the min RT (the pipe), its chance excess (2 sqrt(pipe)), plus the queue allowance of 3.
    pipe = cpus / cost * min_rt
    assert snap.priority_ceilings["default"] == math.ceil(pipe + 2 * math.sqrt(pipe) + 3 - 1e-9)
    assert lim.period_gate is not None
    if view == "container":
        assert cgroup_files and lim.period_gate.quota_s == pytest.approx(0.05)
    else:
        assert cgroup_files == [] and lim.period_gate.quota_s is None
