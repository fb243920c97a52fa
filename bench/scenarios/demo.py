"""``python -m bench demo``: what a cgroup-blind limiter does inside a container, at 4x overload.

In front of the same 0.5-CPU upstream at 4x its capacity, each row changes one
thing. In-process: BBR as Kratos and go-zero ship it, reading the host's
/proc; the same limiter reading lxcfs's /proc (where lxcfs is installed); the
same limiter reading the cgroup; flowctl's defaults reading the cgroup.
Through the sidecar: its BBR rule alone (no ceiling, no period gate) reading
/proc, the same reading the cgroup, and the sidecar's defaults. Every row
takes every machine input from its own view. The loop-lag trigger is off in
every row: it sees a CFS-throttled loop whatever the view, and would hide the
difference. Prints a verdict table and writes JSON, Markdown and plots
(default ``bench/results/demo.*``); the capacity and unloaded p99 the verdicts
are relative to are measured in the same run (2 s probes).
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

ROWS: dict[str, tuple[str, str]] = {
    "kratos-host": ("in-process", "BBR as Kratos/go-zero ship it, reading /proc"),
    "kratos-lxcfs": ("in-process", "the same, reading lxcfs's /proc"),
    "kratos": ("in-process", "the same, reading the cgroup"),
    "flowctl": ("in-process", "flowctl's defaults, reading the cgroup"),
    "sidecar-bare-host": ("sidecar", "BBR rule alone (no ceiling, no period gate), reading /proc"),
    "sidecar-bare-container": ("sidecar", "the same, reading the cgroup"),
    "sidecar-bbr-container": ("sidecar", "flowctl's defaults, reading the cgroup"),
}
"""The demo's rows in order: variant -> (where the limiter runs, what it is)."""

PROTECTED = "protected"
DROWNING = "DROWNING"
DEGRADED = "degraded"


def verdict(row: dict[str, Any]) -> str:
    """In this order: ``protected`` (admitted p99 <= 4x unloaded and goodput >= 0.85 of capacity),
    ``DROWNING`` (p99 >= 10x unloaded or any timeout), else ``degraded``."""
    ratio = row.get("admitted_p99_over_unloaded")
    if (row["goodput_ratio"] or 0) >= 0.85 and ratio is not None and ratio <= 4:
        return PROTECTED
    if (ratio is not None and ratio >= 10) or row["timeouts"] > 0:
        return DROWNING
    return DEGRADED


def rows(lxcfs: bool) -> list[str]:
    """The variants to run: every row, the lxcfs one only where lxcfs is installed."""
    return [v for v in ROWS if lxcfs or v not in c.LXCFS_VARIANTS]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench demo", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--handler", default="yielding")
    p.add_argument("--json", dest="json_out", default=os.path.join(c.RESULTS_DIR, "demo.json"))
    a = p.parse_args(argv)
    lxcfs = c.lxcfs_installed()
    args = ["--seconds", str(a.seconds), "--multiplier", "4", "--variants", ",".join(rows(lxcfs)), "--handler", a.handler,
            "--probe-seconds", "2", "--json", a.json_out, "--no-loop-lag", "--quiet"]  # fmt: skip
    oa = overload.build_parser("python -m bench demo").parse_args(args)
    try:
        out = asyncio.run(overload.run(oa))
    except c.EnvironmentMissing as exc:
        print(f"\nflowctl demo: {exc}\n", file=sys.stderr)
        return 2
    out["demo"] = {"command": "make demo", "lxcfs": lxcfs,
                   "rows": {v: {"where": ROWS[v][0], "what": ROWS[v][1], "verdict": verdict(out["variants"][v])}
                            for v in out["variants"]}}  # fmt: skip
    c.write_json(out, a.json_out)
    from bench import report

    files = report.report_file(a.json_out)
    print()
    print(verdict_text(out))
    if not lxcfs:
        print("(no lxcfs row: lxcfs is not installed; `make setup` installs it)")
    print("\nplots and table: " + ", ".join(files))
    return 0


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} ms"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}x"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _cells(r: dict[str, Any]) -> list[str]:
    """goodput/cap, admitted p99, x unloaded, timeouts, shed, host CPU, container CPU."""
    return [_pct(r["goodput_ratio"] or 0), _ms(r["admitted_p99_ms"]), _x(r.get("admitted_p99_over_unloaded")),
            str(r["timeouts"]), _pct(r["shed_ratio"]), _pct(r["host_cpu_utilization_mean"]),
            _pct(r["container_cpu_utilization_mean"])]  # fmt: skip


HEAD = ["goodput/cap", "admitted p99", "x unloaded", "timeouts", "shed", "host CPU", "cont. CPU"]


def header_line(out: dict[str, Any]) -> str:
    """What was run, on what, and the machine's load: the line above the table."""
    cap = out["capacity"]
    m = out["machine"]
    return (f"{out['cpus']} CPU upstream, {out['handler']} handler, capacity {cap['capacity_rps']:.0f} rps measured in "
            f"this run (unloaded p99 {cap['unloaded_p99_ms']:.1f} ms), offered 4x for {out['seconds']:g} s per row, "
            f"loop-lag trigger off; {m['date']}, load average {m['loadavg'][0]:.2f} before, "
            f"{m.get('loadavg_after', [float('nan')])[0]:.2f} after")  # fmt: skip


def verdict_text(out: dict[str, Any]) -> str:
    """The table ``make demo`` prints: one line per row, grouped by where the limiter runs."""
    lines = ["== A cgroup-blind limiter and a container-fed one, at 4x overload ==", header_line(out)]
    width = max(len(ROWS[v][1]) for v in out["variants"])
    lines.append(f"{'':{width}s} " + " ".join(f"{h:>13s}" for h in HEAD) + "  verdict")
    where = None
    for v, r in out["variants"].items():
        if ROWS[v][0] != where:
            where = ROWS[v][0]
            lines.append(f"{where} ({'the limiter inside the app' if where == 'in-process' else 'a proxy in front of it'}):")
        lines.append(f"{ROWS[v][1]:{width}s} " + " ".join(f"{x:>13s}" for x in _cells(r)) + f"  {verdict(r)}")
    lines.append("host CPU = the whole machine as /proc/stat shows it; cont. CPU = the upstream's usage / its quota.")
    return "\n".join(lines)


def readme_section(out: dict[str, Any]) -> str:
    """The run line and Markdown table of the README's "What `make demo` shows" (figures as printed)."""
    lines = [header_line(out) + ":", "",
             "| where | limiter | goodput / capacity | admitted p99 | x unloaded | timeouts | shed | host CPU | container CPU | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for v, r in out["variants"].items():
        lines.append(f"| {ROWS[v][0]} | {ROWS[v][1]} | " + " | ".join(_cells(r)) + f" | {verdict(r)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
