"""The dashboard, recording rules and alerts against a real Prometheus scraping a real sidecar.

Debian's ``prometheus`` runs on loopback with a temporary config and data
dir, scraping every second: the sidecar's admin listener and the upstream
app's own ``/metrics`` (``flowctl.aiohttp``). The upstream runs in a real
cgroup limited to 0.5 CPU (``flowctl.workload.launch``) and burns CPU per
request; the sidecar watches that process (``--watch pid:N``) and sheds when
its container CPU saturates. Under that load, through the HTTP API:

- every query of every dashboard panel returns series (variables set to All);
- every recording rule produces series, and no rule fails to evaluate;
- ``FlowctlSustainedShedding`` from the shipped rules.yml (unchanged, real
  ``for: 10m``) is pending or firing: an alert is pending as soon as its
  expression holds, so no test-only copy of the rules is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.deploy.artifacts import (
    RULES,
    ROOT,
    alerts,
    load_dashboard,
    load_rules,
    panel_queries,
    recordings,
    substitute,
)
from tests.realenv import need_binary, need_cgroup_v1
from bench.ports import free_port
from bench.redis_server import RedisServer

pytestmark = [pytest.mark.real, pytest.mark.slow]

UPSTREAM_CPUS = 0.5
CLIENTS = 24
RATE_INTERVAL = "15s"  # what $__rate_interval becomes; Grafana uses >= 4 x the 1 s scrape interval
DEADLINE_S = 120.0


async def _wait_http(session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process | None, what: str) -> None:
    """Poll ``url`` until it answers 200 (fails early if ``proc`` exits)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc is not None and proc.returncode is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not ready at {url}")


@contextlib.asynccontextmanager
async def _process(*cmd: str, log: Path, what: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``cmd`` with output to ``log``; on exit SIGTERM it, then SIGKILL, and always wait for it."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=out, stderr=asyncio.subprocess.STDOUT, cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def _api(session: aiohttp.ClientSession, base: str, path: str, **params: str) -> Any:
    async with session.get(base + path, params=params) as r:
        body = await r.json()
        assert r.status == 200 and body["status"] == "success", (path, params, body)
        return body["data"]


async def _load(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, statuses: dict[int, int]) -> None:
    """One closed-loop client: GET ``url`` until ``stop``; count status codes."""
    while not stop.is_set():
        try:
            async with session.get(url) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            statuses[0] = statuses.get(0, 0) + 1
            await asyncio.sleep(0.05)


def _prometheus_config(tmp: Path, sidecar_admin: str, upstream: str) -> Path:
    config = tmp / "prometheus.yml"
    config.write_text(
        f"""global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: flowctl-sidecar
    static_configs:
      - targets: ["{sidecar_admin}"]
  - job_name: flowctl-app
    static_configs:
      - targets: ["{upstream}"]
"""
    )
    return config


async def test_dashboard_rules_and_alerts_on_real_prometheus(tmp_path: Path) -> None:
    prometheus = need_binary("prometheus")
    need_cgroup_v1("cpu", "cpuacct")
    from flowctl.workload import launch

    up_port, proxy_port, admin_port, prom_port = (free_port() for _ in range(4))
    prom = f"http://127.0.0.1:{prom_port}"
    config = _prometheus_config(tmp_path, f"127.0.0.1:{admin_port}", f"127.0.0.1:{up_port}")
    dashboard = load_dashboard()
    rules = load_rules()
    statuses: dict[int, int] = {}
    stop = asyncio.Event()

    upstream_cmd = [sys.executable, "-m", "tests.deploy.live_upstream", "--port", str(up_port)]
    # The sidecar's quota (never binding) goes through a real Redis, so the quota panels have data.
    redis = RedisServer(need_binary("redis-server", "redis-server"))
    with redis, (tmp_path / "upstream.log").open("wb") as up_log:
        async with (
            aiohttp.ClientSession() as session,
            launch(upstream_cmd, cpus=UPSTREAM_CPUS, name=f"flowctl-test-{os.urandom(4).hex()}",
                   stdout=up_log, stderr=up_log, cwd=str(ROOT)) as upstream,
        ):  # fmt: skip
            await _wait_http(session, f"http://127.0.0.1:{up_port}/healthz", None, "upstream")
            sidecar_cmd = [
                sys.executable, "-m", "sidecar",
                f"--listen=127.0.0.1:{proxy_port}", f"--upstream=http://127.0.0.1:{up_port}",
                f"--admin=127.0.0.1:{admin_port}", f"--watch=pid:{upstream.pid}",
                "--health-path=/healthz", "--probe-interval=0.5", "--drain-seconds=2",
                "--quota=key=const:all,rate=1000000/s", f"--quota-store={redis.url}",
            ]  # fmt: skip
            prom_cmd = [
                prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn",
            ]  # fmt: skip
            async with (
                _process(*sidecar_cmd, log=tmp_path / "sidecar.log", what="sidecar") as sidecar,
                _process(*prom_cmd, log=tmp_path / "prometheus.log", what="prometheus") as prom_proc,
            ):
                try:
                    await _wait_http(session, f"http://127.0.0.1:{admin_port}/readyz", sidecar, "sidecar")
                    await _wait_http(session, f"{prom}/-/ready", prom_proc, "prometheus")
                    clients = [
                        asyncio.create_task(_load(session, f"http://127.0.0.1:{proxy_port}/work", stop, statuses))
                        for _ in range(CLIENTS)
                    ]
                    try:
                        await _check_while_shedding(session, prom, dashboard, rules, statuses)
                    finally:
                        stop.set()
                        await asyncio.gather(*clients)
                except BaseException:
                    for name in ("sidecar.log", "prometheus.log", "upstream.log"):
                        sys.stderr.write(f"--- {name} ---\n{(tmp_path / name).read_text(errors='replace')[-4000:]}\n")
                    raise
    assert statuses.get(503, 0) > 0 and statuses.get(200, 0) > 0, statuses


async def _check_while_shedding(
    session: aiohttp.ClientSession, prom: str, dashboard: dict[str, Any], rules: dict[str, Any], statuses: dict[int, int]
) -> None:
    deadline = time.monotonic() + DEADLINE_S

    # Both targets up, then the sidecar sheds (seen by Prometheus), then the alert is at least pending.
    async def until(description: str, check: Any) -> Any:
        while True:
            result = await check()
            if result:
                return result
            assert time.monotonic() < deadline, f"timed out waiting for {description}; client statuses {statuses}"
            await asyncio.sleep(1)

    async def targets_up() -> bool:
        data = await _api(session, prom, "/api/v1/targets")
        return len(data["activeTargets"]) == 2 and all(t["health"] == "up" for t in data["activeTargets"])

    async def sidecar_shed() -> list[Any]:
        q = 'flowctl_requests_total{job="flowctl-sidecar", outcome="shed"} > 0'
        result: list[Any] = (await _api(session, prom, "/api/v1/query", query=q))["result"]
        return result

    async def shedding_alert() -> list[dict[str, Any]]:
        data = await _api(session, prom, "/api/v1/alerts")
        # The app behind the sidecar (flowctl in-process, throttled) may shed and alert too: pick the sidecar's.
        return [
            a
            for a in data["alerts"]
            if a["labels"]["alertname"] == "FlowctlSustainedShedding"
            and a["labels"].get("job") == "flowctl-sidecar"
            and a["state"] in ("pending", "firing")
        ]

    await until("both scrape targets up", targets_up)
    await until("the sidecar to shed", sidecar_shed)
    (alert, *_) = await until("FlowctlSustainedShedding pending or firing", shedding_alert)
    assert alert["labels"]["job"] == "flowctl-sidecar" and alert["labels"]["severity"] == "warning"
    print(f"FlowctlSustainedShedding {alert['state']}: shed ratio {float(alert['value']):.2f}, client statuses so far {statuses}")

    # The sidecar reads the watched app's cgroup budget, not its own or the machine's.
    limit = (await _api(session, prom, "/api/v1/query", query='flowctl_cpu_limit_cores{job="flowctl-sidecar"}'))["result"]
    assert [float(s["value"][1]) for s in limit] == [pytest.approx(UPSTREAM_CPUS)], limit

    # Every recording rule has evaluated without error and produced series.
    groups = (await _api(session, prom, "/api/v1/rules"))["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == set(recordings(rules)) | set(alerts(rules))
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    for name in recordings(rules):
        series = (await _api(session, prom, "/api/v1/query", query=name))["result"]
        assert series, f"recording rule {name} produced no series"

    # The dashboard variables resolve to the two targets and the resources.
    instances = await _api(session, prom, "/api/v1/label/instance/values", **{"match[]": "flowctl_max_inflight"})
    assert len(instances) == 2, instances
    resources = await _api(session, prom, "/api/v1/label/resource/values", **{"match[]": "flowctl_requests_total"})
    assert resources, resources

    # Every panel query returns series over the last 20 s, as Grafana would ask for them.
    end = time.time()
    empty = []
    for q in panel_queries(dashboard):
        expr = substitute(q.expr, {"instance": ".*", "resource": ".*"}, rate_interval=RATE_INTERVAL)
        data = await _api(session, prom, "/api/v1/query_range", query=expr, start=str(end - 20), end=str(end), step="1")
        if not data["result"]:
            empty.append(f"{q.panel} [{q.ref_id}]: {expr}")
        print(f"{len(data['result']):3d} series  {q.panel} [{q.ref_id}]")
    assert not empty, "panel queries with no data:\n" + "\n".join(empty)

    # The shed panel shows a non-zero shed rate for the sidecar's resource.
    shed_expr = substitute(panel_queries(dashboard)[0].expr, {"instance": ".*", "resource": ".*"}, rate_interval=RATE_INTERVAL)
    shed = [s for s in (await _api(session, prom, "/api/v1/query", query=shed_expr))["result"] if s["metric"]["outcome"] == "shed"]
    assert shed and max(float(s["value"][1]) for s in shed) > 0, shed
