"""`flowctl demo cpu` on cgroup v2: the cgroup row reads cpu.max/cpu.stat/cpu.pressure and shows PSI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _demo(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "flowctl", "demo", "cpu", "--seconds", "3", *args],
                       capture_output=True, text=True, timeout=180, cwd=REPO, check=False)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_demo_cpu_on_v2_shows_the_groups_psi(tmp_path: Path) -> None:
    r = json.loads(_demo("--json", "--no-lxcfs"))
    m = r["summary"]
    assert r["cgroup_version"] == 2 and m["cgroup_limit_cores"] == 0.5
    assert all(s["cgroup_pressure_ratio"] is not None for s in r["samples"])
    assert m["cgroup_pressure_ratio"] > 0.1 and m["cgroup_throttled_ratio"] > 0.1  # loose: a shared machine
    png = tmp_path / "demo.png"
    text = _demo("--plot", str(png))
    assert "cpu.max, cpu.stat, cpu.pressure (v2)" in text and "PSI some" in text
    assert "its own cpu.pressure has some task waiting" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
