"""The Kubernetes Pod model with podman: app + flowctl sidecar sharing net and pid, the app at --cpus 0.5."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.containers.conftest import APPS
from tests.containers.podman import RUN, exec_json, exec_status, podman, remove, unique, wait_http
from tests.containers.test_run import _load

pytestmark = pytest.mark.real

ADMIN = "http://127.0.0.1:9901"
DRAIN_S = 10


@dataclass
class Pod:
    name: str
    app: str
    sidecar: str
    url: str  # the sidecar's proxy, published on the host


def _start_pod(image: str, *, app_user: str, app_cmd: list[str], watch: str, sidecar_extra: list[str] = ()) -> Pod:  # type: ignore[assignment]
    name = unique("pod")
    pod = Pod(name, f"{name}-app", f"{name}-sidecar", "")
    podman("pod", "create", "--name", name, "--share", "net,pid,ipc", "-p", "127.0.0.1::8000")
    podman("run", "-d", "--pod", name, "--name", pod.app, *RUN, "--cpus", "0.5", "--user", app_user,
           "-v", f"{APPS}:/apps:ro", "--entrypoint", app_cmd[0], image, *app_cmd[1:])  # fmt: skip
    podman("run", "-d", "--pod", name, "--name", pod.sidecar, *RUN, *sidecar_extra, image,
           "--upstream=http://127.0.0.1:8080", f"--watch={watch}", "--admin=127.0.0.1:9901",
           f"--drain-seconds={DRAIN_S}", "--health-path=/", "--sample-interval=0.1")  # fmt: skip
    pod.url = "http://" + podman("port", pod.sidecar, "8000").stdout.strip().splitlines()[0]
    wait_http(f"{pod.url}/")
    return pod


@pytest.fixture(scope="module")
def pod(flowctl_image: str) -> Iterator[Pod]:
    """Same UID in both containers (10001, the image's user), as deploy/k8s requires."""
    name = ""
    try:
        p = _start_pod(flowctl_image, app_user="10001", app_cmd=["python", "/apps/app.py", "8080"], watch="process:app.py")
        name = p.name
        yield p
    finally:
        if name:
            remove("pod", name)


def _debug(pod: Pod) -> dict[str, Any]:
    data: dict[str, Any] = exec_json(pod.sidecar, f"{ADMIN}/debug/limiter")
    return data


def test_sidecar_reads_the_apps_limit_and_utilization(pod: Pod) -> None:
    podman("exec", "-d", pod.app, "timeout", "4", "python", "-c", "while True: pass")
    time.sleep(2.0)
    # The best of a few 100 ms readings: one can dip under 0.8 when the machine is busy (CI saw
    # 0.70 with the smoothed value at 0.88). The host view of this burner reads at most 0.5.
    seen: list[dict[str, Any]] = []
    for _ in range(5):
        dbg = _debug(pod)
        assert dbg["watch"]["signal_ok"] is True and dbg["watch"]["pid"] is not None, dbg["watch"]
        seen.append(dbg["cpu"]["container"])
        if seen[-1]["utilization"] > 0.8:
            break
        time.sleep(0.25)
    cpu = seen[-1]
    assert cpu["limit_cores"] == 0.5  # the app's --cpus, not the sidecar's (unlimited) cgroup
    assert max(c["utilization"] for c in seen) > 0.8, seen  # the burner in the app's cgroup
    print(f"pod: sidecar reads the app: {json.dumps(cpu)}; host view {json.dumps(dbg['cpu'].get('host'))}")
    time.sleep(max(0.0, 2.5 - 0.25 * (len(seen) - 1)))  # the burner ends (timeout 4)


def test_sidecar_sheds_under_overload(pod: Pod) -> None:
    statuses = asyncio.run(_load(f"{pod.url}/burn?ms=5", clients=32, duration_s=5.0))
    dbg = _debug(pod)
    # On a failure, the limiter's own account (engagement, ceiling, capacity, signal) says why it did not shed.
    assert statuses[200] > 0 and statuses[503] > 0, (statuses, json.dumps(dbg, default=str)[:6000])
    triggers = {r["reason"]["trigger"] if isinstance(r.get("reason"), dict) else r.get("trigger") for r in dbg["rejections"]}
    print(f"pod: 32 clients x 5 s on /burn?ms=5 through the sidecar: {dict(statuses)}; triggers {triggers}")
    assert triggers


def test_drain_on_podman_stop_within_the_grace_period(pod: Pod) -> None:
    result: dict[str, Any] = {}

    def slow() -> None:
        with urllib.request.urlopen(f"{pod.url}/slow?s=2", timeout=30) as r:
            result["status"] = r.status

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)  # the request is in flight at the app
    t0 = time.monotonic()
    podman("stop", "-t", str(DRAIN_S + 5), pod.sidecar)
    stop_s = time.monotonic() - t0
    t.join(30)
    state = podman("inspect", "--format", "{{.State.ExitCode}}", pod.sidecar).stdout.strip()
    print(f"pod: podman stop with a 2 s request in flight: {stop_s:.2f} s, exit code {state}")
    assert result.get("status") == 200  # the in-flight request finished
    assert state == "0"
    assert stop_s < DRAIN_S + 5  # no SIGKILL after the grace period


@pytest.mark.parametrize(
    ("app_user", "sidecar_extra", "readable"),
    [
        ("10001", [], True),  # same UID: ptrace-read access to /proc/PID/root without any capability
        ("0", [], False),  # app as root, sidecar as 10001: EACCES, and the sidecar must say so
        ("0", ["--cap-add", "SYS_PTRACE"], True),  # the other remedy
    ],
    ids=["same-uid", "app-root", "app-root+CAP_SYS_PTRACE"],
)
def test_uids_and_a_python_m_app(flowctl_image: str, app_user: str, sidecar_extra: list[str], readable: bool) -> None:
    """The app is `python3 -m http.server`, watched as process:http.server."""
    p: Pod | None = None
    try:
        p = _start_pod(flowctl_image, app_user=app_user, app_cmd=["python3", "-m", "http.server", "8080"],
                       watch="process:http.server", sidecar_extra=sidecar_extra)  # fmt: skip
        time.sleep(1.5)  # a few samples
        watch = _debug(p)["watch"]
        status, body = exec_status(p.sidecar, f"{ADMIN}/readyz")
        metrics = exec_status(p.sidecar, f"{ADMIN}/metrics")[1]
        logs = podman("logs", p.sidecar).stderr
        assert status == 200
        if readable:
            assert watch["signal_ok"] is True and watch["last_error"] is None, watch
            assert 'flowctl_signal_ok{view="container"} 1.0' in metrics
            assert body == "ready\n"
            assert _debug(p)["cpu"]["container"]["limit_cores"] == 0.5
        else:
            assert watch["signal_ok"] is False and "Permission denied" in watch["last_error"], watch
            assert "CAP_SYS_PTRACE" in watch["remedy"]
            assert 'flowctl_signal_ok{view="container"} 0.0' in metrics
            assert body.startswith("ready, degraded: CPU signal unavailable")
            assert logs.count("CAP_SYS_PTRACE") == 1, logs  # loud, once
            assert _debug(p)["cpu"]["container"]["limit_cores"] is None  # unknown, never the host's 2.0
    finally:
        if p is not None:
            remove("pod", p.name)
