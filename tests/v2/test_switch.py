"""scripts/cgroup2.sh and the session-start recovery, exercised inside the switched period.

One test walks the states: switched (as a crashed session would leave it) -> a child pytest without
the opt-in only warns -> a child pytest with FLOWCTL_CGROUP2_LIVE=1 restores v1 exactly -> `on`
refuses while a v1 cpu child group exists (removing an empty libpod_parent first) -> `on` again for
the rest of the package.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import cgroup2
from tests.realenv import need_binary, reachable_by_others
from tests.v2.helpers import unique_name

pytestmark = [pytest.mark.real]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _child_pytest(live: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (cgroup2.LIVE_ENV, "PYTEST_ADDOPTS")}
    if live:
        env[cgroup2.LIVE_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co", "tests/cpu/test_ema.py"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_status_and_non_root_refusal() -> None:
    setpriv = need_binary("setpriv", "util-linux")
    st = cgroup2.run_script("status")
    assert st.returncode == 3 and "cpu: v2 at /sys/fs/cgroup/unified" in st.stdout
    with reachable_by_others(cgroup2.SCRIPT):  # a clone under a 0700 mktemp dir
        r = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", cgroup2.SCRIPT, "off"],
                           capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert r.returncode == 2 and "must be root" in r.stderr
    assert cgroup2.cpu_on_v2()


def test_crash_recovery_then_refusal_with_v1_child_groups(cgroup_v2_live: list[cgroup2.MountKey]) -> None:
    before = cgroup_v2_live
    assert cgroup2.cpu_on_v2() and cgroup2.cgroup_mounts() != before
    made: list[str] = []
    try:
        # A plain pytest never changes the machine: it only says what it found.
        plain = _child_pytest(live=False)
        assert plain.returncode == 0, plain.stdout + plain.stderr
        assert "the cpu controller is on cgroup v2" in plain.stderr and cgroup2.cpu_on_v2()
        # With the opt-in, the session start restores v1, exactly.
        live = _child_pytest(live=True)
        assert live.returncode == 0, live.stdout + live.stderr
        assert "restored the cpu/cpuset controllers to cgroup v1" in live.stderr
        assert not cgroup2.cpu_on_v2() and cgroup2.cgroup_mounts() == before
        # `on` refuses, changing nothing, while the v1 cpu hierarchy has a child group.
        ours = f"/sys/fs/cgroup/cpu/{unique_name()}"
        os.mkdir(ours)
        made.append(ours)
        libpod = "/sys/fs/cgroup/cpu/libpod_parent"
        if not os.path.exists(libpod):
            os.mkdir(libpod)  # what podman leaves behind; an EMPTY one is removed by the pre-check
            made.append(libpod)
        r = cgroup2.run_script("on", "cpu")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "has child groups, so cpu cannot be moved (nothing changed)" in r.stderr and ours in r.stderr
        if libpod in made:
            assert f"removed the empty {libpod} (left by podman" in r.stdout and not os.path.exists(libpod)
        assert cgroup2.cgroup_mounts() == before
    finally:
        for d in reversed(made):
            if os.path.isdir(d):
                os.rmdir(d)
        again = cgroup2.run_script("on")  # back to v2 for the rest of the package
    assert again.returncode == 0, again.stdout + again.stderr
    assert cgroup2.cpu_on_v2()
