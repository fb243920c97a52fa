"""The sidecar's `--watch pid:` on a process in a live v2 group: its limit, usage and own PSI."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.sidecar.conftest import read_json, start_sidecar_proc, upstream_proc  # noqa: F401
from tests.v2.helpers import burner_in, v2_group

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_sidecar_watch_pid_on_a_v2_process(upstream_proc: Any) -> None:  # noqa: F811
    with v2_group(cpu_max={"": "50000 100000"}) as leaf, burner_in(leaf) as p:
        sc = start_sidecar_proc(upstream_proc.url, "--watch", f"pid:{p.pid}", "--sample-interval", "0.1")
        try:
            deadline = time.monotonic() + 10
            while True:
                dbg = read_json(f"http://127.0.0.1:{sc.admin_port}/debug/limiter")
                cpu = dbg["cpu"]["container"]
                if cpu["usage_cores"] is not None and cpu["pressure_ratio"] is not None:
                    break
                assert time.monotonic() < deadline, dbg
                time.sleep(0.1)
            time.sleep(1.0)
            dbg = read_json(f"http://127.0.0.1:{sc.admin_port}/debug/limiter")
        finally:
            assert sc.stop() == 0
    cpu = dbg["cpu"]["container"]
    details = dbg["cpu_details"]["container"]["details"]
    assert dbg["watch"]["pid"] == p.pid
    assert details["version"] == 2 and details["dirs"]["cpu"] == f"/proc/{p.pid}/root{leaf}"  # its mount namespace
    assert details["pressure_source"].endswith(f"{leaf}/cpu.pressure")
    assert cpu["limit_cores"] == pytest.approx(0.5)
    assert cpu["usage_cores"] > 0.1 and cpu["pressure_ratio"] > 0.1  # loose: a shared machine
