"""``flowctl gc`` after a SIGKILLed ``flowctl run``: real launchers, groups, lxcfs and processes (root, v1).

The test process becomes a child subreaper for the test so the killed launcher's orphans
(its workload and its lxcfs) are reparented to it and reaped here (PID 1 does not reap).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import realenv
from tests.workload.helpers import existing, unique_name, v1_dirs

pytestmark = pytest.mark.real

FLOWCTL = [sys.executable, "-m", "flowctl"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def subreaper() -> Iterator[None]:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _reap(pid: int, timeout_s: float = 15.0) -> None:
    """Wait for an orphan reparented to us (it must exit by itself or by what the test did)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not ours (already reaped, or reparented elsewhere)
        if done:
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"orphan {pid} did not exit")
        time.sleep(0.05)


def _start(env: dict[str, str], args: Sequence[str]) -> tuple[subprocess.Popen[str], int]:
    """``flowctl run -v ... -- sh -c 'echo up; read x'``: returns it and the workload's pid once it runs."""
    proc = subprocess.Popen([*FLOWCTL, "run", "-v", *args, "--", "sh", "-c", "echo up; read x"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env)  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    line = proc.stderr.readline()
    m = re.match(r"flowctl run: pid (\d+) ", line)
    assert m, line
    assert proc.stdout.readline().strip() == "up"
    return proc, int(m[1])


def _records(run_dir: Path) -> dict[str, dict[str, object]]:
    d = run_dir / "launchers"
    return {p.name: json.loads(p.read_text()) for p in d.glob("*.json")} if d.exists() else {}


def _gc(env: dict[str, str]) -> dict[str, list[str]]:
    out = subprocess.run([*FLOWCTL, "gc", "--json"], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    result: dict[str, list[str]] = json.loads(out.stdout)
    return result


def _kill_launcher(proc: subprocess.Popen[str], workload_pid: int) -> None:
    """SIGKILL the launcher (its workload runs on), then end the workload and reap it."""
    proc.kill()
    proc.wait(timeout=10)
    assert proc.stdin is not None
    proc.stdin.close()  # the workload's `read` sees EOF and exits
    _reap(workload_pid)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def _mounted(path: str) -> bool:
    return any(line.split()[4] == path for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_gc_after_a_sigkilled_launcher_touches_nothing_live(tmp_path: Path, subreaper: None) -> None:
    realenv.need_cgroup_v1("cpu", "cpuacct", "cpuset", "memory")
    realenv.need_binary("lxcfs")
    run_dir = tmp_path / "run"
    env = {**os.environ, "FLOWCTL_RUN_DIR": str(run_dir)}
    dead_name, live_name, late_name = unique_name(), unique_name(), unique_name()
    live: subprocess.Popen[str] | None = None
    try:
        dead, dead_pid = _start(env, ["--cpus", "0.5", "--memory", "64M", "--lxcfs", "--name", dead_name])
        live, _ = _start(env, ["--cpus", "0.5", "--lxcfs", "--name", live_name])
        recs = _records(run_dir)
        dead_rec = next(r for r in recs.values() if r["name"] == dead_name)
        live_rec = next(r for r in recs.values() if r["name"] == live_name)
        workdir = str(dead_rec["lxcfs_workdir"])
        lxcfs_pid = int((Path(workdir) / "lxcfs.pid").read_text())

        dead.kill()  # SIGKILL while its workload runs: the groups are busy, gc must keep them
        dead.wait(timeout=10)
        kept = _gc(env)
        assert sorted(kept["busy_groups"]) == sorted(v1_dirs(dead_name)), kept
        assert existing(v1_dirs(dead_name)) == sorted(v1_dirs(dead_name)) or existing(v1_dirs(dead_name))
        assert len(kept["live_records"]) == 1 and len(_records(run_dir)) == 2

        assert dead.stdin is not None
        dead.stdin.close()  # now the workload ends: its groups are empty leftovers
        _reap(dead_pid)
        _reap(lxcfs_pid)  # its pdeath signal stopped it; reparented to us
        for f in (dead.stdout, dead.stderr):
            if f is not None:
                f.close()
        assert existing(v1_dirs(dead_name)), "the killed launcher left no groups: nothing to test"

        done = _gc(env)
        assert existing(v1_dirs(dead_name)) == []
        assert sorted(done["removed_groups"]) == sorted(v1_dirs(dead_name)), done
        assert not os.path.exists(workdir) and not _mounted(str(dead_rec["lxcfs_dir"]))
        assert [r["name"] for r in _records(run_dir).values()] == [live_name]
        # The live launcher's groups, lxcfs mount and record are untouched.
        assert len(existing(v1_dirs(live_name))) == 4 and _mounted(str(live_rec["lxcfs_dir"]))

        # `flowctl run` removes stale leftovers itself when it starts.
        late, late_pid = _start(env, ["--cpus", "0.5", "--name", late_name])
        _kill_launcher(late, late_pid)
        assert existing(v1_dirs(late_name))
        out = subprocess.run([*FLOWCTL, "run", "-v", "--", "true"], capture_output=True, text=True, cwd=REPO, env=env,
                             timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert existing(v1_dirs(late_name)) == []
        assert "removed a killed launcher's" in out.stderr
        assert len(existing(v1_dirs(live_name))) == 4
    finally:
        if live is not None:
            live.send_signal(signal.SIGTERM)
            live.communicate(timeout=30)
        for name in (dead_name, live_name, late_name):  # whatever a failure left
            for d in reversed(existing(v1_dirs(name))):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
    assert existing(v1_dirs(live_name)) == []
