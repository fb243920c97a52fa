"""The cgroup v2 creation path.

What this machine allows (hybrid host: cpu, cpuset and memory are bound to v1;
/sys/fs/cgroup/unified is a cgroup2 mount whose only controller is hugetlb):

- exercised on the REAL cgroup2 mount: group creation, moving the child in before
  exec (``0::/<name>`` in /proc/PID/cgroup), removal, the clear error when the cpu
  controller is not available, and controller delegation through
  ``cgroup.subtree_control`` (with hugetlb, the one controller v2 has here),
  including the kernel's refusal for a group that has processes in it;
- NOT exercised here on a real kernel: writing ``cpu.max``, ``memory.max`` and
  ``cpuset.cpus`` and their effect on v2; those writes are checked against a fixture
  tree only. ``cpu.max`` and its effect are exercised live in tests/v2, which moves
  the cpu controller to cgroup2 (``memory.max`` stays fixture-only: memory is v1 here).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from flowctl.errors import CgroupError, ConfigError, ControllerMissingError
from flowctl.workload import launch
from flowctl.workload.cgroupfs import Hierarchies, create_group, enable_controllers
from flowctl.workload.spec import WorkloadSpec
from tests import realenv
from tests.workload.helpers import unique_name

UNIFIED = "/sys/fs/cgroup/unified"


def _fake_v2(tmp_path: Path, controllers: str = "cpu cpuset memory") -> Path:
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("\n")
    (root / "cpuset.cpus.effective").write_text("0-1\n")
    return root


def test_fixture_tree_limits_are_written_in_v2_format(tmp_path: Path) -> None:
    root = _fake_v2(tmp_path)
    spec = WorkloadSpec.build(name="w", cpus=0.5, memory="256M", cpuset="1")
    group = create_group(spec, version="v2", hierarchies=Hierarchies(v2=str(root)))
    d = root / "w"
    assert group.version == 2 and set(group.dirs) == {str(d)}
    assert group.paths["cpu"] == group.paths["memory"] == str(d)
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "memory.max").read_text() == str(256 << 20)
    assert (d / "cpuset.cpus").read_text() == "1"
    # a plain file keeps only the last "+ctrl" write; the real kernel keeps all of them
    assert (root / "cgroup.subtree_control").read_text().startswith("+")
    group.set_cpus(1.5)
    assert (d / "cpu.max").read_text() == "150000 100000"
    group.set_cpus(None)
    assert (d / "cpu.max").read_text() == "max 100000"
    group.set_memory(None)
    assert (d / "memory.max").read_text() == "max"


def test_fixture_tree_missing_controller_and_bad_cpuset(tmp_path: Path) -> None:
    root = _fake_v2(tmp_path, controllers="memory")
    with pytest.raises(ControllerMissingError, match="controller cpu is not available"):
        create_group(WorkloadSpec.build(name="w", cpus=0.5), version="v2", hierarchies=Hierarchies(v2=str(root)))
    (tmp_path / "b").mkdir()
    root2 = _fake_v2(tmp_path / "b")
    with pytest.raises(ConfigError, match="CPU 5 not available"):
        create_group(WorkloadSpec.build(name="w", cpuset="5"), version="v2", hierarchies=Hierarchies(v2=str(root2)))
    assert not (root2 / "w").exists()
    with pytest.raises(ControllerMissingError, match="no cgroup2"):
        create_group(WorkloadSpec.build(name="w"), version="v2", hierarchies=Hierarchies())


def test_fixture_tree_hybrid_memory_limit_goes_to_a_v1_group(tmp_path: Path) -> None:
    """cpu on v2, memory still on v1 (this machine with the cpu controller switched): one group in each."""
    root = _fake_v2(tmp_path, controllers="cpuset cpu")
    mem = tmp_path / "memory"
    mem.mkdir()
    h = Hierarchies(v1={"memory": str(mem), "cpuacct": str(tmp_path / "cpuacct")}, v2=str(root))
    group = create_group(WorkloadSpec.build(name="w", cpus=0.5, memory="256M"), version="v2", hierarchies=h)
    assert group.version == 2 and group.paths["cpu"] == str(root / "w") and group.paths["memory"] == str(mem / "w")
    assert set(group.dirs) == {str(root / "w"), str(mem / "w")}
    assert (root / "w" / "cpu.max").read_text() == "50000 100000"
    assert (mem / "w" / "memory.limit_in_bytes").read_text() == str(256 << 20)
    assert not (root / "w" / "memory.max").exists()
    group.set_memory(None)
    assert (mem / "w" / "memory.limit_in_bytes").read_text() == "-1"
    # a failure after the v1 group was made leaves nothing behind
    (tmp_path / "b").mkdir()
    root2, mem2 = _fake_v2(tmp_path / "b", controllers="cpuset cpu"), tmp_path / "b" / "memory"
    mem2.mkdir()
    with pytest.raises(ConfigError, match="CPU 5 not available"):
        create_group(WorkloadSpec.build(name="w", memory="1G", cpuset="5"), version="v2",
                     hierarchies=Hierarchies(v1={"memory": str(mem2)}, v2=str(root2)))
    assert not (root2 / "w").exists() and not (mem2 / "w").exists()


def _need_v2() -> None:
    realenv.need_root()
    realenv.need(os.path.exists(os.path.join(UNIFIED, "cgroup.procs")) and os.access(UNIFIED, os.W_OK),
                 f"needs a writable cgroup2 mount at {UNIFIED}")


@pytest.mark.real
async def test_real_cgroup2_group_creation_move_and_removal() -> None:
    _need_v2()
    name = unique_name()
    async with launch(["sh", "-c", "cat /proc/self/cgroup"], cpus=None, name=name, cgroup_version="v2",
                      stdout=asyncio.subprocess.PIPE) as w:
        d = os.path.join(UNIFIED, name)
        assert w.cgroup_version == 2 and w.cgroup_paths["cpu"] == d
        assert w.process.stdout is not None
        out = (await w.process.stdout.read()).decode()
        assert await w.wait() == 0
    assert f"0::/{name}" in out.splitlines()  # the child was in the v2 group before it exec'd cat
    assert not os.path.exists(d)


@pytest.mark.real
async def test_real_cgroup2_without_cpu_controller_is_a_clear_error() -> None:
    _need_v2()
    with open(os.path.join(UNIFIED, "cgroup.controllers"), encoding="ascii") as f:
        realenv.need("cpu" not in f.read().split(), "this test is about a cgroup2 without the cpu controller")
    name = unique_name()
    with pytest.raises(ControllerMissingError, match="controller cpu is not available"):
        async with launch(["true"], cpus=0.5, name=name, cgroup_version="v2"):
            pass
    assert not os.path.exists(os.path.join(UNIFIED, name))


@pytest.mark.real
async def test_real_cgroup2_subtree_control_delegation() -> None:
    _need_v2()
    with open(os.path.join(UNIFIED, "cgroup.controllers"), encoding="ascii") as f:
        available = f.read().split()
    realenv.need(bool(available), "needs at least one controller on the cgroup2 mount")
    ctrl = available[0]
    parent = os.path.join(UNIFIED, unique_name())
    child = os.path.join(parent, "leaf")
    root_control = os.path.join(UNIFIED, "cgroup.subtree_control")
    with open(root_control, encoding="ascii") as f:
        was_enabled = ctrl in f.read().split()
    os.mkdir(parent)
    proc = await asyncio.create_subprocess_exec("sleep", "1000")
    try:
        # the parent only has what the root delegates to it
        if not was_enabled:
            with pytest.raises(CgroupError, match="not enabled for this group by its parent"):
                enable_controllers(parent, [ctrl])
            enable_controllers(UNIFIED, [ctrl])
        enable_controllers(parent, [ctrl])
        with open(os.path.join(parent, "cgroup.subtree_control"), encoding="ascii") as f:
            assert ctrl in f.read().split()
        os.mkdir(child)
        with open(os.path.join(child, "cgroup.controllers"), encoding="ascii") as f:
            assert ctrl in f.read().split()
        with open(os.path.join(child, "cgroup.procs"), "w", encoding="ascii") as f:
            f.write(str(proc.pid))
        with open(f"/proc/{proc.pid}/cgroup", encoding="ascii") as f:
            assert f"0::/{os.path.basename(parent)}/leaf" in f.read().splitlines()
        # the no-internal-process rule: a group with processes cannot delegate to children
        with pytest.raises(CgroupError, match="with processes in it cannot delegate"):
            enable_controllers(child, [ctrl])
    finally:
        proc.kill()
        await proc.wait()
        for d in (child, parent):
            for _ in range(200):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    await asyncio.sleep(0.01)
        if not was_enabled:  # leave the root as we found it
            with open(root_control, "w", encoding="ascii") as f:
                f.write(f"-{ctrl}")
    assert not os.path.exists(parent)
    with open(root_control, encoding="ascii") as f:
        assert (ctrl in f.read().split()) == was_enabled
