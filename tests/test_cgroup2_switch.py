"""The live v2 fixture's decision (tests/cgroup2.py ``classify_switch``) on outputs recorded from
scripts/cgroup2.sh: only the kernel's refusal skips; a holder of ours or a broken state fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import cgroup2
from tests.realenv import machine_lacks, need, need_root

# Recorded on 2026-12-04, kernel 6.18.44 (every v1 umount refused with no holder).
BUSY_NO_HOLDER = (4, "", "cgroup2.sh: umount: /sys/fs/cgroup/cpu: target is busy.\n"
                  "cgroup2.sh: refused by kernel 6.18.44-fc-v1252 (umount /sys/fs/cgroup/cpu busy, no holder)\n")  # fmt: skip
# A flowctl sampler left open in the v1 hierarchy: our bug, so the fixture must fail.
BUSY_WITH_HOLDER = (1, "", "cgroup2.sh: umount: /sys/fs/cgroup/cpu: target is busy.\n"
                    "cgroup2.sh: /sys/fs/cgroup/cpu stays busy: a process keeps a file in the v1 cpu hierarchy "
                    "open (a flowctl sampler?):\n  pid 4242: python -m pytest -q\n")  # fmt: skip
REFUSED_BIND = (4, "", "cgroup2.sh: the kernel did not bind cpu to /sys/fs/cgroup/unified (cgroup.controllers: "
                "hugetlb); restoring\ncgroup2.sh: cpu back on v1 at /sys/fs/cgroup/cpu\n"
                "cgroup2.sh: refused by kernel 6.1.0-13-amd64 (cpu did not bind to cgroup2)\n")  # fmt: skip
SUCCESS = (0, "cgroup2.sh: cpu moved to v2 at /sys/fs/cgroup/unified\n"
           "cgroup2.sh: cpuset moved to v2 at /sys/fs/cgroup/unified\n", "")  # fmt: skip
CHILD_GROUPS = (2, "", "cgroup2.sh: the v1 cpu hierarchy at /sys/fs/cgroup/cpu has child groups, so cpu cannot be "
                "moved (nothing changed):\n/sys/fs/cgroup/cpu/flowctl-x\n")  # fmt: skip


def test_busy_with_no_holder_is_a_refusal_naming_the_kernel() -> None:
    outcome = cgroup2.classify_switch(*BUSY_NO_HOLDER)
    assert outcome.kind == "refused"
    assert outcome.detail == "refused by kernel 6.18.44-fc-v1252 (umount /sys/fs/cgroup/cpu busy, no holder)"


def test_busy_with_a_holder_fails_and_names_it() -> None:
    outcome = cgroup2.classify_switch(*BUSY_WITH_HOLDER)
    assert outcome.kind == "failed"
    assert "pid 4242" in outcome.detail and "exit 1" in outcome.detail


def test_a_controller_that_does_not_bind_is_a_refusal() -> None:
    outcome = cgroup2.classify_switch(*REFUSED_BIND)
    assert outcome == cgroup2.SwitchOutcome("refused", "refused by kernel 6.1.0-13-amd64 (cpu did not bind to cgroup2)")


def test_success_switches() -> None:
    assert cgroup2.classify_switch(*SUCCESS).kind == "switched"


@pytest.mark.parametrize("recorded", [CHILD_GROUPS, (4, "", "cgroup2.sh: line 9: \"x\" failed (exit 4)\n")])
def test_anything_else_fails(recorded: tuple[int, str, str]) -> None:
    """Child groups, and an exit 4 without the refusal line (a crash that happens to exit 4), are failures."""
    assert cgroup2.classify_switch(*recorded).kind == "failed"


@pytest.mark.real
def test_probe_decides_and_leaves_v1_as_it_was(tmp_path: Path) -> None:
    """`probe` on this machine: exit 0 (switch possible) or 4 (refused, with the line); v1 mounts unchanged;
    `status` then reports the same verdict. Skips when the machine is not switchable in principle, or
    while another job's groups stay in the v1 cpu hierarchy (waited for first)."""
    need_root()
    need(os.path.exists(os.path.join(cgroup2.UNIFIED, "cgroup.controllers")), f"needs a cgroup2 mount at {cgroup2.UNIFIED}")
    for c in cgroup2.MOVED:  # `probe` refuses to move a hierarchy with child groups
        cgroup2.remove_stale_groups(f"/sys/fs/cgroup/{c}")
    try:
        cgroup2.wait_v1_cpu_free()
    except cgroup2.HierarchyInUse as busy:
        machine_lacks("live cgroup v2", str(busy))
    before = cgroup2.cgroup_mounts()
    env = {**os.environ, "FLOWCTL_CGROUP2_STATE": f"{tmp_path}/state"}
    r = subprocess.run(["bash", cgroup2.SCRIPT, "probe"], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert cgroup2.cgroup_mounts() == before
    outcome = cgroup2.classify_switch(r.returncode, r.stdout, r.stderr)
    assert outcome.kind in ("switched", "refused"), outcome.detail
    st = subprocess.run(["bash", cgroup2.SCRIPT, "status"], capture_output=True, text=True, timeout=30, env=env, check=False)
    assert st.returncode == 0, st.stdout + st.stderr
    expected = f"impossible, {outcome.detail}" if outcome.kind == "refused" else "possible"
    assert f"switch on this boot: {expected}" in st.stdout


def _group(root: Path, name: str, pids: list[int]) -> None:
    (root / name).mkdir()
    (root / name / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))


def test_wait_v1_cpu_free_tells_another_jobs_groups_from_our_leaks(tmp_path: Path) -> None:
    """On a fixture tree: PID 1's group is another job's (waited for, then HierarchyInUse naming it);
    an empty group, or one holding this process, is ours (RuntimeError at once); none: returns."""
    cgroup2.wait_v1_cpu_free(0, root=str(tmp_path))
    _group(tmp_path, "flowctl-bench-other", [1])
    with pytest.raises(cgroup2.HierarchyInUse, match=r"another job .*flowctl-bench-other: pid 1 "):
        cgroup2.wait_v1_cpu_free(0.05, root=str(tmp_path), poll_s=0.01)
    _group(tmp_path, "flowctl-bench-mine", [os.getpid()])
    with pytest.raises(RuntimeError, match="flowctl-bench-mine") as leaked:
        cgroup2.wait_v1_cpu_free(0.05, root=str(tmp_path), poll_s=0.01)
    assert not isinstance(leaked.value, cgroup2.HierarchyInUse)
    (tmp_path / "flowctl-bench-mine" / "cgroup.procs").write_text("")
    with pytest.raises(RuntimeError, match="flowctl-bench-mine"):
        cgroup2.wait_v1_cpu_free(0.05, root=str(tmp_path), poll_s=0.01)


def test_wait_v1_cpu_free_removes_the_empty_groups_an_earlier_run_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty flowctl-* group older than this session is removed (and said); an older empty group of
    another name, or an older flowctl-* group holding a process, is not."""
    before = cgroup2.SESSION_STARTED - 3600
    for name, pids in (("flowctl-bench-stale", []), ("someone-else", []), ("flowctl-busy", [1])):
        _group(tmp_path, name, pids)
        if not pids:
            (tmp_path / name / "cgroup.procs").unlink()  # a real group's files are not children the rmdir minds
        os.utime(tmp_path / name, (before, before))
    children = cgroup2.v1_cpu_children(str(tmp_path))
    assert cgroup2.remove_stale_groups(str(tmp_path), children) == ["flowctl-bench-stale"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flowctl-busy", "someone-else"]
    assert "flowctl-bench-stale, an empty group an earlier run left" in capsys.readouterr().err


@pytest.mark.real
def test_a_refusal_recorded_on_this_boot_is_repeated_at_once(tmp_path: Path) -> None:
    """`on` with a state file recording a refusal for this boot exits 4 with the refusal line before any
    other check (another job's groups in the hierarchy included), and changes nothing."""
    need_root()
    need(os.path.exists(os.path.join(cgroup2.UNIFIED, "cgroup.controllers")), f"needs a cgroup2 mount at {cgroup2.UNIFIED}")
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    state = tmp_path / "state"
    state.write_text(f"boot={boot}\nkernel=k\nresult=refused\nreason=refused by kernel k (umount busy, no holder)\n"
                     "when=2026-12-05T00:00:00Z\n")
    before = cgroup2.cgroup_mounts()
    env = {**os.environ, "FLOWCTL_CGROUP2_STATE": str(state)}
    r = subprocess.run(["bash", cgroup2.SCRIPT, "on"], capture_output=True, text=True, timeout=30, env=env, check=False)
    assert cgroup2.cgroup_mounts() == before
    outcome = cgroup2.classify_switch(r.returncode, r.stdout, r.stderr)
    assert outcome.kind == "refused", outcome.detail
    assert outcome.detail.startswith("refused by kernel k (umount busy, no holder) [recorded at 2026-12-05T00:00:00Z")
    state.write_text(state.read_text().replace(boot, "another-boot"))
    assert "not tried yet" in subprocess.run(["bash", cgroup2.SCRIPT, "status"], capture_output=True, text=True,
                                             timeout=30, env=env, check=False).stdout
