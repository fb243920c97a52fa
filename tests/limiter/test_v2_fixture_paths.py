"""The limiter fed by a real container Sampler over a cgroup v2 fixture tree (tests/v2/test_limiter_psi.py
runs the same on a live v2 group): the pressure trigger on the group's own cpu.pressure, and the
period gate pacing by the group's own cpu.max."""

from __future__ import annotations

from pathlib import Path

from flowctl import FixedLimit, Limiter, Rejection, Token, make_signal
from flowctl.limiter import Policy
from tests.cpu.v2_tree import (
    PSI_TOTAL_US,
    cpu_pressure,
    cpu_stat,
    group,
    process,
    switched_host,
)
from tests.test_limiter import FakeClock

PID = 4242


def test_pressure_trigger_fires_on_the_groups_own_psi(tmp_path: Path) -> None:
    """tests/v2/test_limiter_psi.py::test_pressure_trigger_fires_on_the_groups_own_psi."""
    switched_host(tmp_path)
    leaf = group(tmp_path, "/flowctl-test-psi", cpu_max="50000 100000")
    process(tmp_path, PID, "/flowctl-test-psi")
    sig = make_signal("container", root=str(tmp_path), pid=PID, interval_s=0.1)
    # CPU gate out of reach (threshold 100x, and no busy precondition): only the pressure trigger can make it hot.
    lim = Limiter(sig, FixedLimit(1), policy=Policy(cpu_threshold=100.0, busy_fraction=0.0, pressure_threshold=0.1, cool_off_s=0.0), clock=FakeClock())
    sig.sample(now=0.0)
    (leaf / "cpu.stat").write_text(cpu_stat(7.5, 410, 109, 3.45))
    (leaf / "cpu.pressure").write_text(cpu_pressure(PSI_TOTAL_US + 300_000))  # 30% of 1 s
    reading = sig.sample(now=1.0)
    held = lim.acquire()
    assert isinstance(held, Token)
    d = lim.acquire()
    snap = lim.snapshot()
    held.success()
    sig.close()
    assert sig.limits is not None and sig.limits.details["pressure_scope"] == "cgroup"
    assert reading.pressure_ratio is not None and abs(reading.pressure_ratio - 0.3) < 1e-9
    assert isinstance(d, Rejection), d
    assert (d.reason.trigger, d.reason.signal_name, d.reason.threshold) == ("pressure", "container", 0.1)
    assert d.reason.signal_value == reading.pressure_ratio
    assert snap.period_margin is not None  # the period gate paces by the leaf's own cpu.max


def test_period_gate_is_off_for_a_group_without_its_own_quota(tmp_path: Path) -> None:
    """The same group limited only by its parent: its periods are the parent's, so no pacing."""
    switched_host(tmp_path)
    group(tmp_path, "/pod", cpu_max="50000 100000")
    group(tmp_path, "/pod/ctr")
    process(tmp_path, PID, "/pod/ctr")
    sig = make_signal("container", root=str(tmp_path), pid=PID, interval_s=0.1)
    lim = Limiter(sig, FixedLimit(1), clock=FakeClock())
    sig.sample(now=0.0)
    sig.sample(now=1.0)
    held = lim.acquire()
    assert isinstance(held, Token)
    snap = lim.snapshot()
    held.success()
    sig.close()
    assert sig.reading.limit_cores == 0.5 and snap.period_margin is None
