"""dashboards/flowctl.json: a valid current-schema Grafana dashboard with the panels the issue lists."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.artifacts import CONTRACT_METRICS, iter_panels, load_dashboard, panel_queries, raw_metrics_in, substitute

REQUIRED_PANELS = {
    # title -> metrics the panel must read
    "Admitted vs shed rate per resource": {"flowctl_requests_total"},
    "Shed reasons": {"flowctl_shed_total"},
    "In-flight vs max_inflight": {"flowctl_inflight", "flowctl_max_inflight"},
    "Min RT and max pass rate": {"flowctl_min_rt_seconds", "flowctl_max_pass_per_second"},
    "CPU utilization: container vs host vs lxcfs": {"flowctl_cpu_utilization_ratio"},
    "CPU limit, usable cores, throttling and pressure": {"flowctl_cpu_limit_cores", "flowctl_cpu_usable_cores",
                                                         "flowctl_cpu_throttled_ratio", "flowctl_cpu_pressure_ratio"},
    "Request duration quantiles": {"flowctl_request_duration_seconds"},
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in iter_panels(dashboard) if p["type"] != "row"]


def test_top_level_fields(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39  # Grafana 10.4 / 11 classic model
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["title"]
    assert dashboard["id"] is None  # importable: Grafana assigns the id
    assert "__inputs" not in dashboard  # uses a datasource variable, not an import-time input


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("instance", "resource"):
        v = variables[name]
        assert v["type"] == "query"
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert v["definition"].startswith("label_values(") and v["definition"].endswith(f", {name})")
        assert v["query"]["query"] == v["definition"]
        assert v["multi"] and v["includeAll"] and v["allValue"] == ".*"
        assert raw_metrics_in(v["definition"]) <= CONTRACT_METRICS


def test_required_panels_and_their_metrics(dashboard: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in _panels(dashboard)}
    for title, metrics in REQUIRED_PANELS.items():
        assert title in by_title, f"missing panel {title!r}"
        read = set().union(*(raw_metrics_in(t["expr"]) for t in by_title[title]["targets"]))
        assert metrics <= read, f"{title!r} reads {read}, needs {metrics}"


def test_cpu_views_share_one_panel(dashboard: dict[str, Any]) -> None:
    """container, host and lxcfs on one panel: one query split by the view label."""
    (panel,) = [p for p in _panels(dashboard) if p["title"].startswith("CPU utilization")]
    assert any("{{view}}" in t["legendFormat"] and "view=" not in t["expr"] for t in panel["targets"])


def test_duration_quantiles_come_from_the_histogram(dashboard: dict[str, Any]) -> None:
    (panel,) = [p for p in _panels(dashboard) if p["title"] == "Request duration quantiles"]
    exprs = [t["expr"] for t in panel["targets"]]
    assert len(exprs) >= 3
    for e in exprs:
        assert e.startswith("histogram_quantile(") and "flowctl_request_duration_seconds_bucket" in e and " le)" in e


def test_every_query_is_well_formed(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "state-timeline", "table"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"]
            metrics = raw_metrics_in(t["expr"])
            assert metrics and metrics <= CONTRACT_METRICS, (panel["title"], metrics - CONTRACT_METRICS)
            # Every selector honours the instance variable.
            assert t["expr"].count("{") == t["expr"].count('instance=~"$instance"'), t["expr"]
            if "rate(" in t["expr"]:
                assert "[$__rate_interval]" in t["expr"], t["expr"]
            substitute(t["expr"], {"instance": ".*", "resource": ".*"})


def test_ids_unique_and_layout_fits(dashboard: dict[str, Any]) -> None:
    panels = list(iter_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps another panel at {(x, y)}"
                cells.add((x, y))


def test_panel_queries_cover_every_panel(dashboard: dict[str, Any]) -> None:
    queries = panel_queries(dashboard)
    assert {q.panel for q in queries} == {p["title"] for p in _panels(dashboard)}
