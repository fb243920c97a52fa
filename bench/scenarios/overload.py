"""``python -m bench overload``: every variant at multiples of the measured capacity.

The upstream runs with a CFS quota (default 0.5 CPU) on CPU 0. For each
handler kind: measure capacity on the unprotected upstream (highest rate
with p99 under 3x the unloaded p99), then for each multiplier and variant
start a fresh upstream, warm it at 0.5x capacity, and drive the open-loop
load. Writes one JSON (``variants`` = the last multiplier's rows of the first
handler, the headline), a Markdown table and PNG plots.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from bench.scenarios import common as c
from bench.upstream import HANDLERS

DEFAULT_VARIANTS = ("none", "fixed", "bbr-host", "bbr-container", "bbr-lxcfs", "gradient", "sidecar-bbr-container")


def build_parser(prog: str = "python -m bench overload") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per variant and multiplier")
    p.add_argument("--sweep-seconds", type=float, help="seconds for every multiplier but the last (default: --seconds)")
    p.add_argument("--multiplier", default="4", help="comma list of multiples of capacity, e.g. 0.5,1,2,4")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--handler", default="blocking,yielding", help="comma list of: " + ",".join(HANDLERS))
    p.add_argument("--cpus", type=float, default=0.5, help="the upstream's CPU quota")
    p.add_argument("--work-ms", type=float, default=5.0)
    p.add_argument("--work-iters", type=int, help="burn() iterations per request (default: calibrate --work-ms now)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at 0.5x capacity before each measured run")
    p.add_argument("--capacity-rps", type=float, help="skip the capacity search (needs --unloaded-p99-ms)")
    p.add_argument("--unloaded-p99-ms", type=float)
    p.add_argument("--capacity-from", help="reuse the capacities of an earlier result JSON when they match")
    p.add_argument("--probe-seconds", type=float, default=4.0, help="seconds per capacity probe")
    p.add_argument("--timeout", type=float, default=2.0, help="per-request timeout of the load generator (s)")
    p.add_argument("--no-loop-lag", action="store_true", help="in-process BBR variants without the event-loop lag trigger")
    p.add_argument("--json", dest="json_out", default=os.path.join(c.RESULTS_DIR, "overload.json"))
    p.add_argument("--no-report", action="store_true", help="skip Markdown and PNG output")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no per-second progress line")
    return p


async def _run_variant(
    variant: str, handler: str, rate: float, a: argparse.Namespace, iters: int, cap: c.Capacity, mult: float, seconds: float
) -> dict[str, Any]:
    path = HANDLERS[handler]
    sidecar = c.SIDECAR_VARIANTS.get(variant)
    in_process = variant if sidecar is None else "none"
    extra = ["--no-loop-lag"] if a.no_loop_lag else []
    async with c.upstream(in_process, cpus=a.cpus, work_iters=iters, lxcfs=variant in c.LXCFS_VARIANTS,
                          extra_args=extra) as up:  # fmt: skip
        if sidecar is not None:
            view, options = sidecar
            async with c.sidecar(up, view=view, extra_args=options) as sc:
                return await _measure(sc, variant, path, rate, a, cap, mult, seconds)
        return await _measure(up, variant, path, rate, a, cap, mult, seconds)


async def _measure(
    run: c.Running, variant: str, path: str, rate: float, a: argparse.Namespace, cap: c.Capacity, mult: float, seconds: float
) -> dict[str, Any]:
    if a.warmup > 0:
        await c.drive(run, path, 0.5 * cap.capacity_rps, a.warmup, timeout_s=a.timeout, seed=7)
    lg, samples = await c.drive(run, path, rate, seconds, progress=a.progress, timeout_s=a.timeout)
    row = c.variant_row(variant, lg, samples, capacity_rps=cap.capacity_rps, unloaded_p99_ms=cap.unloaded_p99_ms,
                        seconds=seconds, multiplier=mult)  # fmt: skip
    row["seconds"] = seconds
    return row


def verdicts(row: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged on one row (None where a target does not apply)."""
    v = row["variant"]
    ratio = row.get("admitted_p99_over_unloaded")
    out: dict[str, Any] = {}
    if v in ("bbr-container", "sidecar-bbr-container", "bbr-lxcfs", "flowctl"):
        out["goodput_ratio>=0.85"] = (row["goodput_ratio"] or 0) >= 0.85
        out["admitted_p99<=4x_unloaded"] = ratio is not None and ratio <= 4.0
    if v == "sidecar-bbr-container":
        out["rejected_p99<=5ms"] = row["rejected_p99_ms"] is not None and row["rejected_p99_ms"] <= 5.0
    if v in ("bbr-host", "none", "sidecar-bbr-host", "kratos-host", "sidecar-bare-host"):
        out["shows_failure(p99>=10x_or_timeouts)"] = (ratio is not None and ratio >= 10.0) or row["timeouts"] > 0
    return out


async def run(a: argparse.Namespace) -> dict[str, Any]:
    c.pin_self()
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in variants:
        if v not in c.ALL_VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(c.ALL_VARIANTS)}")
    handlers = [h.strip() for h in a.handler.split(",") if h.strip()]
    mults = [float(m) for m in str(a.multiplier).split(",")]
    c.check_environment(lxcfs=any(v in c.LXCFS_VARIANTS for v in variants))
    machine = c.machine_info()
    iters = a.work_iters or c.work_iters_from(a.capacity_from) or c.calibrate_work_iters(a.work_ms)
    c.log(f"overload: handlers {handlers}, variants {variants}, multipliers {mults}, {a.seconds:g} s each; "
          f"upstream {a.cpus} CPU, work {a.work_ms} ms = {iters} iterations; load average {machine['loadavg']}")  # fmt: skip
    out: dict[str, Any] = {
        "scenario": "overload",
        "machine": machine,
        "seconds": a.seconds,
        "sweep_seconds": a.sweep_seconds,
        "multipliers": mults,
        "cpus": a.cpus,
        "work_ms": a.work_ms,
        "work_iters": iters,
        "warmup_s": a.warmup,
        "timeout_s": a.timeout,
        "loop_lag_trigger": not a.no_loop_lag,
        "handlers": handlers,
        "capacities": {},
        "by_handler": {},
    }
    for handler in handlers:
        cap = None
        if a.capacity_rps:
            cap = c.Capacity(a.capacity_rps, a.unloaded_p99_ms or 1.0, 0.0, [], a.cpus, handler)
        elif a.capacity_from:
            cap = c.load_capacity(a.capacity_from, handler, a.cpus)
            if cap:
                c.log(f"capacity[{handler}] from {a.capacity_from}: {cap.capacity_rps:.1f} rps, unloaded p99 {cap.unloaded_p99_ms:.1f} ms")
        if cap is None:
            async with c.upstream("none", cpus=a.cpus, work_iters=iters) as up:
                cap = await c.measure_capacity(up, HANDLERS[handler], cpus=a.cpus, work_ms=a.work_ms, handler=handler,
                                               probe_s=a.probe_seconds)  # fmt: skip
        out["capacities"][handler] = cap.as_dict()
        runs = []
        for i, mult in enumerate(mults):
            rate = mult * cap.capacity_rps
            seconds = a.seconds if i == len(mults) - 1 or not a.sweep_seconds else a.sweep_seconds
            rows: dict[str, Any] = {}
            for v in variants:
                c.log(f"{handler} x{mult:g} ({rate:.0f} rps) variant {v} ...")
                row = await _run_variant(v, handler, rate, a, iters, cap, mult, seconds)
                row["handler"] = handler
                row["verdicts"] = verdicts(row)
                rows[v] = row
                c.log(f"  {v:22s} goodput {row['goodput_rps']:7.1f}/s ({row['goodput_ratio']:.2f} of cap), "
                      f"admitted p99 {_f(row['admitted_p99_ms'])} ms ({_f(row['admitted_p99_over_unloaded'])}x), "
                      f"rejected p99 {_f(row['rejected_p99_ms'])} ms, shed {row['shed_ratio']:.2f}, timeouts {row['timeouts']}, "
                      f"host CPU {_f(row['host_cpu_utilization_mean'], 2)}, container CPU {_f(row['container_cpu_utilization_mean'], 2)}")  # fmt: skip
            runs.append({"multiplier": mult, "rate_rps": rate, "seconds": seconds, "variants": rows})
        out["by_handler"][handler] = {"capacity": cap.as_dict(), "runs": runs}
    first = out["by_handler"][handlers[0]]
    out["handler"] = handlers[0]
    out["capacity"] = first["capacity"]
    out["variants"] = first["runs"][-1]["variants"]
    out["machine"]["loadavg_after"] = list(os.getloadavg())
    return out


def _f(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def main(argv: Sequence[str] | None = None) -> int:
    return c.run_scenario("overload", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
