"""Smoke runs of the benchmark harness, so it cannot rot.

Each scenario runs for a few seconds and the tests check that the JSON has
every field and that the numbers are sane; never that a target is met (no
timing assertions). Scenarios that create cgroups need root and cgroup v1
(``tests.realenv`` gates); the load generator, the upstream app and the
report are also exercised without root.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bench.loadgen import SLOWEST_KEPT, WARMUP, LoadSpec, Phase, TrafficClass, run_load
from bench.upstream import HANDLERS, make_app
from tests.realenv import need, need_binary, need_cgroup_v1

REPO = Path(__file__).resolve().parents[2]

OVERLOAD_FIELDS = (
    "offered_rps", "capacity_rps", "goodput_rps", "goodput_ratio", "admitted_p99_ms", "unloaded_p99_ms",
    "rejected_p99_ms", "shed_ratio", "timeouts", "host_cpu_utilization_mean", "container_cpu_utilization_mean",
)  # fmt: skip
ALL_VARIANTS = ("none", "fixed", "bbr-host", "bbr-container", "bbr-lxcfs", "gradient", "sidecar-bbr-container")


def _sane_row(row: dict[str, Any]) -> None:
    for f in OVERLOAD_FIELDS:
        assert f in row, f"missing field {f}"
    assert row["offered_rps"] > 0
    assert row["capacity_rps"] > 0
    assert 0 <= row["goodput_rps"] <= row["offered_rps"] * 1.2
    assert row["goodput_ratio"] == pytest.approx(row["goodput_rps"] / row["capacity_rps"])
    assert 0.0 <= row["shed_ratio"] <= 1.0
    assert isinstance(row["timeouts"], int) and row["timeouts"] >= 0
    for f in ("admitted_p99_ms", "rejected_p99_ms"):
        assert row[f] is None or (row[f] > 0 and math.isfinite(row[f]))
    assert row["unloaded_p99_ms"] > 0
    for f in ("host_cpu_utilization_mean", "container_cpu_utilization_mean"):
        assert row[f] is not None and 0.0 <= row[f] <= 1.5
    assert row["sent"] == row["ok"] + row["rejected"] + row["timeouts"] + row["errors"] + row["other_status"]


def _run_bench(args: list[str], tmp_path: Path, timeout_s: float = 280) -> dict[str, Any]:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "bench", *args, "--json", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    data: dict[str, Any] = json.loads(out.read_text())
    assert (tmp_path / "result.md").exists()
    assert data["machine"]["cpus"] >= 1
    return data


# ---------------------------------------------------------------- no root needed


async def test_loadgen_counts_every_request_against_a_real_server() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def shed(request: web.Request) -> web.Response:
        return web.Response(status=503, text="no")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/shed", shed)
    async with TestServer(app) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        r = await run_load(LoadSpec(url=base + "/ok", rate_rps=200, duration_s=1.0, arrival="constant"))
        assert r["sent"] == r["ok"] == 199 or r["sent"] == r["ok"] == 200
        assert r["admitted_p99_ms"] is not None and r["admitted_p99_ms"] > 0
        assert sum(row["sent"] for row in r["timeline"]) == r["sent"]
        classes = (TrafficClass("critical", 0.5, (("X-Priority", "critical"),)), TrafficClass("sheddable", 0.5, ()))
        r2 = await run_load(LoadSpec(url=base + "/shed", rate_rps=100, duration_s=1.0, classes=classes))
        assert r2["rejected"] == r2["sent"] > 0 and r2["ok"] == 0
        assert r2["classes"]["critical"]["sent"] + r2["classes"]["sheddable"]["sent"] == r2["sent"]
        assert r2["shed_ratio"] == 1.0


async def test_loadgen_phases_count_each_phase_and_leave_warmup_out_of_measured() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    phases = (Phase(0.5, 1.0, WARMUP), Phase(0.5, 4.0, "burst"), Phase(0.5, 0.0, "idle"), Phase(0.5, 4.0, "burst"))
    classes = (TrafficClass("critical", 0.5, (("X-Priority", "critical"),)), TrafficClass("sheddable", 0.5, ()))
    async with TestServer(app) as srv:
        r = await run_load(LoadSpec(url=f"http://127.0.0.1:{srv.port}/", rate_rps=100, duration_s=2.0, arrival="constant",
                                    phases=phases, classes=classes))  # fmt: skip
    ph = r["phases"]
    assert set(ph) == {WARMUP, "burst", "idle"}
    assert 48 <= ph[WARMUP]["sent"] <= 50 and ph["idle"]["sent"] == 0
    assert 396 <= ph["burst"]["sent"] <= 400  # two 0.5 s phases at 400/s, summed under one label
    assert ph["burst"]["offered_rps"] == pytest.approx(ph["burst"]["sent"] / 1.0)
    assert r["measured"]["sent"] == ph["burst"]["sent"] == sum(cl["sent"] for cl in ph["burst"]["classes"].values())
    assert r["sent"] == ph[WARMUP]["sent"] + ph["burst"]["sent"]
    assert sum(r["answered_by_second"]) == r["ok"] == r["sent"]


async def test_loadgen_keeps_each_phases_slowest_admitted_requests_with_their_send_offsets() -> None:
    async def ok(request: web.Request) -> web.Response:
        if request.query.get("slow"):
            await asyncio.sleep(0.05)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    async with TestServer(app) as srv:
        r = await run_load(LoadSpec(url=f"http://127.0.0.1:{srv.port}/?slow=1", rate_rps=40, duration_s=0.5,
                                    arrival="constant"))  # fmt: skip
    slowest = r["phases"]["all"]["slowest"]
    assert len(slowest) == SLOWEST_KEPT
    assert all(0.0 <= off < 0.5 and ms >= 50.0 for off, ms in slowest)
    assert [ms for _, ms in slowest] == sorted((ms for _, ms in slowest), reverse=True)
    assert slowest[0][1] == r["admitted_max_ms"] or abs(slowest[0][1] - r["admitted_max_ms"]) < 0.1


async def test_loadgen_counts_timeouts_from_intended_send_time() -> None:
    async def slow(request: web.Request) -> web.Response:
        import asyncio

        await asyncio.sleep(1.0)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/", slow)
    async with TestServer(app) as srv:
        r = await run_load(LoadSpec(url=f"http://127.0.0.1:{srv.port}/", rate_rps=20, duration_s=0.5, timeout_s=0.2))
        assert r["timeouts"] == r["sent"] > 0
        assert r["ok"] == 0


@pytest.mark.parametrize("handler", sorted(HANDLERS))
async def test_upstream_handlers_answer(handler: str) -> None:
    app = make_app("none", work_iters=1000, io_ms=1, io_bound_ms=1)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get(HANDLERS[handler])
        assert resp.status == 200
        state = await (await client.get("/_bench/state")).json()
        assert state["variant"] == "none"


@pytest.mark.parametrize("variant", ["fixed", "bbr-host", "bbr-container", "gradient", "flowctl", "kratos", "kratos-host"])
async def test_upstream_variants_expose_limiter_state(variant: str) -> None:
    app = make_app(variant, work_iters=1000, io_ms=1, io_bound_ms=1)
    async with TestClient(TestServer(app)) as client:
        for path in HANDLERS.values():
            assert (await client.get(path)).status in (200, 503)
        state = await (await client.get("/_bench/state")).json()
        snap = state["snapshot"]
        assert snap["inflight"] == 0
        assert "max_inflight" in snap


async def test_upstream_holds_websockets_and_sse_streams() -> None:
    app = make_app("flowctl", work_iters=1000, io_ms=1, io_bound_ms=1)
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect("/ws")
        await ws.send_str("ping")
        assert (await ws.receive_str()) == "ping"
        resp = await client.get("/sse")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        assert (await resp.content.readuntil(b"\n\n")) == b"data: tick\n\n"
        resp.close()
        await ws.close()


def test_report_renders_synthetic_overload(tmp_path: Path) -> None:
    from bench import report

    row: dict[str, object] = {f: 1.0 for f in OVERLOAD_FIELDS}
    row.update(variant="none", timeouts=0, admitted_p99_over_unloaded=1.0, timeline=[
        {"t_s": 0, "sent": 1, "good": 1, "rejected": 0, "timeouts": 0, "errors": 0, "admitted_p99_ms": 2.0}],
        samples=[{"t_s": 0.5, "host_cpu_utilization": 0.3, "container_cpu_utilization": 0.9, "inflight": 1, "max_inflight": 2}],
        loadgen={"send_lag_p99_ms": 1.0, "cpu_cores": 0.1, "affinity": [1]})  # fmt: skip
    data = {"scenario": "overload", "cpus": 0.5, "seconds": 1, "machine": {"cpus": 2},
            "by_handler": {"blocking": {"capacity": {"capacity_rps": 1.0, "unloaded_p99_ms": 1.0},
                                        "runs": [{"multiplier": m, "rate_rps": m, "variants": {"none": dict(row)}} for m in (1.0, 4.0)]}}}  # fmt: skip
    p = tmp_path / "o.json"
    p.write_text(json.dumps(data))
    files = report.report_file(str(p))
    assert all(os.path.getsize(f) > 0 for f in files)
    assert any(f.endswith("-sweep-blocking.png") for f in files)


def _run_middleware_overhead(args: list[str], tmp_path: Path) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "mw.json"
    proc = subprocess.run([sys.executable, "-m", "bench.middleware_overhead", *args, "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    data: dict[str, Any] = json.loads(out.read_text())
    return proc.stdout, data


def test_middleware_overhead_idle_reports_cpu_per_variant(tmp_path: Path) -> None:
    need(os.path.exists("/proc/self/stat"), "needs /proc (Linux)")
    stdout, data = _run_middleware_overhead(["--idle", "1", "--variants", "bare,flowctl"], tmp_path)
    assert data["mode"] == "idle" and data["seconds"] == 1
    assert set(data["idle"]) == {"bare", "flowctl"}
    for v, r in data["idle"].items():
        assert r["wall_s"] >= 1.0
        assert 0.0 <= r["cores"] <= (os.cpu_count() or 1)
        assert r["cores"] == pytest.approx(r["cpu_s"] / r["wall_s"])
        assert f"idle {v} " in stdout and "of a core" in stdout


@pytest.mark.real
@pytest.mark.slow
def test_middleware_overhead_rate_sheds_every_request_of_the_shed_variants(tmp_path: Path) -> None:
    need_binary("taskset", "util-linux")
    need({0, 1} <= os.sched_getaffinity(0), "--rate needs CPUs 0 and 1")
    stdout, data = _run_middleware_overhead(["--rate", "100", "--variants", "bare,flowctl_shed,bare_shed", "--rounds", "1",
                                             "--duration", "1", "--idle-window", "0.2"], tmp_path)  # fmt: skip
    assert data["mode"] == "rate" and data["variants"] == ["bare", "flowctl_shed", "bare_shed"]
    runs = {r["variant"]: r for r in data["runs"]}
    assert runs["bare"]["ok"] == runs["bare"]["answers"] > 0 and runs["bare"]["shed"] == 0
    for v in ("flowctl_shed", "bare_shed"):  # every answer a 503, none a 2xx
        assert runs[v]["shed"] == runs[v]["answers"] > 0 and runs[v]["ok"] == 0
    for r in runs.values():
        assert r["cpu_us_per_answer"] == pytest.approx(r["cpu_s"] / r["answers"] * 1e6)
    assert "CPU/answer" in stdout


@pytest.mark.real
@pytest.mark.slow
def test_middleware_overhead_paired_smoke(tmp_path: Path) -> None:
    need_binary("wrk")
    need_binary("taskset", "util-linux")
    need({0, 1} <= os.sched_getaffinity(0), "--paired needs CPUs 0 and 1")
    stdout, data = _run_middleware_overhead(["--paired", "--variants", "bare,flowctl_middleware", "--rounds", "2",
                                             "--duration", "1"], tmp_path)  # fmt: skip
    assert data["mode"] == "paired" and data["variants"] == ["bare", "flowctl_middleware"]
    runs = data["runs"]
    assert [r["round"] for r in runs] == [1, 2]
    assert [r["first"] for r in runs] == ["bare", "flowctl_middleware"]  # the server started first alternates
    for r in runs:
        for side in ("a", "b"):
            assert r[f"requests_per_s_{side}"] > 0
            assert r[f"server_cpu_us_per_request_{side}"] is None or r[f"server_cpu_us_per_request_{side}"] >= 0
            assert r[f"non_2xx_{side}"] >= 0
        assert r["ratio"] == pytest.approx(r["requests_per_s_b"] / r["requests_per_s_a"])
    assert data["median_ratio"] == pytest.approx(sum(r["ratio"] for r in runs) / 2)
    assert set(data["medians"]) == {"bare", "flowctl_middleware"}
    assert stdout.count("ratio ") == 3 and "median ratio flowctl_middleware/bare over 2 rounds" in stdout


# ---------------------------------------------------------------- real cgroups (root)


@pytest.mark.real
@pytest.mark.slow
def test_overload_smoke_every_variant(tmp_path: Path) -> None:
    need_cgroup_v1("cpu", "cpuacct", "cpuset")
    need_binary("lxcfs")
    data = _run_bench(["overload", "--seconds", "2", "--warmup", "0.5", "--handler", "blocking", "--probe-seconds", "1",
                       "--multiplier", "2", "--variants", ",".join(ALL_VARIANTS)], tmp_path)  # fmt: skip
    assert data["scenario"] == "overload"
    assert set(data["variants"]) == set(ALL_VARIANTS)
    cap = data["capacity"]
    assert cap["capacity_rps"] > 0 and cap["unloaded_p99_ms"] > 0 and cap["probes"]
    for row in data["variants"].values():
        _sane_row(row)
        assert row["limit_cores"] == pytest.approx(0.5)
    assert (tmp_path / "result-timeseries-blocking.png").exists()


@pytest.mark.real
@pytest.mark.slow
def test_step_smoke(tmp_path: Path) -> None:
    need_cgroup_v1("cpu", "cpuacct", "cpuset")
    need_binary("nginx")
    data = _run_bench(["step", "--seconds", "4", "--step-at", "2", "--warmup", "0.5", "--capacity-before-rps", "100",
                       "--capacity-after-rps", "50", "--unloaded-p99-ms", "10", "--nginx-candidates", "2,4",
                       "--probe-seconds", "1", "--peers", "nginx-limit-conn,sidecar-bbr-container,bbr-container"], tmp_path)  # fmt: skip
    assert data["scenario"] == "step"
    assert data["nginx_limit_conn"] in (2, 4)
    for name, row in data["variants"].items():
        _sane_row(row)
        assert "recovery_s" in row and (row["recovery_s"] is None or row["recovery_s"] >= 0)
        limits = [s["limit_cores"] for s in row["samples"] if s.get("limit_cores") is not None]
        assert limits[0] == pytest.approx(1.0) and limits[-1] == pytest.approx(0.5), name  # the quota really changed


@pytest.mark.real
@pytest.mark.slow
def test_priority_smoke(tmp_path: Path) -> None:
    need_cgroup_v1("cpu", "cpuacct", "cpuset")
    data = _run_bench(["priority", "--seconds", "2", "--warmup", "0.5", "--handler", "yielding", "--capacity-rps", "60",
                       "--unloaded-p99-ms", "10"], tmp_path)  # fmt: skip
    assert data["scenario"] == "priority"
    for row in data["variants"].values():
        _sane_row(row)
        assert set(row["classes"]) == {"critical", "sheddable"}
        assert 0 <= row["critical_goodput_ratio"] <= 1.2


@pytest.mark.real
@pytest.mark.slow
def test_overhead_smoke(tmp_path: Path) -> None:
    need_binary("wrk")
    need_binary("nginx")
    data = _run_bench(["overhead", "--seconds", "1", "--rounds", "1"], tmp_path)
    assert data["scenario"] == "overhead"
    assert set(data["parts"]) == {"middleware", "sidecar"}
    assert all(part.get("exit_code") == 0 for part in data["parts"].values())


SCORECARD_ROW_FIELDS = {"scenario", "variant", "metric", "value", "target", "better", "pass", "k", "n", "interval"}


@pytest.mark.real
@pytest.mark.slow
def test_scorecard_quick_writes_rows_for_every_scenario(tmp_path: Path) -> None:
    need_cgroup_v1("cpu", "cpuacct", "cpuset")
    out = tmp_path / "scorecard.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "scorecard", "--quick", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["quick"] is True and data["machine"]["cpus"] >= 1 and data["started"]
    assert set(data["scenarios"]) == {"false_shed", "overload", "tight_quota", "gil_quota", "bursts", "step", "priority", "long_lived"}
    assert {r["scenario"] for r in data["rows"]} == set(data["scenarios"])
    for row in data["rows"]:
        assert SCORECARD_ROW_FIELDS <= set(row), row
        assert row["better"] in ("lower", "higher")
        assert row["n"] is not None and row["n"] >= 0  # what it was measured on
        if row["metric"].startswith("shed_ratio") or row["metric"].startswith("critical"):
            assert row["k"] is not None and 0 <= row["k"] <= row["n"] and len(row["interval"]) == 2
        assert isinstance(row["pass"], bool)
        assert row["value"] is None or math.isfinite(row["value"])
        if row["value"] is None:
            assert row["pass"] is False
        else:
            assert row["pass"] == (row["value"] <= row["target"] if row["better"] == "lower" else row["value"] >= row["target"]) \
                or row["metric"].startswith("sheddable")  # strict ">" there
    from bench.scenarios.scorecard import OURS

    assert {r["variant"] for r in data["rows"]} == set(OURS)  # --quick runs flowctl's variants (the haproxy engine too)
    for ref in data["references"].values():
        assert ref["capacity_rps"] > 0 and ref["unloaded_p99_ms"] > 0 and ref["saturation_rps"] >= 0
    bounded = [r for r in data["rows"] if r["variant"] == "flowctl-inprocess" and r["metric"].startswith("goodput")]
    assert bounded and all(r["bound"] is not None and r["bound"] >= 0 for r in bounded)  # measured in this run
    for run in data["runs"]:
        assert "warmup" in run["phases"] and run["measured"]["sent"] > 0
    assert (tmp_path / "scorecard.png").stat().st_size > 0
    assert "flowctl rows passing" in proc.stdout


def test_the_in_process_bound_counts_every_shed_at_the_cheapest_answers_cost() -> None:
    from bench.scenarios.common import Capacity
    from bench.scenarios.scorecard import Reference, _bound_note

    cap = Capacity(capacity_rps=60.0, unloaded_p99_ms=8.0, unloaded_p50_ms=4.0, probes=[], cpus=0.3, handler="blocking")
    # 0.3 cores, 0.01 idle: a completion costs 0.29 / 100 = 2.9 ms; a shed at least 0.5 ms
    ref = Reference(0.3, 2.0, "blocking", cap, 100.0, [], idle_cores=0.01, answer_cpu_ms=0.5)
    # offered 240/s: N x 2.9 ms + (240 - N) x 0.5 ms <= 290 ms per second -> N <= 70.8
    assert ref.in_process_bound(240.0) == pytest.approx(170.0 / 2.4 / 100.0)
    assert ref.in_process_bound(100.0) == pytest.approx((0.29 - 0.05) / 0.0024 / 100.0)  # 1.0: no shed needed
    assert Reference(0.3, 2.0, "blocking", cap, 100.0, []).in_process_bound(240.0) is None  # not measured
    row = {"target": 0.75, "bound": 0.708}
    assert _bound_note(row) == "0.71" and _bound_note({**row, "bound": 0.8}) == "" and _bound_note({"target": 0.75}) == ""
    # a failing row carries its bound even where the target is within it (0.74 of saturation, bound 0.78)
    assert _bound_note({**row, "bound": 0.782, "pass": False}) == "0.78"
    assert _bound_note({**row, "bound": 0.782, "pass": True}) == ""
