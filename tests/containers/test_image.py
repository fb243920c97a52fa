"""The project's Dockerfile, built with podman on the local base: --help, a non-root uid, a working HEALTHCHECK."""

from __future__ import annotations

import time

import pytest

from tests.containers.conftest import BUILD_SECONDS
from tests.containers.podman import podman, unique

pytestmark = pytest.mark.real


def test_help_and_non_root_uid(flowctl_image: str) -> None:
    out = podman("run", "--rm", "--ulimit", "host", "--no-healthcheck", flowctl_image, "--help")
    assert "--upstream" in out.stdout and "--watch" in out.stdout
    uid = podman("run", "--rm", "--ulimit", "host", "--no-healthcheck", "--entrypoint", "id", flowctl_image, "-u").stdout
    assert uid.strip() == "10001"
    config = podman("image", "inspect", "--format", "{{.Config.User}}", flowctl_image).stdout.strip()
    assert config == "10001:10001"
    print(f"Dockerfile build on the local base: {BUILD_SECONDS.get('flowctl', float('nan')):.1f} s")


def test_healthcheck_kept_and_answers(flowctl_image: str, names: dict[str, list[str]]) -> None:
    """Built with --format docker the HEALTHCHECK survives; `podman healthcheck run` passes once the sidecar serves."""
    test = podman("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", flowctl_image).stdout
    assert "healthz" in test and "FLOWCTL_ADMIN" in test
    name = unique("health")
    names["container"].append(name)
    # The health timer needs systemd (absent here: podman logs an error and runs the check on request only).
    podman("run", "-d", "--name", name, "--ulimit", "host", "-e", "FLOWCTL_ADMIN=127.0.0.1:9911",
           flowctl_image, "--upstream=http://127.0.0.1:9")  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        rc = podman("healthcheck", "run", name, check=False).returncode
        if rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rc == 0, podman("logs", name, check=False).stderr[-2000:]
    podman("kill", "--signal", "STOP", name)  # a stopped sidecar must fail its health check
    try:
        assert podman("healthcheck", "run", name, check=False, timeout_s=30).returncode != 0
    finally:
        podman("kill", "--signal", "CONT", name, check=False)
