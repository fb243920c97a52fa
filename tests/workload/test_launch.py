"""The library API on the real kernel: real groups, real processes, real lxcfs (root, cgroup v1)."""

from __future__ import annotations

import asyncio
import os
import signal

from pathlib import Path

import pytest

from flowctl.errors import CgroupError, ConfigError, LxcfsError
from flowctl.workload import LimitedProcess, launch
from flowctl.workload import lxcfs as lxcfs_mod
from flowctl.workload import process as process_mod
from flowctl.workload.probe import probe_inside
from tests import realenv
from tests.workload.helpers import BURNER, alive, existing, exists, lxcfs_leftovers, unique_name, v1_dirs

pytestmark = pytest.mark.real

CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory")


def _need() -> None:
    realenv.need_cgroup_v1(*CONTROLLERS)


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def _cpu_stat(w: LimitedProcess) -> dict[str, int]:
    text = _read(os.path.join(w.cgroup_paths["cpu"], "cpu.stat"))
    return {k: int(v) for k, v in (line.split() for line in text.splitlines())}


async def _eventually(pred: object, timeout_s: float = 20.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_quota_applied_and_throttling_counters_rise() -> None:
    _need()
    name = unique_name()
    async with launch(BURNER, cpus=0.2, memory_bytes="64M", name=name) as w:
        paths = w.cgroup_paths
        assert set(paths) == set(CONTROLLERS)
        assert all(os.path.basename(p) == name for p in paths.values())
        assert _read(os.path.join(paths["cpu"], "cpu.cfs_quota_us")) == "20000"
        assert _read(os.path.join(paths["cpu"], "cpu.cfs_period_us")) == "100000"
        assert _read(os.path.join(paths["memory"], "memory.limit_in_bytes")) == str(64 << 20)
        # the child sits in the same-named group in every hierarchy (it was moved in before exec)
        cg = _read(f"/proc/{w.pid}/cgroup")
        for ctrl in CONTROLLERS:
            assert any(line.split(":")[1] == ctrl and line.endswith("/" + name) for line in cg.splitlines()), cg
        assert w.pids() == {w.pid}
        # the quota bites: the kernel counts throttled periods
        assert await _eventually(lambda: _cpu_stat(w)["nr_throttled"] > 0), _cpu_stat(w)
        assert _cpu_stat(w)["throttled_time"] > 0
        # in-place change (the bench step scenario)
        w.set_cpus(0.5)
        assert _read(os.path.join(paths["cpu"], "cpu.cfs_quota_us")) == "50000"
        w.set_cpus(None)
        assert _read(os.path.join(paths["cpu"], "cpu.cfs_quota_us")) == "-1"
        with pytest.raises(ConfigError):
            w.set_cpus(0)
        w.set_memory("128M")
        assert _read(os.path.join(paths["memory"], "memory.limit_in_bytes")) == str(128 << 20)
        pid = w.pid
    assert existing(list(paths.values())) == []
    assert not exists(pid)
    assert w.returncode == -signal.SIGTERM


@pytest.mark.parametrize("code", [0, 3, 77])
async def test_exit_status_passes_through(code: int) -> None:
    _need()
    async with launch(["sh", "-c", f"exit {code}"], cpus=1) as w:
        assert await w.wait() == code
    assert existing(list(w.cgroup_paths.values())) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT])
async def test_cleanup_after_child_gets_signal(sig: int) -> None:
    _need()
    async with launch(["sleep", "1000"], cpus=0.5) as w:
        w.send_signal(sig)
        assert await w.wait() == -sig
    assert existing(list(w.cgroup_paths.values())) == []


async def test_cleanup_after_child_crash() -> None:
    _need()
    async with launch(["sh", "-c", "kill -SEGV $$"], cpus=0.5) as w:
        assert await w.wait() == -signal.SIGSEGV
    assert existing(list(w.cgroup_paths.values())) == []


async def test_leftover_grandchild_is_killed_and_reaped() -> None:
    _need()
    async with launch(["sh", "-c", "sleep 1000 & echo $!; exec sleep 1000"], cpus=0.5,
                      stdout=asyncio.subprocess.PIPE) as w:
        assert w.process.stdout is not None
        grandchild = int((await w.process.stdout.readline()).decode())
        assert alive(grandchild)
        assert w.pids() == {w.pid, grandchild}
        w.kill()  # the main process dies; the grandchild is orphaned inside the group
        assert await w.wait() == -signal.SIGKILL
        assert alive(grandchild)
    assert existing(list(w.cgroup_paths.values())) == []
    assert not exists(grandchild), "the orphan must be killed and reaped (no zombie left)"


async def test_cancelled_owner_still_cleans_up() -> None:
    _need()
    started: asyncio.Queue[LimitedProcess] = asyncio.Queue()

    async def owner() -> None:
        async with launch(["sleep", "1000"], cpus=0.5) as w:
            await started.put(w)
            await asyncio.sleep(1000)

    task = asyncio.create_task(owner())
    w = await started.get()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert existing(list(w.cgroup_paths.values())) == []
    assert not exists(w.pid)


async def test_cancelled_while_closing_still_removes_the_group() -> None:
    """A cancel that lands while close() waits for a command deaf to SIGTERM: everything is SIGKILLed and
    the groups are gone when the cancel returns (an rmdir right after the kill finds them busy)."""
    _need()
    ready: asyncio.Queue[LimitedProcess] = asyncio.Queue()

    async def owner() -> None:
        async with launch(["sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.01; done"], cpus=0.5,
                          stdout=asyncio.subprocess.PIPE) as w:
            assert w.process.stdout is not None
            await w.process.stdout.readline()
            await ready.put(w)
        # leaving the block runs close(): SIGTERM is ignored, so close() waits out its stop timeout

    task = asyncio.create_task(owner())
    w = await ready.get()
    await asyncio.sleep(0.3)  # close() is now waiting for the command to die
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert existing(list(w.cgroup_paths.values())) == []


async def test_lxcfs_views_inside() -> None:
    _need()
    realenv.need_binary("lxcfs")
    affinity = len(os.sched_getaffinity(0))
    with_views = await probe_inside(cpus=0.5, memory_bytes="256M", lxcfs=True)
    assert with_views.getconf_nprocessors_onln == 1
    assert with_views.os_cpu_count == 1
    assert with_views.cpuinfo_processors == 1
    assert with_views.memtotal_kb == 262144
    assert with_views.nproc == affinity  # nproc counts the affinity mask; lxcfs does not touch it
    without = await probe_inside(cpus=0.5, memory_bytes="256M", lxcfs=False)
    assert without.os_cpu_count == os.cpu_count()
    assert without.getconf_nprocessors_onln == os.cpu_count()
    assert without.memtotal_kb is not None and without.memtotal_kb > 262144


async def test_lxcfs_we_started_is_stopped_and_nothing_leaks_to_the_host() -> None:
    _need()
    realenv.need_binary("lxcfs")
    async with launch(["sleep", "1000"], cpus=0.5, lxcfs=True) as w:
        lx = w.lxcfs_dir
        assert lx is not None and lxcfs_mod.is_lxcfs_mount(lx)
        # the bind mounts live only in the child's private mount namespace
        assert os.readlink(f"/proc/{w.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        with open(f"/proc/{w.pid}/mountinfo", encoding="utf-8") as f:
            inside = f.read()
        assert " /proc/cpuinfo " in inside and " /sys/devices/system/cpu/online " in inside
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            assert " /proc/cpuinfo " not in f.read()
    if lx.startswith("/tmp/flowctl-lxcfs-"):  # ours: gone without a trace
        assert lxcfs_leftovers(os.path.dirname(lx)) == []


async def test_existing_lxcfs_dir_is_used_and_left_running() -> None:
    _need()
    realenv.need_binary("lxcfs")
    mount = await lxcfs_mod.start_lxcfs()
    try:
        view = await probe_inside(cpus=0.5, memory_bytes="256M", lxcfs=True, lxcfs_dir=mount.dir)
        assert view.os_cpu_count == 1
        assert lxcfs_mod.is_lxcfs_mount(mount.dir)
    finally:
        await lxcfs_mod.stop_lxcfs(mount)
    assert lxcfs_leftovers(os.path.dirname(mount.dir)) == []


async def test_lxcfs_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _need()
    empty = str(tmp_path)
    monkeypatch.setenv("PATH", empty)
    monkeypatch.setattr(lxcfs_mod, "_FALLBACK_PATH", empty)
    monkeypatch.setattr(process_mod, "system_lxcfs", lambda: None)  # even if a system lxcfs runs
    name = unique_name()
    with pytest.raises(LxcfsError, match="apt-get install -y lxcfs"):
        async with launch(["/bin/true"], cpus=0.5, lxcfs=True, name=name):
            pass
    assert existing(v1_dirs(name)) == []


async def test_bad_cpuset_creates_nothing() -> None:
    _need()
    name = unique_name()
    with pytest.raises(ConfigError, match="not available"):
        async with launch(["true"], cpus=0.5, cpuset="0-4095", name=name):
            pass
    assert existing(v1_dirs(name)) == []


async def test_existing_group_is_refused_and_left_alone() -> None:
    _need()
    name = unique_name()
    victim = v1_dirs(name)[0]
    os.mkdir(victim)
    try:
        with pytest.raises(CgroupError, match="already exists"):
            async with launch(["true"], cpus=0.5, name=name):
                pass
        assert os.path.isdir(victim)
        assert existing(v1_dirs(name)) == [victim]
    finally:
        os.rmdir(victim)


async def test_cpuset_limit_is_applied() -> None:
    _need()
    async with launch(["sh", "-c", "nproc; grep Cpus_allowed_list /proc/self/status"], cpus=None, cpuset="0",
                      stdout=asyncio.subprocess.PIPE) as w:
        assert w.process.stdout is not None
        out = (await w.process.stdout.read()).decode()
        assert await w.wait() == 0
        assert _read(os.path.join(w.cgroup_paths["cpuset"], "cpuset.cpus")) == "0"
    assert out.split() == ["1", "Cpus_allowed_list:", "0"]
