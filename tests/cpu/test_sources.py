"""Sources against fixture trees in tmp dirs: pid mode, direct cgroup paths, resizes, dead lxcfs."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from flowctl.cpu import ContainerSource, LxcfsSource, make_signal
from flowctl.cpu import lxcfs as lxcfs_mod
from flowctl.cpu.mounts import discover
from flowctl.cpu.sources import effective_cpus
from flowctl.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cgroup"


def _copy(case: str, tmp_path: Path) -> Path:
    dest = tmp_path / case
    shutil.copytree(FIXTURES / case, dest)
    return dest


def test_effective_cpus_min_and_tie_order() -> None:
    assert effective_cpus(host=8, affinity=4, cpuset=2, quota=0.5) == (0.5, "quota")
    assert effective_cpus(host=8, affinity=2, cpuset=2, quota=None) == (2.0, "cpuset")
    assert effective_cpus(host=2, affinity=2) == (2.0, "affinity")
    assert effective_cpus(host=None) == (None, "none")


def test_pid_mode_reads_through_proc_pid(tmp_path: Path) -> None:
    case = FIXTURES / "v1-separate"
    root = tmp_path / "r"
    pid_dir = root / "proc" / "4242"
    shutil.copytree(case / "proc" / "self", pid_dir)
    shutil.copytree(case / "sys" / "fs", pid_dir / "root" / "sys" / "fs")
    shutil.copytree(case / "sys" / "devices", root / "sys" / "devices")
    src = ContainerSource(str(root), pid=4242)
    lim = src.read_limits()
    assert lim.limit_cores == 0.5 and lim.source == "quota"
    assert lim.source_file == str(pid_dir / "root/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us")
    assert src.read_counters().usage_s == pytest.approx(5.0)
    src.close()


def test_live_pid_mode_matches_self() -> None:
    a = discover("/", "self")
    b = discover("/", os.getpid())
    assert a.version == b.version
    assert {k: os.path.realpath(d.path) for k, d in a.dirs.items()} == {
        k: os.path.realpath(d.path) for k, d in b.dirs.items()}


@pytest.mark.parametrize(("case", "rel", "version"), [("v1-separate", "sys/fs/cgroup/cpu/docker/abc", 1),
                                                      ("v2-basic", "sys/fs/cgroup/kubepods/pod1/c1", 2)])
def test_direct_cgroup_path(case: str, rel: str, version: int) -> None:
    root = FIXTURES / case
    src = ContainerSource(str(root), cgroup_path=str(root / rel))
    lim = src.read_limits()
    assert lim.limit_cores == 0.5 and lim.details["version"] == version
    c = src.read_counters()
    assert c.usage_s is not None and c.throttled_periods is not None
    src.close()


def test_in_place_resize_is_seen(tmp_path: Path) -> None:
    root = _copy("v1-separate", tmp_path)
    s = make_signal("container", root=str(root), limits_interval_s=1.0)
    assert s.sample(now=0.0).limit_cores == 0.5
    (root / "sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us").write_text("150000\n")
    assert s.sample(now=0.5).limit_cores == 0.5
    assert s.sample(now=1.0).limit_cores == 1.5
    s.close()


def test_usage_rate_and_recreated_group(tmp_path: Path) -> None:
    root = _copy("v1-separate", tmp_path)
    usage = root / "sys/fs/cgroup/cpuacct/docker/abc/cpuacct.usage"
    stat = root / "sys/fs/cgroup/cpu/docker/abc/cpu.stat"
    s = make_signal("container", root=str(root))
    s.sample(now=0.0)
    usage.write_text("5040000000\n")  # +40 ms of CPU
    stat.write_text("nr_periods 1001\nnr_throttled 251\nthrottled_time 5010000000\n")
    r = s.sample(now=0.1)
    assert r.usage_cores == pytest.approx(0.4) and r.utilization == pytest.approx(0.8)
    assert r.throttled_ratio == pytest.approx(1.0)
    usage.write_text("1000\n")  # the group was recreated
    r = s.sample(now=0.2)
    assert r.utilization is None and s.dropped_total == 1
    s.close()


def test_group_removed_then_back(tmp_path: Path) -> None:
    root = _copy("v1-separate", tmp_path)
    leaf = root / "sys/fs/cgroup/cpuacct/docker/abc"
    s = make_signal("container", root=str(root), limits_interval_s=1.0, fallback=False)
    s.sample(now=0.0)
    shutil.rmtree(leaf)
    r = s.sample(now=1.0)  # limits re-read reopens the files: never raises; unknown, reason recorded
    assert r.usage_cores is None and r.limit_cores == 0.5
    assert any("cpuacct.usage" in e for e in s.errors())
    leaf.mkdir()
    (leaf / "cpuacct.usage").write_text("10\n")
    s.sample(now=1.1)
    (leaf / "cpuacct.usage").write_text("20000010\n")
    assert s.sample(now=1.2).usage_cores == pytest.approx(0.2)
    s.close()


def test_group_removed_falls_back_to_host_and_returns(tmp_path: Path) -> None:
    root = _copy("v1-separate", tmp_path)
    leaf = root / "sys/fs/cgroup/cpuacct/docker/abc"
    s = make_signal("container", root=str(root), limits_interval_s=1.0)
    s.sample(now=0.0)
    shutil.rmtree(leaf)
    r = s.sample(now=1.0)
    assert s.active_view == "host" and r.limit_cores is not None
    leaf.mkdir()
    (leaf / "cpuacct.usage").write_text("10\n")
    s.sample(now=2.0)  # the configured view is retried once per limits interval
    assert s.active_view == "container" and s.reading.limit_cores == 0.5
    (leaf / "cpuacct.usage").write_text("20000010\n")
    assert s.sample(now=2.1).usage_cores == pytest.approx(0.2)
    s.close()


def test_dead_lxcfs_enotconn_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    def dead(path: str) -> bytes:
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN), path)

    monkeypatch.setattr(lxcfs_mod, "read_file", dead)
    s = make_signal("lxcfs", root=str(FIXTURES / "lxcfs-dir"), fallback=False)
    s.sample(now=0.0)
    r = s.sample(now=0.1)
    assert r.utilization is None and r.limit_cores is None
    assert any("Transport endpoint is not connected" in e for e in s.errors())


def test_lxcfs_env_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCTL_LXCFS_DIR", str(FIXTURES / "lxcfs-dir" / "var/lib/lxcfs"))
    src = LxcfsSource()
    assert src.present and src.read_limits().limit_cores == 2.0


def test_lxcfs_stat_utilization_from_fixture(tmp_path: Path) -> None:
    root = _copy("lxcfs-dir", tmp_path)
    s = make_signal("lxcfs", root=str(root))
    s.sample(now=0.0)
    (root / "var/lib/lxcfs/proc/stat").write_text("cpu  350 0 110 650 0 0 0 0 0 0\n")  # +60 busy of +110 total
    r = s.sample(now=0.1)
    assert r.utilization == pytest.approx(60 / 110)


def test_unknown_view_is_config_error() -> None:
    with pytest.raises(ConfigError):
        make_signal("nope")


def test_system_psi_is_the_host_views_not_the_containers(tmp_path: Path) -> None:
    """A cgroup without its own cpu.pressure has no container pressure; /proc/pressure/cpu moves only the host view."""
    root = _copy("v2-psi-absent", tmp_path)
    psi = root / "proc/pressure/cpu"
    container, host = make_signal("container", root=str(root)), make_signal("host", root=str(root))
    for s in (container, host):
        s.sample(now=0.0)
    psi.write_text("some avg10=50.00 avg60=0 avg300=0 total=123556789\nfull avg10=0 avg60=0 avg300=0 total=0\n")
    c, h = container.sample(now=1.0), host.sample(now=1.0)  # +100 ms of system-wide stall in 1 s
    assert c.pressure_ratio is None, container.details()
    assert container.details()["details"]["pressure_scope"] is None  # type: ignore[index]
    assert h.pressure_ratio == pytest.approx(0.1)
    assert host.details()["details"]["pressure_scope"] == "system"  # type: ignore[index]
    container.close()
    host.close()


def test_cgroup_psi_feeds_the_container_view(tmp_path: Path) -> None:
    root = _copy("v2-basic", tmp_path)
    psi = root / "sys/fs/cgroup/kubepods/pod1/c1/cpu.pressure"
    s = make_signal("container", root=str(root))
    s.sample(now=0.0)
    psi.write_text("some avg10=0 avg60=0 avg300=0 total=123656789\nfull avg10=0 avg60=0 avg300=0 total=0\n")
    assert s.sample(now=1.0).pressure_ratio == pytest.approx(0.2)
    assert s.details()["details"]["pressure_scope"] == "cgroup"  # type: ignore[index]
    s.close()


def _move_to(root: Path, group: str, usage_ns: int, stat: str) -> None:
    """Give ``root`` a second v1 group ``/docker/<group>`` and move /proc/self there."""
    for ctrl in ("cpu", "cpuacct", "cpuset", "memory"):
        src = root / "sys/fs/cgroup" / ctrl / "docker/abc"
        shutil.copytree(src, root / "sys/fs/cgroup" / ctrl / "docker" / group)
    (root / "sys/fs/cgroup/cpuacct/docker" / group / "cpuacct.usage").write_text(f"{usage_ns}\n")
    (root / "sys/fs/cgroup/cpu/docker" / group / "cpu.stat").write_text(stat)
    cg = root / "proc/self/cgroup"
    cg.write_text(cg.read_text().replace("/docker/abc", f"/docker/{group}"))


def test_moving_to_another_cgroup_drops_the_sample_and_resets(tmp_path: Path) -> None:
    """Counters of two different groups are never subtracted, even when the new one reads higher."""
    root = _copy("v1-separate", tmp_path)
    s = make_signal("container", root=str(root), limits_interval_s=1.0)
    assert isinstance(s.source, ContainerSource)
    s.sample(now=0.0)
    (root / "sys/fs/cgroup/cpuacct/docker/abc/cpuacct.usage").write_text("5040000000\n")
    assert s.sample(now=0.1).utilization == pytest.approx(0.8)
    gen = s.source.generation
    # The process moves to a busier group: every counter is higher, so only the identity can tell.
    _move_to(root, "def", 9_000_000_000, "nr_periods 5000\nnr_throttled 900\nthrottled_time 9000000000\n")
    r = s.sample(now=1.0)  # limits re-read: re-discovery finds /docker/def
    assert s.source.generation == gen + 1
    assert s.counters is not None and s.counters.usage_s == pytest.approx(9.0)  # reading the new group now
    assert r.utilization is None and r.usage_cores is None and r.utilization_smoothed is None
    assert s.dropped_total == 1
    (root / "sys/fs/cgroup/cpuacct/docker/def/cpuacct.usage").write_text("9020000000\n")
    r = s.sample(now=1.1)  # rates resume within the new group; the EMA restarts from it
    assert r.usage_cores == pytest.approx(0.2) and r.utilization_smoothed == pytest.approx(0.4)
    s.close()


def test_reopening_the_same_cgroup_keeps_the_generation(tmp_path: Path) -> None:
    root = _copy("v1-separate", tmp_path)
    src = ContainerSource(str(root))
    src.read_limits()
    src.close()  # files closed; reopened on the next read: same group, counters continue
    src.read_limits()
    assert src.read_counters().generation == 0 and src.generation == 0
    src.close()
