"""``python -m bench step``: halve the upstream's CPU quota mid-run under a steady load.

The upstream starts at ``--cpus-before`` (1.0) and at ``--step-at`` seconds
its group's quota is rewritten to ``--cpus-after`` (0.5) with
``LimitedProcess.set_cpus``. The load is ``--load`` (1.5) times the capacity
*after* the step, so the service is healthy before and overloaded after.
Measured: how long until the admitted p99 (per 1 s window, by intended send
time) stays under its bound (4x the unloaded p99) for the rest of the run.

Peers: ``nginx-limit-conn`` (nginx with ``limit_conn`` hand-tuned at the
pre-step quota: the best a static config can do), ``sidecar-bbr-container``
(the flowctl sidecar), ``bbr-container`` (in-process middleware), ``none``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bench.scenarios import common as c
from bench.upstream import HANDLERS

PEERS = ("nginx-limit-conn", "sidecar-bbr-container", "bbr-container", "none")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench step", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--step-at", type=float, default=10.0, help="offset of the quota change (s)")
    p.add_argument("--cpus-before", type=float, default=1.0)
    p.add_argument("--cpus-after", type=float, default=0.5)
    p.add_argument("--load", type=float, default=1.5, help="offered load as a multiple of the post-step capacity")
    p.add_argument("--peers", default="nginx-limit-conn,sidecar-bbr-container,bbr-container")
    p.add_argument("--handler", default="blocking", choices=tuple(HANDLERS))
    p.add_argument("--work-ms", type=float, default=5.0)
    p.add_argument("--work-iters", type=int, help="burn() iterations per request (default: calibrate --work-ms now)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--probe-seconds", type=float, default=4.0)
    p.add_argument("--capacity-before-rps", type=float)
    p.add_argument("--capacity-after-rps", type=float)
    p.add_argument("--unloaded-p99-ms", type=float)
    p.add_argument("--nginx-limit-conn", type=int, help="skip tuning and use this limit_conn")
    p.add_argument("--nginx-candidates", default="1,2,3,4,6,8,12")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--json", dest="json_out", default=os.path.join(c.RESULTS_DIR, "step.json"))
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no per-second progress line")
    return p


@contextlib.asynccontextmanager
async def front(peer: str, up: c.Running, limit_conn: int) -> AsyncIterator[c.Running]:
    """What the load hits for ``peer``: nginx, the sidecar, or the upstream itself."""
    if peer == "nginx-limit-conn":
        from bench.nginx import run_nginx

        port = c.free_port()
        host = up.upstream_url.removeprefix("http://")
        aux = c.aux_cpus()
        async with run_nginx(port, host, limit_conn, cpu=aux[0] if aux else None) as url:
            await c.wait_http(url + "/healthz")
            yield c.Running(url, up.upstream_url, up.state_url, "upstream", up.pid, up.workload, up.cgroup_paths)
    elif peer.startswith("sidecar-"):
        async with c.sidecar(up) as sc:
            yield sc
    else:
        yield up


def recovery(timeline: list[dict[str, Any]], step_at: float, seconds: float, bound_ms: float) -> float | None:
    """Seconds from the step until every later full 1 s window has admitted p99 <= bound; None if never."""
    full = [row for row in timeline if row["t_s"] + 1 <= seconds]
    after = [row for row in full if row["t_s"] >= int(step_at)]
    if not after:
        return None
    last_bad = None
    for row in after:
        p99 = row.get("admitted_p99_ms")
        if (p99 is not None and p99 > bound_ms) or row.get("timeouts", 0) > 0:
            last_bad = row["t_s"]
    if last_bad is None:
        return 0.0
    if last_bad >= full[-1]["t_s"]:
        return None
    return float(last_bad + 1 - step_at)


def _window_stats(timeline: list[dict[str, Any]], lo: float, hi: float) -> dict[str, Any]:
    rows = [r for r in timeline if lo <= r["t_s"] < hi]
    n = max(1, len(rows))
    sent = sum(r["sent"] for r in rows)
    p99s = [r["admitted_p99_ms"] for r in rows if r.get("admitted_p99_ms") is not None]
    return {
        "p99_max_ms": max(p99s) if p99s else None,
        "goodput_rps": sum(r["good"] for r in rows) / n,
        "shed_ratio": sum(r["rejected"] for r in rows) / sent if sent else None,
        "timeouts": sum(r["timeouts"] for r in rows),
    }


async def tune_nginx(a: argparse.Namespace, iters: int, cap_before: c.Capacity, bound_ms: float) -> tuple[int, list[dict[str, Any]]]:
    """Pick limit_conn at the pre-step quota: best goodput at 1.5x capacity with p99 under the bound."""
    rate = 1.5 * cap_before.capacity_rps
    rows = []
    async with c.upstream("none", cpus=a.cpus_before, work_iters=iters) as up:
        for n in [int(x) for x in a.nginx_candidates.split(",")]:
            async with front("nginx-limit-conn", up, n) as fr:
                lg, _ = await c.drive(fr, HANDLERS[a.handler], rate, a.probe_seconds, timeout_s=a.timeout)
            row = {"limit_conn": n, "goodput_rps": lg["goodput_rps"], "admitted_p99_ms": lg["admitted_p99_ms"],
                   "shed_ratio": lg["shed_ratio"], "timeouts": lg["timeouts"]}  # fmt: skip
            rows.append(row)
            c.log(f"  nginx limit_conn {n:3d} at {rate:.0f} rps: goodput {lg['goodput_rps']:.1f}/s, p99 {lg['admitted_p99_ms']} ms, shed {lg['shed_ratio']:.2f}")
            await asyncio.sleep(0.5)
    ok = [r for r in rows if r["admitted_p99_ms"] is not None and r["admitted_p99_ms"] <= bound_ms and r["timeouts"] == 0]
    best = max(ok, key=lambda r: r["goodput_rps"]) if ok else min(rows, key=lambda r: r["admitted_p99_ms"] or float("inf"))
    return int(best["limit_conn"]), rows


async def run(a: argparse.Namespace) -> dict[str, Any]:
    c.pin_self()
    peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    for p in peers:
        if p not in PEERS:
            raise SystemExit(f"unknown peer {p!r}; choose from {', '.join(PEERS)}")
    c.check_environment(nginx="nginx-limit-conn" in peers)
    machine = c.machine_info()
    iters = a.work_iters or c.calibrate_work_iters(a.work_ms)
    path = HANDLERS[a.handler]
    c.log(f"step: {a.cpus_before} -> {a.cpus_after} CPU at {a.step_at:g} s of {a.seconds:g} s, peers {peers}, handler {a.handler}; "
          f"load average {machine['loadavg']}")  # fmt: skip
    if a.capacity_before_rps:
        cap_before = c.Capacity(a.capacity_before_rps, a.unloaded_p99_ms or 1.0, 0.0, [], a.cpus_before, a.handler)
    else:
        async with c.upstream("none", cpus=a.cpus_before, work_iters=iters) as up:
            cap_before = await c.measure_capacity(up, path, cpus=a.cpus_before, work_ms=a.work_ms, handler=a.handler, probe_s=a.probe_seconds)
    if a.capacity_after_rps:
        cap_after = c.Capacity(a.capacity_after_rps, a.unloaded_p99_ms or cap_before.unloaded_p99_ms, 0.0, [], a.cpus_after, a.handler)
    else:
        async with c.upstream("none", cpus=a.cpus_after, work_iters=iters) as up:
            cap_after = await c.measure_capacity(up, path, cpus=a.cpus_after, work_ms=a.work_ms, handler=a.handler, probe_s=a.probe_seconds)
    bound_ms = 4.0 * cap_after.unloaded_p99_ms
    rate = a.load * cap_after.capacity_rps
    limit_conn = a.nginx_limit_conn
    tuning: list[dict[str, Any]] = []
    if "nginx-limit-conn" in peers and limit_conn is None:
        c.log("tuning nginx limit_conn at the pre-step quota ...")
        limit_conn, tuning = await tune_nginx(a, iters, cap_before, bound_ms)
        c.log(f"nginx limit_conn = {limit_conn}")
    out: dict[str, Any] = {
        "scenario": "step", "machine": machine, "handler": a.handler, "seconds": a.seconds, "step_at_s": a.step_at,
        "cpus_before": a.cpus_before, "cpus_after": a.cpus_after, "load_multiplier": a.load, "rate_rps": rate,
        "capacity_before": cap_before.as_dict(), "capacity_after": cap_after.as_dict(), "bound_ms": bound_ms,
        "bound": "admitted p99 per 1 s window <= 4x unloaded p99 (post-step quota), and no timeouts",
        "nginx_limit_conn": limit_conn, "nginx_tuning": tuning, "work_iters": iters, "variants": {},
    }  # fmt: skip
    for peer in peers:
        c.log(f"step peer {peer}: {rate:.0f} rps, quota {a.cpus_before} -> {a.cpus_after} at {a.step_at:g} s ...")
        in_process = peer if peer in ("bbr-container",) else "none"
        async with c.upstream(in_process, cpus=a.cpus_before, work_iters=iters) as up:
            async with front(peer, up, limit_conn or 1) as fr:
                if a.warmup > 0:
                    await c.drive(fr, path, rate, a.warmup, timeout_s=a.timeout, seed=7)
                w = up.workload
                lg, samples = await c.drive(fr, path, rate, a.seconds, progress=a.progress, timeout_s=a.timeout,
                                            at_offset=[(a.step_at, lambda: w.set_cpus(a.cpus_after))])  # fmt: skip
        row = c.variant_row(peer, lg, samples, capacity_rps=cap_after.capacity_rps, unloaded_p99_ms=cap_after.unloaded_p99_ms,
                            seconds=a.seconds)  # fmt: skip
        tl = lg["timeline"]
        step_s = lg["events_at_s"][0] if lg.get("events_at_s") else a.step_at  # when the quota really changed
        before = _window_stats(tl, max(0.0, step_s - 5), step_s)
        after = _window_stats(tl, step_s, a.seconds)
        tail = _window_stats(tl, max(step_s, a.seconds - 10), a.seconds)
        row.update({
            "step_at_actual_s": step_s,
            "recovery_s": recovery(tl, step_s, a.seconds, bound_ms),
            "p99_before_ms": before["p99_max_ms"], "goodput_before_rps": before["goodput_rps"],
            "p99_after_tail_ms": tail["p99_max_ms"], "goodput_after_rps": after["goodput_rps"],
            "shed_ratio_after": after["shed_ratio"], "timeouts_after": after["timeouts"],
        })  # fmt: skip
        out["variants"][peer] = row
        rec = row["recovery_s"]
        c.log(f"  {peer:22s} recovery {'never' if rec is None else f'{rec:.0f} s'}; p99 before {row['p99_before_ms']} ms, "
              f"last 10 s max {row['p99_after_tail_ms']} ms (bound {bound_ms:.1f}); goodput after {row['goodput_after_rps']:.1f}/s, "
              f"shed after {row['shed_ratio_after']}, timeouts {row['timeouts']}")  # fmt: skip
    out["machine"]["loadavg_after"] = list(os.getloadavg())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return c.run_scenario("step", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
