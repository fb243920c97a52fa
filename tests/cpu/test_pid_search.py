"""Finding a process's own group by its pid in cgroup.procs when its cgroup path is outside the mount root."""

from __future__ import annotations

from pathlib import Path

from flowctl.cpu.mounts import discover, find_pid_group
from flowctl.cpu.sources import ContainerSource


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_find_pid_group_matches_whole_pids_only(tmp_path: Path) -> None:
    _write(tmp_path, {"cgroup.procs": "1\n", "a/cgroup.procs": "12345\n", "a/b/cgroup.procs": "7\n123\n",
                      "c/cgroup.procs": ""})
    assert find_pid_group(str(tmp_path), 123) == str(tmp_path / "a" / "b")
    assert find_pid_group(str(tmp_path), 1) == str(tmp_path)
    assert find_pid_group(str(tmp_path), 12) is None


def test_a_neighbour_in_a_private_cgroupns_is_found_under_its_own_root(tmp_path: Path) -> None:
    """A sidecar watching pid 77: /proc/77/{mountinfo,cgroup} and the mount seen through /proc/77/root."""
    ns_root = "proc/77/root/sys/fs/cgroup"
    _write(tmp_path, {
        "proc/77/mountinfo": "31 1 0:31 /../.. /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n",
        "proc/77/cgroup": "0::/\n",
        f"{ns_root}/cgroup.procs": "1\n",
        f"{ns_root}/pod/cgroup.procs": "",
        f"{ns_root}/pod/cpu.max": "25000 100000\n",
        f"{ns_root}/pod/ctr/cgroup.procs": "77\n",
        f"{ns_root}/pod/ctr/cpu.max": "max 100000\n",
        f"{ns_root}/pod/ctr/cpu.stat": "usage_usec 10\n",
    })
    disc = discover(str(tmp_path), 77)
    d = disc.cpu_dir()
    assert disc.errors == [] and d is not None and disc.version == 2
    assert d.path == str(tmp_path / ns_root / "pod" / "ctr")
    src = ContainerSource(str(tmp_path), 77)
    assert src.read_limits().details["quota_cores"] == 0.25
    src.close()
