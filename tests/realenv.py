"""Gates for tests that need real components (root, cgroups, lxcfs, Prometheus, nginx, wrk).

Outside CI a missing component skips the test with a reason. With
``FLOWCTL_REQUIRE_REAL=1`` (set by ``.ci/run``) it fails instead, so CI can
never pass by skipping what it was supposed to exercise.

One exception: a capability the *kernel* refuses (``machine_lacks``: live cgroup
v2 where every v1 umount is busy with no holder) skips even under
``FLOWCTL_REQUIRE_REAL=1``; the project installs components, it cannot change the
kernel. Each such lack is listed once in the pytest summary (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_REAL = os.environ.get("FLOWCTL_REQUIRE_REAL") == "1"

LACKED: dict[str, str] = {}  # capability -> why this machine lacks it (printed in the pytest summary)


def need(ok: bool, reason: str) -> None:
    """Skip (or, under FLOWCTL_REQUIRE_REAL=1, fail) the calling test unless ``ok``."""
    if ok:
        return
    if REQUIRE_REAL:
        pytest.fail(f"FLOWCTL_REQUIRE_REAL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def machine_lacks(capability: str, reason: str) -> NoReturn:
    """Skip the calling test (also under FLOWCTL_REQUIRE_REAL=1): the kernel refuses ``capability``.

    Only for what no set-up can install; a missing package or a holder of ours must use ``need``.
    """
    LACKED[capability] = reason
    pytest.skip(f"{capability}: {reason}")


def need_root() -> None:
    need(os.geteuid() == 0, "needs root")


def need_cgroup_v1(*controllers: str) -> None:
    """Root plus writable v1 hierarchies for ``controllers`` under /sys/fs/cgroup."""
    need_root()
    for c in controllers or ("cpu", "cpuacct"):
        path = f"/sys/fs/cgroup/{c}"
        need(os.path.isdir(path) and os.access(path, os.W_OK), f"needs a writable cgroup v1 {c} hierarchy at {path}")


def need_binary(name: str, package: str | None = None) -> str:
    """Return the path of ``name`` (also searching /usr/sbin), or skip/fail naming the Debian package."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    need(path is not None, f"needs `{name}` (apt-get install -y {package or name})")
    assert path is not None
    return path


@contextlib.contextmanager
def reachable_by_others(path: str) -> Iterator[None]:
    """Grant o+x on ancestors of ``path`` that lack it (a clone under a 0700 mktemp dir), then restore them.

    Without it the unprivileged child cannot even import flowctl from this checkout.
    """
    changed: list[tuple[str, int]] = []
    try:
        for parent in Path(path).resolve().parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
                changed.append((str(parent), stat.S_IMODE(mode)))
        yield
    finally:
        for parent_path, mode in changed:
            os.chmod(parent_path, mode)
