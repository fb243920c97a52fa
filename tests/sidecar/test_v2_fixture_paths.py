"""The sidecar's ``--watch pid:N`` on a process in a cgroup v2 group, on a fixture tree.

tests/v2/test_sidecar_watch.py runs it live (a burner in a v2 group, the sidecar as a process).
Here the same WatchedSignal, with its default sampler factory, reads pid 4242 of a tmp tree of the
switched hybrid host (tests/cpu/v2_tree.py) on a fake clock, and an in-process sidecar serves it
on /debug/limiter.
"""

from __future__ import annotations

import functools
from pathlib import Path

import aiohttp
import pytest

from flowctl import cpu
from sidecar.watch import WatchedSignal, parse_watch
from tests.cpu.v2_tree import (
    PSI_TOTAL_US,
    UNIFIED,
    cpu_pressure,
    cpu_stat,
    group,
    process,
    switched_host,
)
from tests.sidecar.conftest import MakeSidecar, Upstream, admin_url, config_for
from tests.test_limiter import FakeClock

PID = 4242
LEAF = "/flowctl-test-watch"


async def test_sidecar_watch_pid_on_a_v2_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstream: Upstream, make_sidecar: MakeSidecar,
    client: aiohttp.ClientSession,
) -> None:  # fmt: skip
    """tests/v2/test_sidecar_watch.py::test_sidecar_watch_pid_on_a_v2_process."""
    switched_host(tmp_path)
    leaf = group(tmp_path, LEAF, cpu_max="50000 100000")
    at = str(process(tmp_path, PID, LEAF)) + f"/{UNIFIED}{LEAF}"
    clock = FakeClock(0.0)
    # The default factory builds flowctl.cpu.make_signal(view, pid=N): here, under the fixture root.
    monkeypatch.setattr(cpu, "make_signal", functools.partial(cpu.make_signal, root=str(tmp_path), clock=clock))
    sig = WatchedSignal(parse_watch(f"pid:{PID}"), interval_s=0.1, proc_root=str(tmp_path / "proc"), clock=clock)
    sig.sample()
    (leaf / "cpu.stat").write_text(cpu_stat(7.5, 410, 109, 3.45))
    (leaf / "cpu.pressure").write_text(cpu_pressure(PSI_TOTAL_US + 600_000))
    clock.advance(1.0)
    sig.sample()
    sc = await make_sidecar(config_for(upstream.url, watch=f"pid:{PID}"), signal=sig)
    async with client.get(admin_url(sc, "/debug/limiter")) as r:
        dbg = await r.json()
    await sig.stop()  # closes the sampler's files (the sidecar stops only what it started)
    assert dbg["watch"]["pid"] == PID and dbg["watch"]["signal_ok"] is True
    details = dbg["cpu_details"]["container"]["details"]
    assert details["version"] == 2 and details["dirs"]["cpu"] == at  # read through its mount namespace
    assert details["pressure_source"] == f"{at}/cpu.pressure" and details["pressure_scope"] == "cgroup"
    cpu_now = dbg["cpu"]["container"]
    assert cpu_now["limit_cores"] == pytest.approx(0.5)
    assert cpu_now["usage_cores"] == pytest.approx(0.5) and cpu_now["pressure_ratio"] == pytest.approx(0.6)
