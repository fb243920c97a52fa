"""Paths and parsers for the deployment artifacts under test (dashboard, rules, manifests).

Shared by the static checks and the real-Prometheus test, so both read the
files exactly the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "flowctl.json"
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "rules.yml"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
K8S_SCRAPE = PROM_DIR / "kubernetes-scrape.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
RULES_UNIT_TEST = Path(__file__).resolve().parent / "rules_test.yml"

# The metric names fixed by the team contract (flowctl.metrics and the sidecar).
CONTRACT_METRICS = frozenset(
    {
        "flowctl_requests_total",
        "flowctl_shed_total",
        "flowctl_inflight",
        "flowctl_max_inflight",
        "flowctl_min_rt_seconds",
        "flowctl_max_pass_per_second",
        "flowctl_cpu_utilization_ratio",
        "flowctl_cpu_limit_cores",
        "flowctl_cpu_usable_cores",
        "flowctl_cpu_throttled_ratio",
        "flowctl_cpu_pressure_ratio",
        "flowctl_request_duration_seconds",
        "flowctl_event_loop_lag_seconds",
        "flowctl_upstream_ready",
        "flowctl_draining",
        "flowctl_quota_requests_total",
        "flowctl_quota_store_seconds",
        "flowctl_quota_store_errors_total",
        "flowctl_quota_mode",
    }
)
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_METRIC_RE = re.compile(r"\b(flowctl_[a-z0-9_]+)")


def base_metric(name: str) -> str:
    """``flowctl_request_duration_seconds_bucket`` -> ``flowctl_request_duration_seconds``."""
    if name in CONTRACT_METRICS:
        return name
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in CONTRACT_METRICS:
            return name[: -len(suffix)]
    return name


def raw_metrics_in(expr: str) -> set[str]:
    """The flowctl_* raw metric names an expression reads (recording-rule names excluded)."""
    return {base_metric(m) for m in _METRIC_RE.findall(expr) if not _is_recorded(expr, m)}


def _is_recorded(expr: str, name: str) -> bool:
    # Recording rules are named level:metric:ops, so the metric part follows a colon.
    return re.search(r":" + re.escape(name) + r":", expr) is not None


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open() as f:
        data: dict[str, Any] = json.load(f)
    return data


def load_rules() -> dict[str, Any]:
    with RULES.open() as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    return [
        PanelQuery(panel["title"], target["refId"], target["expr"])
        for panel in iter_panels(dashboard)
        if panel["type"] != "row"
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, variables: dict[str, str], rate_interval: str = "1m") -> str:
    """Expand Grafana variables the way Grafana sends the query to Prometheus."""
    out = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    for name in sorted(variables, key=len, reverse=True):
        out = out.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    assert "$" not in out, f"unsubstituted variable in {out!r}"
    return out


def alerts(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def recordings(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["record"]: r for g in rules["groups"] for r in g["rules"] if "record" in r}


def load_k8s() -> list[tuple[Path, dict[str, Any]]]:
    """Every document of every manifest under deploy/k8s (recursively), with its file."""
    docs: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(K8S_DIR.rglob("*.yaml")) + sorted(K8S_DIR.rglob("*.yml")):
        with path.open() as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    docs.append((path, doc))
    return docs
