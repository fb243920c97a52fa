"""``python -m bench demo``: the short story, host-fed vs container-fed BBR at 4x overload.

The same limiter, fed the host's /proc numbers or the container's cgroup
numbers, in front of the same 0.5-CPU upstream, at 4x its capacity. Prints a
verdict table and writes JSON, Markdown and plots (default
``bench/results/demo.*``). The capacity and unloaded p99 the verdicts are
relative to are measured in the same run, on this machine (a short search:
2 s probes), never read from an earlier result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from bench.scenarios import common as c
from bench.scenarios import overload


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench demo", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--handler", default="yielding")
    p.add_argument("--json", dest="json_out", default=os.path.join(c.RESULTS_DIR, "demo.json"))
    a = p.parse_args(argv)
    # CPU-gated BBR only (as Kratos / go-zero ship it): the loop-lag trigger, which flowctl's
    # middleware adds by default, also sees a CFS-throttled loop and would hide the difference.
    args = ["--seconds", str(a.seconds), "--multiplier", "4", "--variants", "bbr-host,bbr-container", "--handler", a.handler,
            "--probe-seconds", "2", "--json", a.json_out, "--no-loop-lag", "--quiet"]  # fmt: skip
    oa = overload.build_parser("python -m bench demo").parse_args(args)
    try:
        out = asyncio.run(overload.run(oa))
    except c.EnvironmentMissing as exc:
        print(f"\nflowctl demo: {exc}\n", file=sys.stderr)
        return 2
    c.write_json(out, a.json_out)
    from bench import report

    files = report.report_file(a.json_out)
    print_verdict(out)
    print("host CPU = the whole machine as /proc/stat shows it (what bbr-host reads); container CPU = usage / quota.")
    print("\nplots and table: " + ", ".join(files))
    return 0


def print_verdict(out: dict[str, Any]) -> None:
    cap = out["capacity"]
    print(f"\n== The same BBR limiter, fed the host's /proc/stat or the container's cgroup CPU ==\n"
          f"{out['cpus']} CPU upstream, {out['handler']} handler, capacity {cap['capacity_rps']:.0f} rps measured in this run "
          f"(unloaded p99 {cap['unloaded_p99_ms']:.1f} ms), offered 4x for {out['seconds']:g} s; "
          f"load average before {out['machine']['loadavg'][0]:.2f}")  # fmt: skip
    print(f"{'variant':15s} {'goodput/cap':>11s} {'admitted p99':>13s} {'x unloaded':>10s} {'timeouts':>8s} {'shed':>6s} "
          f"{'host CPU':>8s} {'cont. CPU':>9s}  verdict")  # fmt: skip
    for name, r in out["variants"].items():
        ratio = r.get("admitted_p99_over_unloaded")
        good = (r["goodput_ratio"] or 0) >= 0.85 and ratio is not None and ratio <= 4
        failed = (ratio is not None and ratio >= 10) or r["timeouts"] > 0
        verdict = "protected" if good else ("DROWNING" if failed else "degraded")
        print(f"{name:15s} {100 * (r['goodput_ratio'] or 0):10.0f}% {_ms(r['admitted_p99_ms']):>13s} "
              f"{_x(ratio):>10s} {r['timeouts']:8d} {100 * r['shed_ratio']:5.0f}% "
              f"{_pct(r['host_cpu_utilization_mean']):>8s} {_pct(r['container_cpu_utilization_mean']):>9s}  {verdict}")  # fmt: skip


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} ms"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}x"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


if __name__ == "__main__":
    sys.exit(main())
