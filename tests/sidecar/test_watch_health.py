"""Naming a `python -m` service, `cmdline:REGEX`, and never a silent wrong number when the target cannot be read."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from flowctl.signal import CpuReading
from sidecar.watch import REMEDY, WatchedSignal, find_cmdline, find_process, parse_watch, run_module
from tests.realenv import need_root, reachable_by_others
from tests.sidecar.conftest import REPO, MakeSidecar, Upstream, admin_url, config_for


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["python3", "-m", "http.server", "8080"], "http.server"),
        (["python3", "-mhttp.server"], "http.server"),
        (["/usr/bin/python3", "-u", "-B", "-m", "myservice", "-m", "x"], "myservice"),
        (["python3", "-X", "dev", "-W", "error", "-m", "svc"], "svc"),
        (["python3", "app.py", "-m", "svc"], None),  # runs app.py; its own arguments do not count
        (["python3", "-c", "import x", "-m", "svc"], None),
        (["python3", "-m"], None),
        (["python3"], None),
        (["nginx", "-g", "daemon off;"], None),
    ],
)
def test_run_module(argv: list[str], module: str | None) -> None:
    assert run_module(argv) == module


def test_parse_watch_cmdline() -> None:
    assert str(parse_watch(r"cmdline:http\.server \d+")) == r"cmdline:http\.server \d+"
    with pytest.raises(ValueError, match="does not compile"):
        parse_watch("cmdline:(unclosed")
    with pytest.raises(ValueError, match="cmdline:REGEX"):
        parse_watch("cmdline:")


@pytest.fixture
def http_server_module() -> Iterator[subprocess.Popen[bytes]]:
    """A real ``python3 -m http.server`` on an ephemeral port, returned once it has exec'd."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                if b"http.server" in f.read():
                    break
            time.sleep(0.005)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def test_python_m_service_is_found_by_its_module(http_server_module: subprocess.Popen[bytes]) -> None:
    pid = http_server_module.pid
    assert find_process("http.server") == pid
    assert find_process("http") != pid  # whole module names only
    assert find_cmdline(r"-m http\.server 0 --bind") == pid
    sig = WatchedSignal(parse_watch("process:http.server"), sampler_factory=lambda p, c: _Fake(), recheck_s=0.0)
    assert sig.check() is True and sig.pid == pid


def test_cmdline_regex_never_matches_the_sidecar_itself() -> None:
    # Our own argv contains "pytest"; the sidecar's pid is always excluded.
    assert find_cmdline("pytest", exclude=frozenset({os.getpid()})) != os.getpid()


class _Fake:
    """A sampler whose counters become unreadable (usage None plus errors) on demand."""

    def __init__(self) -> None:
        self.denied = False
        self.reading = CpuReading(at=1.0, utilization=0.5, usage_cores=0.25, limit_cores=0.5)

    def sample(self, now: float | None = None) -> CpuReading:
        if self.denied:
            return CpuReading(at=2.0, limit_cores=2.0)  # the fallback a failed read produces: a wrong limit
        return self.reading

    def errors(self) -> list[str]:
        return ["/proc/7/root/sys/fs/cgroup/cpuacct/cpuacct.usage: Permission denied"] if self.denied else []


def test_unreadable_counters_are_loud_once_unknown_and_recover(caplog: pytest.LogCaptureFixture) -> None:
    fake = _Fake()
    sig = WatchedSignal(parse_watch("self"), sampler_factory=lambda p, c: fake, recheck_s=60.0)
    caplog.set_level(logging.INFO, logger="sidecar.watch")
    sig.sample(now=0.0)
    sig.sample(now=0.1)
    assert sig.signal_ok is True and sig.reading.limit_cores == 0.5
    fake.denied = True
    for i in range(5):
        sig.sample(now=0.2 + i * 0.1)
    assert sig.signal_ok is False
    assert sig.reading.limit_cores is None and sig.reading.utilization is None  # unknown, not the fallback 2.0
    assert "Permission denied" in (sig.last_error or "") and sig.remedy == REMEDY
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "CAP_SYS_PTRACE" in errors[0].getMessage()
    assert "does NOT shed on CPU" in errors[0].getMessage()
    d = sig.describe()
    assert d["signal_ok"] is False and d["last_error"] and d["remedy"] == REMEDY
    fake.denied = False
    sig.sample(now=1.0)
    assert sig.signal_ok is True and sig.last_error is None and sig.reading.limit_cores == 0.5


def test_missing_process_is_reported_with_its_remedy(caplog: pytest.LogCaptureFixture) -> None:
    sig = WatchedSignal(parse_watch("process:flowctl-no-such-process"), sampler_factory=lambda p, c: _Fake(), recheck_s=0.0)
    caplog.set_level(logging.INFO, logger="sidecar.watch")
    for i in range(3):
        sig.sample(now=float(i))
    assert sig.signal_ok is False and "no process" in (sig.last_error or "")
    assert "module after -m" in (sig.remedy or "")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


_CHILD = """
import json, sys
from sidecar.watch import WatchedSignal, parse_watch
sig = WatchedSignal(parse_watch(sys.argv[1]))
for i in range(3):
    sig.sample(now=float(i))
print(json.dumps({**sig.describe(), "limit_cores": sig.reading.limit_cores}))
"""


@pytest.mark.real
def test_another_uid_cannot_read_the_target_and_says_so() -> None:
    """As uid 65534 watching a root process: EACCES on /proc/PID/root, reported, never the host's 2 CPUs."""
    need_root()
    target = subprocess.Popen(["sleep", "60"])
    try:
        with reachable_by_others(str(REPO)):  # a clone under a 0700 mktemp dir
            out = subprocess.run(
                ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                 sys.executable, "-c", _CHILD, f"pid:{target.pid}"],
                cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
    finally:
        target.kill()
        target.wait(10)
    state: dict[str, Any] = json.loads(out.stdout)
    assert state["signal_ok"] is False and state["resolved"] is False
    assert "Permission denied" in state["last_error"] and state["remedy"] == REMEDY
    assert state["limit_cores"] is None
    assert out.stderr.count("CAP_SYS_PTRACE") == 1  # one loud line, not one per sample


async def test_admin_shows_an_unreadable_watch(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    """/readyz stays 200 but says degraded; flowctl_signal_ok 0; /debug/limiter has the error and remedy."""
    sc = await make_sidecar(config_for(upstream.url, watch="process:flowctl-no-such-process", sample_interval_s=0.05))
    async with client.get(admin_url(sc, "/metrics")) as r:
        assert 'flowctl_signal_ok{view="container"} 0.0' in await r.text()
    async with client.get(admin_url(sc, "/debug/limiter")) as r:
        watch = (await r.json())["watch"]
    assert watch["signal_ok"] is False and "no process" in watch["last_error"] and watch["remedy"]
    for _ in range(100):  # the upstream probe must have answered first
        async with client.get(admin_url(sc, "/readyz")) as r:
            text = await r.text()
        if r.status == 200:
            break
        await asyncio.sleep(0.05)
    assert r.status == 200 and text.startswith("ready, degraded: CPU signal unavailable")


async def test_admin_signal_ok_when_watching_self(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url, sample_interval_s=0.05))
    await asyncio.sleep(0.2)
    async with client.get(admin_url(sc, "/metrics")) as r:
        assert 'flowctl_signal_ok{view="container"} 1.0' in await r.text()

