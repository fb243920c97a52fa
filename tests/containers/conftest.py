"""Fixtures for the real-container tests: images built once for the package, lxcfs, cleanup after every test.

Run them under the machine lock (they create cgroups through podman):
    flock /run/flowctl-machine.lock .venv/bin/python -m pytest -q tests/containers
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.podman import PY_IMAGE, build, need_podman, remove, remove_empty_parent_groups, unique
from tests.realenv import need_binary

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
BUILD_SECONDS: dict[str, float] = {}


@pytest.fixture(autouse=True)
def _empty_parent_groups() -> Iterator[None]:
    """After every test: podman's empty libpod_parent groups go (the cgroup v2 tests need an empty v1 cpu).

    Module- and session-scoped fixtures remove theirs in ``remove()`` after the pods and containers go.
    """
    yield
    remove_empty_parent_groups()


@pytest.fixture(scope="package", autouse=True)
def _no_parent_groups_left() -> Iterator[None]:
    """When the last container test is done (before the rest of the suite runs): none left."""
    yield
    left = remove_empty_parent_groups()
    assert not left, f"podman parent groups still hold tasks after the container tests: {left}"


@pytest.fixture(scope="package")
def flowctl_image() -> Iterator[str]:
    """The project's Dockerfile built on the local python stand-in (``--format docker`` keeps HEALTHCHECK)."""
    need_podman()
    tag = f"localhost/{unique('flowctl')}:dev"
    try:
        BUILD_SECONDS["flowctl"] = build(tag, str(REPO))
        yield tag
    finally:
        remove("image", tag)


@pytest.fixture(scope="package")
def app_image() -> Iterator[str]:
    """Stand-in for the manifest's nginx app: ``python3 -m http.server 8080`` with argv[0] ``nginx``.

    The manifest's sidecar watches ``process:nginx``; argv[0] is what that name matches here.
    """
    need_podman()
    tag = f"localhost/{unique('app')}:dev"
    ctx = tempfile.mkdtemp(prefix="flowctl-test-app-")
    try:
        Path(ctx, "Containerfile").write_text(
            f"FROM {PY_IMAGE}\n"
            'CMD ["/bin/bash", "-c", "exec -a nginx python3 -m http.server 8080 --bind 0.0.0.0"]\n'
        )
        BUILD_SECONDS["app"] = build(tag, ctx)
        yield tag
    finally:
        remove("image", tag)
        shutil.rmtree(ctx, ignore_errors=True)


@pytest.fixture
def names() -> Iterator[dict[str, list[str]]]:
    """Containers and pods a test makes: ``names["container"].append(n)``; removed afterwards, even on failure."""
    made: dict[str, list[str]] = {"container": [], "pod": []}
    try:
        yield made
    finally:
        remove("container", *made["container"])
        remove("pod", *made["pod"])


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@pytest.fixture(scope="package")
def lxcfs_dir() -> Iterator[str]:
    """A private ``lxcfs --enable-cfs`` mount, as the DaemonSet in deploy/k8s runs it; unmounted afterwards."""
    need_podman()
    binary = need_binary("lxcfs")
    d = tempfile.mkdtemp(prefix="flowctl-test-lxcfs-")
    proc = subprocess.Popen([binary, "-f", "--enable-cfs", d], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (_mounted(d) and os.path.exists(f"{d}/proc/cpuinfo")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"lxcfs did not mount {d}: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.05)
        yield d
    finally:
        subprocess.run(["umount", "-l", d], capture_output=True)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
        with contextlib.suppress(OSError):
            os.rmdir(d)


# The files the DaemonSet's lxcfs serves and the Deployment bind-mounts over the container's own.
LXCFS_FILES = (
    "proc/cpuinfo", "proc/meminfo", "proc/stat", "proc/uptime", "proc/loadavg",
    "proc/diskstats", "proc/swaps", "sys/devices/system/cpu/online",
)  # fmt: skip
