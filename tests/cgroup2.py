"""Switching this hybrid host's cpu and cpuset controllers to cgroup v2 for the live v2 tests.

Opt-in only: nothing here changes the machine unless ``FLOWCTL_CGROUP2_LIVE=1``
(``.ci/run`` sets it); a developer's plain ``pytest`` skips the live v2 tests.
``switched_to_v2()`` always restores v1 on the way out (test failure, pytest-timeout,
Ctrl-C, SIGTERM) and checks the cgroup mounts are what they were before.
``recover_at_session_start()`` (called from tests/conftest.py) restores a machine a
crashed session (SIGKILL) left switched. The work is done by scripts/cgroup2.sh.
By convention run these under ``flock /run/flowctl-machine.lock``: other agents'
tests need the v1 cpu hierarchy. The code never takes that lock itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

from flowctl.cpu.parse import parse_mountinfo

LIVE_ENV = "FLOWCTL_CGROUP2_LIVE"
UNIFIED = "/sys/fs/cgroup/unified"
SCRIPT = str(Path(__file__).resolve().parent.parent / "scripts" / "cgroup2.sh")
MOVED = ("cpu", "cpuset")
REFUSED_EXIT = 4  # scripts/cgroup2.sh: the kernel refuses the switch (umount busy with no holder, or no bind)
REFUSED_PREFIX = "cgroup2.sh: refused by kernel "

MountKey = tuple[str, str, str, str, str, str]


def live_enabled() -> bool:
    """True when the environment opts in to switching the machine (``FLOWCTL_CGROUP2_LIVE=1``)."""
    return os.environ.get(LIVE_ENV) == "1"


def cgroup_mounts() -> list[MountKey]:
    """Every cgroup/cgroup2 mount as ``(mount_point, root, options, fstype, source, super_options)``, sorted.

    Mount ids and device numbers are left out: a remounted hierarchy gets new ones.
    """
    with open("/proc/self/mountinfo", "rb") as f:
        mounts, _bad = parse_mountinfo(f.read())
    return sorted((m.mount_point, m.root, ",".join(m.options), m.fstype, m.source, ",".join(m.super_options))
                  for m in mounts if m.fstype in ("cgroup", "cgroup2"))


def cpu_on_v2() -> bool:
    """True when no v1 hierarchy carries ``cpu`` (it is on the cgroup2 mount, or being freed)."""
    return not any(fstype == "cgroup" and "cpu" in sup.split(",") for _mp, _r, _o, fstype, _s, sup in cgroup_mounts())


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run scripts/cgroup2.sh with ``args``; output captured, never raises on a non-zero exit."""
    # on waits up to FLOWCTL_CGROUP2_BUSY_WAIT_S (10 s) for open files in the v1 hierarchy to close
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=180, check=False)


def restore() -> None:
    """Put cpu and cpuset back on v1 (``scripts/cgroup2.sh off``); RuntimeError if the script fails."""
    r = run_script("off")
    if r.returncode != 0 or cpu_on_v2():
        raise RuntimeError(f"scripts/cgroup2.sh off failed (exit {r.returncode}): {r.stdout}{r.stderr}")


def recover_at_session_start(say: Callable[[str], None]) -> None:
    """Restore a machine a crashed session left on v2 (only with the opt-in; otherwise just say so)."""
    if not cpu_on_v2() or os.geteuid() != 0 or not os.path.exists(os.path.join(UNIFIED, "cgroup.controllers")):
        return
    if not live_enabled():
        say(f"the cpu controller is on cgroup v2 (a crashed live v2 session?): v1 tests will fail; "
            f"restore with `bash {SCRIPT} off`, or run with {LIVE_ENV}=1")
        return
    restore()
    say("restored the cpu/cpuset controllers to cgroup v1 (left switched to v2 by an earlier session)")


@dataclass(frozen=True)
class SwitchOutcome:
    """What ``scripts/cgroup2.sh on`` reported: ``switched``; ``refused`` (the kernel cannot switch: a
    capability this machine lacks, not our bug); or ``failed`` (a holder of ours, bad state: a bug)."""

    kind: Literal["switched", "refused", "failed"]
    detail: str


def classify_switch(returncode: int, stdout: str, stderr: str) -> SwitchOutcome:
    """Decide from the script's exit code and output alone; ``refused`` needs both exit 4 and its line."""
    if returncode == 0:
        return SwitchOutcome("switched", stdout.strip())
    if returncode == REFUSED_EXIT:
        for line in stderr.splitlines():
            if line.startswith(REFUSED_PREFIX):
                return SwitchOutcome("refused", line.removeprefix("cgroup2.sh: "))
    return SwitchOutcome("failed", f"scripts/cgroup2.sh on failed (exit {returncode}): {stdout}{stderr}")


class SwitchRefused(RuntimeError):
    """The kernel refused the switch (``SwitchOutcome.kind == "refused"``); the message says how."""


class HierarchyInUse(RuntimeError):
    """Another job's live processes keep groups in the v1 cpu hierarchy (a benchmark run by someone else
    on this shared machine): the switch cannot be tried now. Not raised for our own processes or for an
    empty group left behind: those are leaks of ours."""


V1_CPU = "/sys/fs/cgroup/cpu"
FOREIGN_WAIT_S = float(os.environ.get("FLOWCTL_CGROUP2_FOREIGN_WAIT_S", "60"))
OUR_PREFIX = "flowctl-"  # the groups our launcher, tests and benches create
V1_ROOTS = tuple(f"/sys/fs/cgroup/{c}" for c in ("cpu", "cpuacct", "cpuset", "memory"))  # where the launcher makes them
SESSION_STARTED = time.time()  # this module is imported when the test session starts (tests/conftest.py)


def _ancestors(pid: int) -> set[int]:
    """``pid`` and its parents up to PID 1 (empty if it is gone)."""
    seen: set[int] = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def v1_cpu_children(root: str = V1_CPU) -> dict[str, list[int]]:
    """The child groups of the v1 cpu hierarchy (top level; podman's empty libpod_parent left out, as
    the script removes it) and the pids anywhere below each."""
    out: dict[str, list[int]] = {}
    for entry in os.scandir(root) if os.path.isdir(root) else ():
        if not entry.is_dir():
            continue
        pids: list[int] = []
        for dirpath, _dirs, files in os.walk(entry.path):
            if "cgroup.procs" in files:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids += [int(line) for line in f if line.strip()]
        if entry.name == "libpod_parent" and not pids:
            continue
        out[entry.name] = pids
    return out


def wait_v1_cpu_free(timeout_s: float = FOREIGN_WAIT_S, *, root: str = V1_CPU, poll_s: float = 1.0) -> None:
    """Return once the v1 cpu hierarchy has no child group. Groups held by another job's live processes
    are waited for up to ``timeout_s``, then HierarchyInUse; an empty group, or one holding a process of
    this test session, is a leak of ours: RuntimeError at once. An empty ``flowctl-*`` group made before
    this session started is what an earlier run left: removed, with a line on stderr."""
    me = os.getpid()
    deadline = time.monotonic() + timeout_s
    while True:
        children = v1_cpu_children(root)
        for name in remove_stale_groups(root, children):
            del children[name]
        if not children:
            return
        ours = {name: pids for name, pids in children.items() if not pids or any(me in _ancestors(p) for p in pids)}
        if ours:
            raise RuntimeError(f"groups left in {root} by this session (empty, or holding its processes): {ours}")
        if time.monotonic() >= deadline:
            jobs = "; ".join(f"{name}: {_describe(pids)}" for name, pids in children.items())
            raise HierarchyInUse(f"the v1 cpu hierarchy is in use by another job after {timeout_s:.0f} s ({jobs})")
        time.sleep(poll_s)


def remove_stale_groups(root: str, children: dict[str, list[int]] | None = None) -> list[str]:
    """rmdir the empty ``flowctl-*`` children of ``root`` (``children``: as ``v1_cpu_children`` lists them)
    created before this session started; their names."""
    if children is None:
        children = v1_cpu_children(root)
    removed = []
    for name, pids in children.items():
        path = os.path.join(root, name)
        try:
            stale = not pids and name.startswith(OUR_PREFIX) and os.stat(path).st_mtime < SESSION_STARTED
            if stale:
                os.rmdir(path)
        except OSError:
            continue
        if stale:
            print(f"tests/cgroup2.py: removed {path}, an empty group an earlier run left", file=sys.stderr)
            removed.append(name)
    return removed


def _describe(pids: list[int]) -> str:
    """The first pid of a group and its command line (for a message)."""
    try:
        with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        cmd = "?"
    return f"pid {pids[0]} ({cmd})" + (f" and {len(pids) - 1} more" if len(pids) > 1 else "")


class _Terminated(BaseException):
    """SIGTERM while switched: unwinds like Ctrl-C so the restore runs."""


@contextmanager
def switched_to_v2(controllers: tuple[str, ...] = MOVED) -> Iterator[list[MountKey]]:
    """cpu (and cpuset) on the cgroup2 mount for the body (yields the mounts from before); v1 restored
    and the mounts compared after. SwitchRefused when the kernel refuses, HierarchyInUse when another
    job's groups stay in the v1 cpu hierarchy past the wait, RuntimeError on any other failure (a
    process of ours holding the v1 hierarchy open, or a group of ours left in it, included)."""
    before = cgroup_mounts()
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        for c in MOVED:  # the script refuses to move a hierarchy with child groups
            remove_stale_groups(f"/sys/fs/cgroup/{c}")
        r = run_script("on", *controllers)
        if r.returncode == 2 and "has child groups" in r.stderr:
            wait_v1_cpu_free()  # another job's benchmark: wait for it (HierarchyInUse if it outlasts the wait)
            r = run_script("on", *controllers)
        outcome = classify_switch(r.returncode, r.stdout, r.stderr)
        if outcome.kind == "refused":
            raise SwitchRefused(outcome.detail)
        if outcome.kind == "failed":
            raise RuntimeError(outcome.detail)
        yield before
    finally:
        try:
            restore()
        finally:
            signal.signal(signal.SIGTERM, previous)
    after = cgroup_mounts()
    if after != before:
        raise AssertionError(f"cgroup mounts differ after the v2 period:\nbefore {before}\nafter  {after}")
