"""``flowctl inspect``: JSON keys, table, exit codes, --watch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flowctl.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cgroup"
KEYS = {
    "host": {"cpus", "utilization"},
    "cgroup": {"version", "path", "limit_cores", "cpuset_cpus", "utilization", "throttled_ratio", "pressure_ratio",
               "memory_limit_bytes"},
    "effective": {"cpus", "source"},
}


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(["inspect", "--json", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_json_keys_on_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    code, r = _json(capsys, "--root", str(FIXTURES / "lxcfs-dir"), "--interval", "0")
    assert code == 0
    for section, keys in KEYS.items():
        assert keys <= set(r[section])  # type: ignore[call-overload]
    assert r["lxcfs"] == r["lxcfs"] and {"cpus", "utilization", "mem_total_bytes"} <= set(r["lxcfs"])  # type: ignore[call-overload]
    assert isinstance(r["errors"], list)
    assert r["cgroup"]["utilization"] is None  # type: ignore[index]  # --interval 0: limits only
    assert r["effective"] == r["effective"] and r["effective"]["source"] == "quota"  # type: ignore[index]


def test_root_uses_tree_cpu_count_not_affinity(capsys: pytest.CaptureFixture[str]) -> None:
    _, r = _json(capsys, "--root", str(FIXTURES / "v2-unlimited"), "--interval", "0")
    assert r["host"]["cpus"] == 8 and r["effective"]["cpus"] == 8.0  # type: ignore[index]
    assert r["effective"]["affinity_cpus"] is None  # type: ignore[index]


def test_live_json_with_interval(capsys: pytest.CaptureFixture[str]) -> None:
    code, r = _json(capsys, "--interval", "0.2")
    assert code == 0
    assert r["host"]["cpus"] and r["cgroup"]["version"] in (1, 2)  # type: ignore[index]
    u = r["cgroup"]["utilization"]  # type: ignore[index]
    assert u is None or u >= 0


def test_table_lists_views_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--root", str(FIXTURES / "garbage-quota"), "--interval", "0"]) == 0
    out = capsys.readouterr().out
    assert "host (/proc)" in out and "cgroup v1" in out and "flowctl uses" in out
    assert "error: cgroup:" in out and "cpu.cfs_quota_us" in out


def test_nothing_readable_exits_nonzero_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--root", str(tmp_path / "nothing"), "--interval", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowctl inspect: nothing readable") and err.count("\n") == 1


def test_watch_prints_until_interrupted() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "flowctl", "inspect", "--json", "--watch", "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        for line in lines:
            assert "effective" in json.loads(line)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
