"""Whose CPU: finding processes, following restarts, and watching a real child started by `flowctl run`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowctl.signal import CpuReading
from sidecar.watch import WatchedSignal, find_process, parse_watch, process_start_ticks
from tests.realenv import need_cgroup_v1
from tests.sidecar.conftest import REPO, read_json, start_sidecar_proc, upstream_proc  # noqa: F401


def _named_sleeper(name: str) -> subprocess.Popen[bytes]:
    """A child whose argv[0] is ``name`` (comm stays "sleep"), returned once it has exec'd.

    Between fork and exec the child's cmdline is still ours: looking it up by
    name before the exec would race (seen as a flake on a loaded machine).
    """
    proc = subprocess.Popen([name, "60"], executable=shutil.which("sleep"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[0] == name.encode():
                    return proc
        except OSError:
            pass
        time.sleep(0.005)
    _reap(proc)
    raise AssertionError(f"child {proc.pid} never exec'd as {name}")


def _reap(p: subprocess.Popen[Any]) -> None:
    if p.poll() is None:
        p.terminate()
    p.wait(10)


def test_find_process_by_argv0_and_restart_is_followed() -> None:
    name = f"flowctl-test-{uuid.uuid4().hex[:8]}"
    made: list[tuple[Any, Any]] = []

    class FakeSampler:
        def __init__(self, pid: Any, path: Any) -> None:
            self.pid = pid
            self.reading = CpuReading(at=1.0, utilization=0.5, limit_cores=1.0)

        def sample(self, now: float | None = None) -> CpuReading:
            return self.reading

    def factory(pid: Any, path: Any) -> FakeSampler:
        made.append((pid, path))
        return FakeSampler(pid, path)

    sig = WatchedSignal(parse_watch(f"process:{name}"), sampler_factory=factory, recheck_s=0.0)
    assert sig.check() is False  # nothing yet: unknown reading, no shedding on CPU
    assert sig.reading.utilization is None and "no process" in (sig.last_error or "")
    a = _named_sleeper(name)
    try:
        assert find_process(name) == a.pid
        assert sig.sample().utilization == 0.5
        assert sig.pid == a.pid and sig.resolutions == 1
        _reap(a)
        sig.sample()
        assert sig.pid is None and sig.reading.utilization is None  # gone: unknown, not stale
        b = _named_sleeper(name)
        try:
            sig.sample()
            assert sig.pid == b.pid and sig.resolutions == 2
            assert made == [(a.pid, None), (b.pid, None)]
        finally:
            _reap(b)
    finally:
        _reap(a)


def test_pid_target_detects_a_replaced_process(tmp_path: Path) -> None:
    """Same pid, different start time (pid reuse) counts as a restart."""
    proc = tmp_path / "proc"
    (proc / "77").mkdir(parents=True)
    stat = proc / "77" / "stat"
    fields = " ".join(["S"] + ["0"] * 18 + ["1000"] + ["0"] * 10)
    stat.write_text(f"77 (my app) {fields}\n")
    assert process_start_ticks(77, str(proc)) == 1000
    sig = WatchedSignal(parse_watch("pid:77"), sampler_factory=lambda pid, path: object(), proc_root=str(proc))
    assert sig.check() and sig.resolutions == 1
    assert sig.check() and sig.resolutions == 1
    stat.write_text(f"77 (my app) {fields.replace('1000', '2000')}\n")
    assert sig.check() and sig.resolutions == 2


def test_find_process_prefers_the_top_of_a_tree(tmp_path: Path) -> None:
    proc = tmp_path / "proc"

    def mk(pid: int, ppid: int, comm: str, start: int) -> None:
        d = proc / str(pid)
        d.mkdir(parents=True)
        fields = " ".join(["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 10)
        (d / "stat").write_text(f"{pid} ({comm}) {fields}\n")
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_bytes(f"/usr/bin/{comm}\0--workers\0".encode())

    mk(10, 1, "gunicorn", 500)  # master
    mk(11, 10, "gunicorn", 600)  # workers
    mk(12, 10, "gunicorn", 601)
    mk(20, 1, "nginx", 100)
    assert find_process("gunicorn", proc_root=str(proc), exclude=frozenset()) == 10
    assert find_process("/usr/bin/nginx", proc_root=str(proc), exclude=frozenset()) == 20
    assert find_process("absent", proc_root=str(proc), exclude=frozenset()) is None


def test_watch_self_reads_our_own_cgroup() -> None:
    sig = WatchedSignal(parse_watch("self"), interval_s=0.05)
    sig.sample()
    time.sleep(0.1)
    r = sig.sample()
    assert sig.pid == os.getpid()
    assert r.limit_cores is not None and r.limit_cores > 0


@pytest.fixture
def flowctl_run_child() -> Iterator[tuple[str, str]]:
    """A CPU burner named flowctl-test-burn-<uuid8> in a real 0.5-CPU cgroup made by `flowctl run`."""
    need_cgroup_v1("cpu", "cpuacct")
    tag = uuid.uuid4().hex[:8]
    name, group = f"flowctl-test-burn-{tag}", f"flowctl-test-{tag}"
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "flowctl", "run", "--cpus", "0.5", "--name", group, "--",
               "bash", "-c", f"exec -a {name} {sys.executable} -c 'while True: pass'"]  # fmt: skip
        p = subprocess.Popen(cmd, cwd=REPO)
        procs.append(p)
        deadline = time.monotonic() + 20
        while find_process(name) is None:
            assert p.poll() is None, f"flowctl run exited with {p.returncode}"
            assert time.monotonic() < deadline, "the child never appeared"
            time.sleep(0.05)
        return p

    start()
    try:
        yield name, group
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ctrl in ("cpu", "cpuacct", "cpuset", "memory"):
            d = f"/sys/fs/cgroup/{ctrl}/{group}"
            if os.path.isdir(d):
                os.rmdir(d)


@pytest.mark.real
@pytest.mark.slow
def test_watch_a_child_started_by_flowctl_run(flowctl_run_child: tuple[str, str]) -> None:
    name, group = flowctl_run_child
    sig = WatchedSignal(parse_watch(f"process:{name}"), interval_s=0.1)
    sig.sample()
    time.sleep(0.5)
    r = sig.sample()
    pid = find_process(name)
    assert sig.pid == pid and pid != os.getpid()
    assert r.limit_cores == pytest.approx(0.5)  # the child's quota, not ours (the test runs unlimited)
    assert r.usage_cores is not None and r.usage_cores > 0.1  # it burns CPU in its own group
    details = sig.sampler.details()
    assert details["details"]["dirs"]["cpu"].endswith("/" + group)


@pytest.mark.real
@pytest.mark.slow
def test_sidecar_process_watches_flowctl_run_child(flowctl_run_child: tuple[str, str], upstream_proc: Any) -> None:  # noqa: F811
    name, group = flowctl_run_child
    sc = start_sidecar_proc(upstream_proc.url, "--watch", f"process:{name}", "--sample-interval", "0.1")
    try:
        deadline = time.monotonic() + 10
        while True:
            dbg = read_json(f"http://127.0.0.1:{sc.admin_port}/debug/limiter")
            cpu = dbg["cpu"]["container"]
            if cpu["usage_cores"] is not None:
                break
            assert time.monotonic() < deadline, dbg
            time.sleep(0.1)
        assert dbg["watch"]["pid"] == find_process(name)
        assert cpu["limit_cores"] == pytest.approx(0.5)
        assert dbg["cpu_details"]["container"]["details"]["dirs"]["cpu"].endswith("/" + group)
    finally:
        assert sc.stop() == 0


def test_watched_signal_runs_as_a_task() -> None:
    async def main() -> int:
        async with WatchedSignal(parse_watch("self"), interval_s=0.02) as sig:
            await asyncio.sleep(0.15)
            assert sig.reading.limit_cores is not None
            return sig.resolutions

    assert asyncio.run(main()) == 1
