"""``python -m bench priority``: a 50/50 critical/sheddable mix at 3x capacity.

Each request carries ``X-Priority: critical`` or ``sheddable`` (a header the
upstream's middleware and the sidecar are configured to trust). Reported per
class: offered, goodput (2xx within 1 s), goodput over offered, shed ratio.
Target: critical goodput >= 95% of critical offered while sheddable absorbs
the shedding. Note that at 3x capacity the critical half alone is 1.5x the
capacity, so the target needs the real maximum throughput to exceed the
(p99-bounded) capacity by that much.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from bench.loadgen import TrafficClass
from bench.scenarios import common as c
from bench.upstream import HANDLERS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench priority", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--multiplier", type=float, default=3.0)
    p.add_argument("--variants", default="bbr-container,sidecar-bbr-container")
    p.add_argument("--handler", default="blocking,yielding")
    p.add_argument("--cpus", type=float, default=0.5)
    p.add_argument("--work-ms", type=float, default=5.0)
    p.add_argument("--work-iters", type=int, help="burn() iterations per request (default: calibrate --work-ms now)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--probe-seconds", type=float, default=4.0)
    p.add_argument("--capacity-rps", type=float)
    p.add_argument("--unloaded-p99-ms", type=float)
    p.add_argument("--capacity-from", help="reuse capacities from an earlier result JSON (e.g. bench/results/overload.json)")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--json", dest="json_out", default=os.path.join(c.RESULTS_DIR, "priority.json"))
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no per-second progress line")
    return p


CLASSES = (
    TrafficClass("critical", 0.5, ((c.PRIORITY_HEADER, "critical"),)),
    TrafficClass("sheddable", 0.5, ((c.PRIORITY_HEADER, "sheddable"),)),
)


async def run(a: argparse.Namespace) -> dict[str, Any]:
    c.pin_self()
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    handlers = [h.strip() for h in a.handler.split(",") if h.strip()]
    c.check_environment(lxcfs="bbr-lxcfs" in variants)
    machine = c.machine_info()
    iters = a.work_iters or c.work_iters_from(a.capacity_from) or c.calibrate_work_iters(a.work_ms)
    out: dict[str, Any] = {"scenario": "priority", "machine": machine, "seconds": a.seconds, "multiplier": a.multiplier,
                           "cpus": a.cpus, "work_iters": iters, "handlers": handlers, "capacities": {}, "variants": {}}  # fmt: skip
    for handler in handlers:
        path = HANDLERS[handler]
        cap = None
        if a.capacity_rps:
            cap = c.Capacity(a.capacity_rps, a.unloaded_p99_ms or 1.0, 0.0, [], a.cpus, handler)
        elif a.capacity_from:
            cap = c.load_capacity(a.capacity_from, handler, a.cpus)
        if cap is None:
            async with c.upstream("none", cpus=a.cpus, work_iters=iters) as up:
                cap = await c.measure_capacity(up, path, cpus=a.cpus, work_ms=a.work_ms, handler=handler, probe_s=a.probe_seconds)
        out["capacities"][handler] = cap.as_dict()
        rate = a.multiplier * cap.capacity_rps
        out["rate_rps"] = rate
        for v in variants:
            c.log(f"priority {handler} {v}: {rate:.0f} rps, 50/50 critical/sheddable ...")
            in_process = v if not v.startswith("sidecar-") else "none"
            async with c.upstream(in_process, cpus=a.cpus, work_iters=iters, lxcfs=v == "bbr-lxcfs") as up:
                if v.startswith("sidecar-"):
                    async with c.sidecar(up, view=v.removeprefix("sidecar-bbr-")) as sc:
                        row = await _measure(sc, v, path, rate, a, cap)
                else:
                    row = await _measure(up, v, path, rate, a, cap)
            row["handler"] = handler
            cr, sh = row["classes"]["critical"], row["classes"]["sheddable"]
            row["critical_goodput_ratio"] = cr["goodput_rps"] / cr["offered_rps"] if cr["offered_rps"] else None
            row["sheddable_goodput_ratio"] = sh["goodput_rps"] / sh["offered_rps"] if sh["offered_rps"] else None
            out["variants"][f"{v}/{handler}"] = row
            c.log(f"  critical goodput {cr['goodput_rps']:.1f}/{cr['offered_rps']:.1f} rps ({row['critical_goodput_ratio']:.2f}), "
                  f"sheddable {sh['goodput_rps']:.1f}/{sh['offered_rps']:.1f} rps ({row['sheddable_goodput_ratio']:.2f}); "
                  f"shed critical {cr['shed_ratio']:.2f} sheddable {sh['shed_ratio']:.2f}")  # fmt: skip
    out["machine"]["loadavg_after"] = list(os.getloadavg())
    return out


async def _measure(run: c.Running, v: str, path: str, rate: float, a: argparse.Namespace, cap: c.Capacity) -> dict[str, Any]:
    if a.warmup > 0:
        await c.drive(run, path, 0.5 * cap.capacity_rps, a.warmup, classes=CLASSES, timeout_s=a.timeout, seed=7)
    lg, samples = await c.drive(run, path, rate, a.seconds, classes=CLASSES, progress=a.progress, timeout_s=a.timeout)
    return c.variant_row(v, lg, samples, capacity_rps=cap.capacity_rps, unloaded_p99_ms=cap.unloaded_p99_ms,
                         seconds=a.seconds, multiplier=a.multiplier)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    return c.run_scenario("priority", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
