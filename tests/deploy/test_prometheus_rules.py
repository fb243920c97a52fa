"""deploy/prometheus: rules and configs pass promtool, and the alerts fire as designed."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy.artifacts import (
    CONTRACT_METRICS,
    K8S_SCRAPE,
    PROM_CONFIG,
    PROM_DIR,
    RULES,
    RULES_UNIT_TEST,
    alerts,
    load_k8s,
    load_rules,
    raw_metrics_in,
    recordings,
)
from tests.realenv import need_binary

REQUIRED_ALERTS = {
    "FlowctlSustainedShedding",
    "FlowctlContainerCpuNearLimit",
    "FlowctlHeavyThrottling",
    "FlowctlCpuViewDisagreement",
    "FlowctlUpstreamNotReady",
    "FlowctlQuotaStoreDown",
}
_DURATION = re.compile(r"^(\d+)([smh])$")


def _seconds(text: str) -> int:
    m = _DURATION.match(text)
    assert m, f"unexpected duration {text!r}"
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    return load_rules()


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = need_binary("promtool", "prometheus")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.real
def test_promtool_check_rules() -> None:
    r = _promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.real
def test_promtool_check_config() -> None:
    r = _promtool("check", "config", str(PROM_CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.real
def test_promtool_rule_unit_tests() -> None:
    """Each alert fires (and only then) on synthetic series, with the real `for:` durations."""
    r = _promtool("test", "rules", str(RULES_UNIT_TEST))
    assert r.returncode == 0, r.stdout + r.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULES_UNIT_TEST.read_text()))
    assert tested >= REQUIRED_ALERTS


def test_required_alerts_are_sensible(rules: dict[str, Any]) -> None:
    found = alerts(rules)
    assert REQUIRED_ALERTS <= set(found)
    for name, rule in found.items():
        assert name.startswith("Flowctl")
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        # Sustained means sustained: no hair-trigger alert in the shipped rules.
        assert _seconds(rule["for"]) >= 60, name
    assert _seconds(found["FlowctlSustainedShedding"]["for"]) >= 300


def test_rules_read_only_contract_metrics(rules: dict[str, Any]) -> None:
    for group in rules["groups"]:
        for rule in group["rules"]:
            used = raw_metrics_in(rule["expr"])
            assert used <= CONTRACT_METRICS, (rule.get("record") or rule.get("alert"), used - CONTRACT_METRICS)


def test_recording_rules_are_named_and_used(rules: dict[str, Any]) -> None:
    recorded = recordings(rules)
    assert len(recorded) >= 3
    for name in recorded:
        assert re.fullmatch(r"[a-z_]+:flowctl_[a-z0-9_]+:[a-z0-9_]+", name), name
    text = RULES.read_text()
    # The alerts build on the recording rules (shed ratio, view disagreement).
    for name in ("instance_resource:flowctl_shed_ratio:rate5m", "instance:flowctl_cpu_view_disagreement:ratio"):
        assert name in recorded and text.count(name) >= 2


def test_prometheus_config_loads_the_rules() -> None:
    config = yaml.safe_load(PROM_CONFIG.read_text())
    assert [(PROM_DIR / f).resolve() for f in config["rule_files"]] == [RULES.resolve()]
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    assert "flowctl-local" in jobs


def test_kubernetes_scrape_matches_pod_annotations() -> None:
    """The SD job keeps exactly the annotations that the Deployment sets."""
    job = yaml.safe_load(K8S_SCRAPE.read_text())["scrape_configs"][0]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    sources = {s for r in job["relabel_configs"] for s in r.get("source_labels", [])}
    read = {s.removeprefix("__meta_kubernetes_pod_annotation_") for s in sources if "annotation" in s}
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert keep and keep[0]["regex"] == "true"
    deployments = [d for _, d in load_k8s() if d["kind"] == "Deployment"]
    assert deployments
    for d in deployments:
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        as_labels = {k.replace(".", "_").replace("/", "_") for k in annotations if k.startswith("prometheus.io/")}
        assert as_labels == read
        assert annotations["prometheus.io/scrape"] == "true"
    # The port regex turns "10.0.0.7:8000" + annotation "9901" into "10.0.0.7:9901".
    (port_rule,) = [r for r in job["relabel_configs"] if r.get("target_label") == "__address__"]
    m = re.fullmatch(port_rule["regex"], "10.0.0.7:8000;9901")
    assert m and m.expand(port_rule["replacement"].replace("$", "\\")) == "10.0.0.7:9901"
