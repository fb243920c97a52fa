"""`podman kube play` of deploy/k8s's Deployment: quotas, shareProcessNamespace, the sidecar reading the app's 500m, probes.

The test plays an override of 20-deployment.yaml that changes only what podman
here cannot have: images (locally built stand-ins, unique tags), one replica,
a unique name, and the lxcfs hostPaths pointing at the test's own lxcfs mount
(the DaemonSet's /var/lib/lxcfs). podman cannot play the DaemonSet itself (it
needs a node), the Service or the ServiceMonitor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.containers.conftest import REPO
from tests.containers.podman import exec_json, exec_status, inspect, podman, remove, unique

pytestmark = pytest.mark.real

MANIFEST = REPO / "deploy" / "k8s" / "20-deployment.yaml"


def _cpu_millis(text: str) -> int:
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


@dataclass
class Played:
    pod: str
    containers: dict[str, str]  # manifest container name -> podman container name
    spec: dict[str, Any]  # the pod spec that was played


@pytest.fixture(scope="module")
def played(flowctl_image: str, app_image: str, lxcfs_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    doc = yaml.safe_load(MANIFEST.read_text())
    name = unique("kube")
    doc["metadata"]["name"] = name
    doc["spec"]["replicas"] = 1
    spec = doc["spec"]["template"]["spec"]
    images = {"app": app_image, "flowctl-sidecar": flowctl_image}
    for c in spec["containers"]:
        c["image"] = images[c["name"]]
        c["imagePullPolicy"] = "Never"
    for v in spec["volumes"]:
        if "hostPath" in v and v["hostPath"]["path"].startswith("/var/lib/lxcfs/"):
            v["hostPath"]["path"] = v["hostPath"]["path"].replace("/var/lib/lxcfs", lxcfs_dir, 1)
    path = tmp_path_factory.mktemp("kube") / "deployment.yaml"
    path.write_text(yaml.safe_dump(doc))
    os.chmod(path.parent, 0o755)
    pods: list[str] = []
    try:
        out = podman("kube", "play", str(path), timeout_s=300).stdout
        pod_id = out.split("Pod:", 1)[1].split()[0]
        pods.append(pod_id)
        members = podman("ps", "-a", "--filter", f"pod={pod_id}", "--format", "{{.Names}}").stdout.split()
        # podman names a kube container "<pod name>-<container name>"
        containers = {c["name"]: next(m for m in members if m.endswith("-" + c["name"])) for c in spec["containers"]}
        yield Played(pod_id, containers, spec)
    finally:
        podman("kube", "down", str(path), check=False, timeout_s=120)
        remove("pod", *pods)


def _wait_ready(played: Played, timeout_s: float = 30.0) -> tuple[int, str]:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        status, body = exec_status(played.containers["flowctl-sidecar"], "http://127.0.0.1:9901/readyz")
        if status == 200 or time.monotonic() > deadline:
            return status, body
        time.sleep(0.3)


def _cgroup_quota_cores(pid: int) -> float:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, rel = line.split(":", 2)
        if "cpu" in ctrls.split(","):
            d = Path("/sys/fs/cgroup/cpu") / rel.lstrip("/")
            return int((d / "cpu.cfs_quota_us").read_text()) / int((d / "cpu.cfs_period_us").read_text())
    raise AssertionError(f"no v1 cpu line for pid {pid}")


def test_cpu_quotas_equal_the_manifests_limits(played: Played) -> None:
    for c in played.spec["containers"]:
        limit_cores = _cpu_millis(str(c["resources"]["limits"]["cpu"])) / 1000
        info = inspect(played.containers[c["name"]])
        host = info["HostConfig"]
        assert host["CpuQuota"] / host["CpuPeriod"] == limit_cores, (c["name"], host["CpuQuota"], host["CpuPeriod"])
        assert _cgroup_quota_cores(info["State"]["Pid"]) == limit_cores  # what the kernel enforces


def test_share_process_namespace_is_honoured(played: Played) -> None:
    assert played.spec["shareProcessNamespace"] is True
    pids = {n: inspect(c)["State"]["Pid"] for n, c in played.containers.items()}
    ns = {n: os.readlink(f"/proc/{p}/ns/pid") for n, p in pids.items()}
    assert ns["app"] == ns["flowctl-sidecar"], ns
    user = {n: inspect(c)["Config"]["User"] for n, c in played.containers.items()}
    assert set(user.values()) == {"101:101"} or set(user.values()) == {"101"}, user  # the pod's one runAsUser


def test_sidecar_reads_the_apps_500m_and_probes_answer(played: Played) -> None:
    sidecar = played.containers["flowctl-sidecar"]
    status, body = _wait_ready(played)
    assert (status, body) == (200, "ready\n")
    dbg = exec_json(sidecar, "http://127.0.0.1:9901/debug/limiter")
    assert dbg["watch"]["target"] == "process:nginx" and dbg["watch"]["signal_ok"] is True, dbg["watch"]
    assert dbg["cpu"]["container"]["limit_cores"] == 0.5
    # Every probe of the manifest, on the port and path it names (the Pod shares one network namespace).
    ports = {p["name"]: p["containerPort"] for c in played.spec["containers"] for p in c.get("ports", [])}
    for c in played.spec["containers"]:
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(kind)
            if probe is None:
                continue
            get = probe["httpGet"]
            port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
            code, _ = exec_status(sidecar, f"http://127.0.0.1:{port}{get['path']}")
            assert code == 200, (c["name"], kind, port, get["path"])
    code, _ = exec_status(sidecar, f"http://127.0.0.1:{ports['http']}/")
    assert code == 200  # through the proxy to the app
    print(f"kube play: sidecar reads {dbg['cpu']['container']}")
