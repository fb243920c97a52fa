"""Running podman from tests: flowctl's containers.conf, unique names, cleanup that cannot be skipped.

The machine set-up (packages, containers.conf, base images) is ``scripts/containers.sh``.
Every name a test makes starts with ``flowctl-test-`` plus a random suffix, and
is removed by the fixture that made it, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

from tests.realenv import need, need_binary, need_root

CONF = os.environ.get("CONTAINERS_CONF") or os.environ.get("FLOWCTL_CONTAINERS_CONF", "/var/lib/flowctl/containers.conf")
BASE_IMAGE = "localhost/debian-base:bookworm"
PY_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
# Every `podman run` here: no default ulimits (the sandbox forbids raising them), no systemd health timers.
RUN = ["--ulimit", "host", "--no-healthcheck"]
BUILD = ["--pull=never", "--network", "host", "-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]


def env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": CONF}


def podman(*args: str, check: bool = True, timeout_s: float = 180.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` with flowctl's containers.conf; raises with podman's stderr when ``check`` fails."""
    p = subprocess.run(["podman", *args], env=env(), capture_output=True, text=True, timeout=timeout_s, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {p.returncode}\n{p.stderr[-3000:]}")
    return p


def need_podman() -> None:
    """Root, podman, runc, flowctl's containers.conf and the two local base images (scripts/containers.sh)."""
    need_root()
    need_binary("podman")
    need_binary("runc")
    hint = "run `bash scripts/containers.sh` as root first"
    need(os.path.exists(CONF), f"no {CONF}: {hint}")
    for image in (BASE_IMAGE, PY_IMAGE):
        need(podman("image", "exists", image, check=False).returncode == 0, f"no image {image}: {hint}")


def unique(kind: str) -> str:
    return f"flowctl-test-{kind}-{uuid.uuid4().hex[:8]}"


def inspect(name: str, kind: str = "container") -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(podman(kind, "inspect", name).stdout)
    return data[0]


def exec_json(container: str, url: str, *, timeout_s: float = 5.0) -> Any:
    """GET ``url`` from inside ``container`` (its network namespace) with the image's python; the JSON body."""
    code = (
        "import sys, urllib.request; "
        f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout={timeout_s}).read().decode())"
    )
    return json.loads(podman("exec", container, "python", "-c", code).stdout)


def exec_status(container: str, url: str) -> tuple[int, str]:
    """(status, body) of GET ``url`` from inside ``container``; status 0 when nothing answered."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen({url!r}, timeout=5); print(r.status); sys.stdout.write(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); sys.stdout.write(e.read().decode())\n"
        "except OSError as e:\n"
        "    print(0); print(e)\n"
    )
    out = podman("exec", container, "python", "-c", code).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def remove(kind: str, *names: str) -> None:
    """Remove containers/pods/images, ignoring ones already gone (cleanup must not fail the test twice)."""
    if not names:
        return
    args = {"container": ["rm", "-f", "-t", "0"], "pod": ["pod", "rm", "-f", "-t", "0"], "image": ["rmi", "-f"]}[kind]
    podman(*args, *names, check=False, timeout_s=120)
    if kind != "image":
        remove_empty_parent_groups()


def remove_empty_parent_groups() -> list[str]:
    """Remove podman's empty ``/sys/fs/cgroup/*/libpod_parent`` trees; return the ones that still hold tasks.

    The cgroup v2 tests move the cpu controller and need an empty v1 cpu hierarchy.
    """
    left: list[str] = []
    for ctrl in sorted(os.listdir("/sys/fs/cgroup")):
        top = f"/sys/fs/cgroup/{ctrl}/libpod_parent"
        if not os.path.isdir(top):
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        if os.path.isdir(top):
            left.append(top)
    return left


def build(tag: str, context: str, *, containerfile: str | None = None, extra: Sequence[str] = ()) -> float:
    """``podman build`` with the settings this machine needs; returns the seconds it took."""
    t0 = time.monotonic()
    args = ["build", *BUILD, "--format", "docker", "-t", tag, *extra]
    if containerfile is not None:
        args += ["-f", containerfile]
    podman(*args, context, timeout_s=600)
    return time.monotonic() - t0


def have(binary: str) -> bool:
    return shutil.which(binary) is not None
