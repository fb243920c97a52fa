"""``flowctl run`` as a user runs it: real processes, real groups, real signals (root, cgroup v1)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence

import pytest

from tests import realenv
from tests.workload.helpers import existing, lxcfs_leftovers, unique_name, v1_dirs

pytestmark = pytest.mark.real

FLOWCTL = [sys.executable, "-m", "flowctl"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _need() -> None:
    realenv.need_cgroup_v1("cpu", "cpuacct", "cpuset", "memory")


def _run(args: Sequence[str], *, prefix: Sequence[str] = (), timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *FLOWCTL, "run", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _one_error_line(proc: subprocess.CompletedProcess[str], pattern: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("flowctl run: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]


def _start(args: Sequence[str]) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start ``flowctl run -v ...``; return it and the facts of its ``-v`` line once the child runs."""
    proc = subprocess.Popen([*FLOWCTL, "run", "-v", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stderr is not None and proc.stdout is not None
    line = proc.stderr.readline()
    m = re.match(r"flowctl run: pid (\d+) in cgroup v(\d) (.*)$", line.strip())
    assert m, line
    facts = dict(kv.split("=", 1) for kv in m[3].split())
    facts["pid"] = m[1]
    assert proc.stdout.readline().strip() == "up"  # the child is running its trap-protected loop
    return proc, facts


@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 7", 7), ("kill -KILL $$", 137),
                                              ("kill -TERM $$", 143), ("kill -SEGV $$", 139)])
def test_exit_status_passes_through(script: str, code: int) -> None:
    _need()
    name = unique_name()
    proc = _run(["--cpus", "0.5", "--memory", "64M", "--name", name, "--", "sh", "-c", script])
    assert proc.returncode == code, proc.stderr
    assert existing(v1_dirs(name)) == []


def test_child_sees_its_group_and_output_passes_through() -> None:
    _need()
    name = unique_name()
    proc = _run(["--cpus", "0.25", "--name", name, "--", "sh", "-c",
                 "cat /proc/self/cgroup; cat /sys/fs/cgroup/cpu/$0/cpu.cfs_quota_us", name])
    assert proc.returncode == 0, proc.stderr
    assert f"cpu:/{name}" in proc.stdout and f"cpuset:/{name}" in proc.stdout
    assert proc.stdout.split()[-1] == "25000"
    assert existing(v1_dirs(name)) == []


@pytest.mark.parametrize("lxcfs", [False, True])
def test_launcher_sigterm_is_forwarded_and_everything_is_cleaned(lxcfs: bool) -> None:
    _need()
    if lxcfs:
        realenv.need_binary("lxcfs")
    name = unique_name()
    script = 'trap "exit 42" TERM; echo up; while :; do sleep 0.05; done'
    proc, facts = _start(["--cpus", "0.5", "--memory", "64M", "--name", name,
                          *(["--lxcfs"] if lxcfs else []), "--", "sh", "-c", script])
    assert existing(v1_dirs(name))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 42
    assert existing(v1_dirs(name)) == []
    if lxcfs:
        lx = facts["lxcfs"]
        if lx.startswith("/tmp/flowctl-lxcfs-"):
            assert lxcfs_leftovers(os.path.dirname(lx)) == []


def test_launcher_sigint_is_forwarded() -> None:
    _need()
    name = unique_name()
    proc, _ = _start(["--name", name, "--", "sh", "-c", "echo up; exec sleep 1000"])
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT
    assert existing(v1_dirs(name)) == []


def test_child_ignoring_sigterm_is_killed_after_stop_timeout() -> None:
    _need()
    name = unique_name()
    proc, facts = _start(["--cpus", "0.5", "--stop-timeout", "0.5", "--name", name, "--lxcfs", "--", "sh", "-c",
                          'trap "" TERM; echo up; while :; do sleep 0.05; done'])
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL
    assert existing(v1_dirs(name)) == []
    if facts["lxcfs"].startswith("/tmp/flowctl-lxcfs-"):
        assert lxcfs_leftovers(os.path.dirname(facts["lxcfs"])) == []


def test_keep_leaves_the_group() -> None:
    _need()
    name = unique_name()
    try:
        proc = _run(["--keep", "--cpus", "0.5", "--name", name, "--", "true"])
        assert proc.returncode == 0, proc.stderr
        assert len(existing(v1_dirs(name))) == 4
    finally:
        for d in existing(v1_dirs(name)):
            os.rmdir(d)


@pytest.mark.parametrize(("args", "code", "pattern"), [
    (["--cpus", "abc"], 2, r"invalid --cpus 'abc'"),
    (["--cpus", "0"], 2, r"invalid --cpus"),
    (["--memory", "12Q"], 2, r"invalid --memory '12Q'"),
    (["--cpuset", "1-0"], 2, r"invalid --cpuset"),
    (["--cpuset", "0-4095"], 2, r"CPU .* not available"),
    (["--name", "../etc"], 2, r"invalid --name '\.\./etc'"),
    (["--name", "a/b"], 2, r"invalid --name"),
])
def test_bad_values_are_one_line_errors(args: list[str], code: int, pattern: str) -> None:
    _need()
    proc = _run([*args, "--", "true"])
    assert proc.returncode == code
    _one_error_line(proc, pattern)


def test_missing_command() -> None:
    _need()
    proc = _run(["--", "no-such-command-xyz"])
    assert proc.returncode == 125
    _one_error_line(proc, "command not found: no-such-command-xyz")
    assert _run([]).returncode == 2


def test_not_root() -> None:
    realenv.need_root()
    setpriv = realenv.need_binary("setpriv", "util-linux")
    with realenv.reachable_by_others(str(REPO)):
        proc = _run(["--cpus", "0.5", "--", "true"], prefix=[setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"])
    assert proc.returncode == 125, proc.stderr
    _one_error_line(proc, "needs root")


def _in_private_mounts(setup: str) -> list[str]:
    """Prefix running the launcher in a private mount namespace after ``setup`` (host mounts untouched)."""
    unshare = realenv.need_binary("unshare", "util-linux")
    return [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", f'{setup} && exec "$@"', "sh"]


def test_read_only_cgroupfs() -> None:
    _need()
    name = unique_name()
    proc = _run(["--cpus", "0.5", "--name", name, "--", "true"],
                prefix=_in_private_mounts("mount -o remount,bind,ro /sys/fs/cgroup/cpu"))
    assert proc.returncode == 125, proc.stderr
    _one_error_line(proc, "read-only")
    assert existing(v1_dirs(name)) == []


def test_controller_missing() -> None:
    _need()
    proc = _run(["--memory", "64M", "--", "true"], prefix=_in_private_mounts("umount /sys/fs/cgroup/memory"))
    assert proc.returncode == 125, proc.stderr
    _one_error_line(proc, "controller memory is not mounted")


def test_lxcfs_not_installed() -> None:
    _need()
    lxcfs = shutil.which("lxcfs") or "/usr/bin/lxcfs"
    realenv.need(os.path.exists(lxcfs), "needs lxcfs installed to hide it")
    proc = _run(["--lxcfs", "--", "true"], prefix=_in_private_mounts(f"mount --bind /dev/null {lxcfs}"))
    realenv.need(
        "/var/lib/lxcfs" not in proc.stderr,
        "a system lxcfs runs at /var/lib/lxcfs, so the not-installed path cannot be exercised",
    )
    assert proc.returncode == 125, proc.stderr
    _one_error_line(proc, r"lxcfs is not installed \(Debian/Ubuntu: apt-get install -y lxcfs\)")
