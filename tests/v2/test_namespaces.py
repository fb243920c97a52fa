"""cgroup namespaces on the live cgroup2 mount: what a containerised flowctl reads.

- Docker-like: private cgroup + mount namespaces with cgroup2 mounted fresh inside: mountinfo
  root ``/``, ``0::/``, the group is the mount point itself.
- A private cgroup namespace that still sees the host's mount (a privileged agent, or
  ``-v /sys/fs/cgroup:/sys/fs/cgroup`` with a private cgroupns): mountinfo root ``/../..``,
  ``0::/``. flowctl used to read the mount root here (no limit, 2 CPUs); it now finds its group
  by its pid in cgroup.procs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.cgroup2 import UNIFIED
from tests.realenv import need_binary
from tests.v2.helpers import v2_group

pytestmark = [pytest.mark.real]

INSPECT = [sys.executable, "-m", "flowctl", "inspect", "--json", "--interval", "0"]


def _inside(group: str, *cmd: str) -> tuple[dict[str, Any], str, str]:
    """Run ``cmd`` (ending in flowctl inspect) after moving into ``group``; its report, mountinfo line, cgroup line."""
    script = ('echo $$ > "$0/cgroup.procs" && exec "$@"')
    wrapper = ["sh", "-c", script, group, *cmd]
    p = subprocess.run(wrapper, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    report: dict[str, Any] = json.loads(out[-1])
    return report, out[0], out[1]


def _show_then_inspect(prep: str) -> list[str]:
    return ["sh", "-c", f'{prep} grep " cgroup2 " /proc/self/mountinfo | head -1 && grep "^0::" /proc/self/cgroup '
            f'&& exec "$@"', "inside", *INSPECT]


def test_docker_like_private_namespaces_with_cgroup2_mounted_inside() -> None:
    unshare = need_binary("unshare", "util-linux")
    with v2_group(cpu_max={"": "50000 100000"}) as leaf:
        report, mountinfo, cgline = _inside(
            leaf, unshare, "--cgroup", "--mount", "--propagation", "private",
            *_show_then_inspect("umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup &&"))
    assert mountinfo.split()[3:5] == ["/", "/sys/fs/cgroup"] and cgline == "0::/"
    cg = report["cgroup"]
    assert (cg["version"], cg["path"], cg["limit_cores"]) == (2, "/sys/fs/cgroup", 0.5)
    assert report["effective"]["cpus"] == 0.5


def test_private_cgroupns_seeing_the_host_mount_finds_its_group_by_pid() -> None:
    unshare = need_binary("unshare", "util-linux")
    with v2_group("pod", "ctr", cpu_max={"": "50000 100000"}) as leaf:
        report, mountinfo, cgline = _inside(leaf, unshare, "--cgroup", *_show_then_inspect(""))
    # what the kernel shows such a process: the host mount's root is three levels above its namespace root
    assert mountinfo.split()[3:5] == ["/../../..", UNIFIED] and cgline == "0::/"
    cg = report["cgroup"]
    assert (cg["version"], cg["path"], cg["limit_cores"]) == (2, leaf, 0.5)
    assert cg["limit_source"] == os.path.join(os.path.dirname(os.path.dirname(leaf)), "cpu.max")
    assert not any("outside the mount root" in e for e in report["errors"]), report["errors"]
