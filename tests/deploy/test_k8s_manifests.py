"""deploy/k8s: every manifest parses, and names, labels, selectors, ports, probes,
volumes and shutdown timings agree with each other and with the sidecar's flags."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.artifacts import K8S_DIR, ROOT, load_k8s

Doc = dict[str, Any]

KNOWN_KINDS = {
    ("v1", "Namespace"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "DaemonSet"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
NAMESPACE = "flowctl"
LXCFS_FILES = {
    "proc/cpuinfo",
    "proc/meminfo",
    "proc/stat",
    "proc/uptime",
    "proc/loadavg",
    "proc/diskstats",
    "proc/swaps",
    "sys/devices/system/cpu/online",
}
CONTAINER_KEYS = {
    "name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports", "resources",
    "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "securityContext", "volumeMounts",
    "workingDir", "terminationMessagePolicy",
}  # fmt: skip
POD_SPEC_KEYS = {
    "containers", "initContainers", "volumes", "securityContext", "shareProcessNamespace", "hostPID",
    "terminationGracePeriodSeconds", "tolerations", "priorityClassName", "serviceAccountName", "nodeSelector",
    "affinity", "topologySpreadConstraints",
}  # fmt: skip


@pytest.fixture(scope="module")
def docs() -> list[tuple[Path, Doc]]:
    found = load_k8s()
    assert found, f"no manifests under {K8S_DIR}"
    return found


def _of(docs: list[tuple[Path, Doc]], kind: str) -> list[Doc]:
    return [d for _, d in docs if d["kind"] == kind]


def _one(docs: list[tuple[Path, Doc]], kind: str, name: str) -> Doc:
    (d,) = [d for d in _of(docs, kind) if d["metadata"]["name"] == name]
    return d


def _pod(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def _container(pod: Doc, name: str) -> Doc:
    (c,) = [c for c in pod["containers"] if c["name"] == name]
    container: Doc = c
    return container


def _ports(container: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def _sleep_s(container: Doc) -> float:
    cmd = container["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep" and len(cmd) == 2, cmd
    return float(cmd[1])


def _flags(container: Doc) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in container["args"]:
        key, sep, value = arg.partition("=")
        assert key.startswith("--") and sep, f"use --flag=value form: {arg!r}"
        out[key[2:]] = value
    return out


def _port_of(hostport: str) -> int:
    return int(hostport.rpartition(":")[2])


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _resolve_port(port: int | str, containers: list[Doc]) -> int:
    """A probe or Service targetPort (name or number) -> the declared containerPort."""
    for c in containers:
        for p in c.get("ports", []):
            if port in (p.get("name"), p["containerPort"]):
                return int(p["containerPort"])
    raise AssertionError(f"port {port!r} is not declared by {[c['name'] for c in containers]}")


def _sidecar_pod(docs: list[tuple[Path, Doc]]) -> tuple[Doc, Doc, Doc, Doc]:
    deployment = _one(docs, "Deployment", "demo-app")
    pod = _pod(deployment)
    return deployment, pod, _container(pod, "flowctl-sidecar"), _container(pod, "app")


# -- every document -----------------------------------------------------------------------------


def test_kinds_names_and_namespaces(docs: list[tuple[Path, Doc]]) -> None:
    seen: set[tuple[str, str, str]] = set()
    namespaces = {d["metadata"]["name"] for d in _of(docs, "Namespace")}
    assert namespaces == {NAMESPACE}
    for path, d in docs:
        assert (d["apiVersion"], d["kind"]) in KNOWN_KINDS, path
        meta = d["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]), meta["name"]
        if d["kind"] != "Namespace":
            assert meta["namespace"] in namespaces, (path, meta["name"])
        key = (d["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        assert meta["labels"]["app.kubernetes.io/part-of"] == "flowctl"


def test_plain_apply_order(docs: list[tuple[Path, Doc]]) -> None:
    """`kubectl apply -f deploy/k8s/` applies files by name: the Namespace first, no CRDs needed."""
    top = sorted(K8S_DIR.glob("*.yaml"))
    assert top[0].name.startswith("00-") and [d["kind"] for p, d in docs if p == top[0]] == ["Namespace"]
    for path, d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com"):
            assert path.parent != K8S_DIR, "operator CRs must not be in the plainly applied directory"


def test_workload_selectors_and_pod_specs(docs: list[tuple[Path, Doc]]) -> None:
    for d in _of(docs, "Deployment") + _of(docs, "DaemonSet"):
        template = d["spec"]["template"]
        assert _labels_match(d["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
        assert d["metadata"]["labels"]["app.kubernetes.io/name"] == template["metadata"]["labels"]["app.kubernetes.io/name"]
        pod = template["spec"]
        assert set(pod) <= POD_SPEC_KEYS, set(pod) - POD_SPEC_KEYS
        names = [c["name"] for c in pod["containers"]]
        assert len(names) == len(set(names))
        all_ports = [p for c in pod["containers"] for p in c.get("ports", [])]
        assert len({p["name"] for p in all_ports}) == len(all_ports), "port names must be unique in a Pod"
        assert len({p["containerPort"] for p in all_ports}) == len(all_ports), "ports collide in the Pod's network namespace"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounted: set[str] = set()
        for c in pod["containers"]:
            assert set(c) <= CONTAINER_KEYS, (c["name"], set(c) - CONTAINER_KEYS)
            assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in c:
                    _resolve_port(c[probe]["httpGet"]["port"], [c])
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, (c["name"], m["name"])
                mounted.add(m["name"])
            _check_resources(c)
        assert mounted == set(volumes), f"declared but unused volumes: {set(volumes) - mounted}"


def _quantity(text: str | int) -> float:
    s = str(text)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


def _check_resources(c: Doc) -> None:
    res = c["resources"]
    for kind in ("cpu", "memory"):
        req, lim = _quantity(res["requests"][kind]), _quantity(res["limits"][kind])
        assert 0 < req <= lim, (c["name"], kind, req, lim)


def test_services_reach_declared_ports(docs: list[tuple[Path, Doc]]) -> None:
    workloads = _of(docs, "Deployment") + _of(docs, "DaemonSet")
    for svc in _of(docs, "Service"):
        selected = [w for w in workloads if _labels_match(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        assert selected, f"Service {svc['metadata']['name']} selects no workload"
        for w in selected:
            assert w["metadata"]["namespace"] == svc["metadata"]["namespace"]
            for port in svc["spec"]["ports"]:
                _resolve_port(port["targetPort"], _pod(w)["containers"])


def test_public_service_targets_the_sidecar_not_the_app(docs: list[tuple[Path, Doc]]) -> None:
    _, pod, sidecar, app = _sidecar_pod(docs)
    svc = _one(docs, "Service", "demo-app")
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] in _ports(sidecar)
    assert _resolve_port(port["targetPort"], [sidecar]) == _port_of(_flags(sidecar)["listen"])
    assert port["targetPort"] not in _ports(app)


def test_service_monitor_selects_the_metrics_service(docs: list[tuple[Path, Doc]]) -> None:
    for sm in _of(docs, "ServiceMonitor"):
        services = [s for s in _of(docs, "Service") if _labels_match(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert services, sm["metadata"]["name"]
        for s in services:
            assert s["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
            port_names = {p["name"] for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                assert ep["port"] in port_names
                assert ep["path"] == "/metrics"
        # The public Service must not be selected too (it has no admin port).
        assert _one(docs, "Service", "demo-app") not in services


# -- the app + sidecar Pod ----------------------------------------------------------------------


def test_sidecar_flags_match_ports_probes_and_annotations(docs: list[tuple[Path, Doc]]) -> None:
    deployment, pod, sidecar, app = _sidecar_pod(docs)
    flags = _flags(sidecar)
    ports = _ports(sidecar)
    assert _port_of(flags["listen"]) == ports["http"]
    assert flags["admin"].startswith("0.0.0.0:"), "probes and Prometheus come from outside the Pod"
    assert _port_of(flags["admin"]) == ports["admin"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", flags["upstream"])
    assert _port_of(flags["upstream"]) in _ports(app).values()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["admin"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert _resolve_port(sidecar[probe]["httpGet"]["port"], [sidecar]) == ports["admin"]
    if "health-path" in flags:
        app_paths = {app[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
        assert flags["health-path"] in app_paths


def test_sidecar_flags_are_valid_sidecar_configuration(docs: list[tuple[Path, Doc]]) -> None:
    """The args are accepted by the sidecar's own parser (every flag exists, every value parses)."""
    import sidecar.config as config

    _, _, sidecar, _ = _sidecar_pod(docs)
    known = {o.key.replace("_", "-") for o in config.OPTIONS}
    assert set(_flags(sidecar)) <= known, set(_flags(sidecar)) - known
    env = {e["name"]: e["value"] for e in sidecar.get("env", [])}
    assert all(k.startswith(config.ENV_PREFIX) for k in env)
    loaded = config.load_config(config.parse_args(list(sidecar["args"])), env=env)
    assert loaded.drain_seconds == float(_flags(sidecar)["drain-seconds"])
    assert str(loaded.admin) == _flags(sidecar)["admin"] and str(loaded.listen) == _flags(sidecar)["listen"]


def test_watches_the_app_through_a_shared_pid_namespace(docs: list[tuple[Path, Doc]]) -> None:
    _, pod, sidecar, app = _sidecar_pod(docs)
    assert pod["shareProcessNamespace"] is True
    watch = _flags(sidecar)["watch"]
    assert watch.startswith("process:"), "PID 1 is the pause container: watch the app by name"
    # Same UID for both containers, so reading /proc/PID/root needs no capability.
    uid = {c["name"]: c.get("securityContext", {}).get("runAsUser", pod["securityContext"].get("runAsUser")) for c in (app, sidecar)}
    assert uid[app["name"]] == uid[sidecar["name"]] is not None and uid[app["name"]] != 0


def test_shutdown_timings_agree(docs: list[tuple[Path, Doc]]) -> None:
    """preStop (Service deregistration) + drain fits in the grace period; the app outlives the drain."""
    _, pod, sidecar, app = _sidecar_pod(docs)
    drain_s = float(_flags(sidecar)["drain-seconds"])
    sidecar_pre_s = _sleep_s(sidecar)
    assert sidecar_pre_s >= 3, "give endpoints time to drop the Pod before refusing connections"
    grace_s = pod["terminationGracePeriodSeconds"]
    assert grace_s >= sidecar_pre_s + drain_s + 5
    assert _sleep_s(app) >= sidecar_pre_s + drain_s, "the app must keep serving while the sidecar drains"
    assert _sleep_s(app) < grace_s


def test_lxcfs_views_are_mounted_from_the_daemonset(docs: list[tuple[Path, Doc]]) -> None:
    ds = _one(docs, "DaemonSet", "lxcfs")
    ds_pod = _pod(ds)
    assert ds_pod["hostPID"] is True
    (lxcfs,) = ds_pod["containers"]
    assert lxcfs["securityContext"]["privileged"] is True
    ds_volumes = {v["name"]: v for v in ds_pod["volumes"]}
    (mount,) = [m for m in lxcfs["volumeMounts"] if m.get("mountPropagation") == "Bidirectional"]
    host_dir = ds_volumes[mount["name"]]["hostPath"]["path"]
    assert mount["mountPath"] == host_dir, "lxcfs must mount where the Pods' hostPaths point"
    script = " ".join(lxcfs["command"])
    assert re.search(rf"lxcfs\b.* {re.escape(host_dir)}\s*$", script.strip()), script

    _, pod, _, app = _sidecar_pod(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    views: dict[str, str] = {}
    for m in app["volumeMounts"]:
        hp = volumes[m["name"]].get("hostPath")
        if hp and hp["path"].startswith(host_dir + "/"):
            rel = hp["path"][len(host_dir) + 1 :]
            assert m["mountPath"] == "/" + rel, (m["mountPath"], hp["path"])
            assert hp["type"] == "File" and m["readOnly"] is True
            views[rel] = m["mountPath"]
    assert set(views) == LXCFS_FILES


def test_locally_built_images_have_build_instructions(docs: list[tuple[Path, Doc]]) -> None:
    """Every flowctl image a manifest names is built by a documented `docker build -t` line."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    documented = (ROOT / "docs" / "deploying.md").read_text() + (K8S_DIR / "lxcfs" / "Dockerfile").read_text()
    built = set(re.findall(r"docker build -t (\S+)", documented))
    images = {c["image"] for d in _of(docs, "Deployment") + _of(docs, "DaemonSet") for c in _pod(d)["containers"]}
    ours = {i for i in images if i.startswith("flowctl")}
    assert ours and ours <= built, ours - built
    assert f"flowctl:{version}" in ours, "the sidecar image tag follows the project version"
