"""``flowctl inspect``: the host, cgroup and lxcfs CPU views side by side.

``collect()`` builds the JSON object (keys documented in docs/cpu.md,
"flowctl inspect"); ``register()`` adds the subcommand. Exit code
0 whenever something could be reported (problems are listed under
``errors``), 1 with a one-line message when nothing at all could be read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from flowctl.cpu import make_signal
from flowctl.cpu.sampler import Sampler
from flowctl.cpu.sources import ContainerSource, LxcfsSource

__all__ = ["collect", "format_table", "register", "run"]


def _samplers(root: str, pid: int | str, lxcfs_dir: str | None) -> dict[str, Sampler]:
    out = {"host": make_signal("host", root=root, fallback=False),
           "container": make_signal("container", root=root, pid=pid, fallback=False)}
    lx = make_signal("lxcfs", root=root, lxcfs_dir=lxcfs_dir, fallback=False)
    assert isinstance(lx.source, LxcfsSource)
    if lx.source.present:
        out["lxcfs"] = lx
    return out


def _report(samplers: dict[str, Sampler], root: str, interval_s: float) -> dict[str, Any]:
    host, cont = samplers["host"], samplers["container"]
    hl = host.limits.details if host.limits else {}
    cl = cont.limits
    cd = cl.details if cl else {}
    hr, cr = host.reading, cont.reading
    errors: list[str] = [f"host: {e}" for e in host.errors()] + [f"cgroup: {e}" for e in cont.errors()]
    lxcfs: dict[str, Any] | None = None
    if "lxcfs" in samplers:
        lx = samplers["lxcfs"]
        ld = lx.limits.details if lx.limits else {}
        lxcfs = {
            "cpus": ld.get("cpus"),
            "utilization": lx.reading.utilization,
            "mem_total_bytes": ld.get("mem_total_bytes"),
            "mode": ld.get("mode"),
            "location": ld.get("location"),
            "cpus_source": ld.get("cpus_source"),
            "loadavg": ld.get("loadavg"),
        }
        errors += [f"lxcfs: {e}" for e in lx.errors()]
    assert isinstance(cont.source, ContainerSource)
    return {
        "root": root,
        "interval_s": interval_s,
        "view": "container",
        "host": {
            "cpus": hl.get("cpus"),
            "cpus_source": hl.get("cpus_source"),
            "utilization": hr.utilization,
            "usage_cores": hr.usage_cores,
            "pressure_ratio": hr.pressure_ratio,
            "pressure_source": hl.get("pressure_source"),
            "pressure_scope": hl.get("pressure_scope"),
            "mem_total_bytes": hl.get("mem_total_bytes"),
            "virtualized": hl.get("virtualized"),
        },
        "cgroup": {
            "version": cd.get("version"),
            "path": cd.get("path"),
            "dirs": cd.get("dirs"),
            "limit_cores": cd.get("quota_cores"),
            "limit_source": cd.get("quota_source"),
            "cpuset_cpus": cd.get("cpuset_cpus"),
            "cpuset": cd.get("cpuset"),
            "cpuset_source": cd.get("cpuset_source"),
            "utilization": cr.utilization,
            "utilization_smoothed": cr.utilization_smoothed,
            "usage_cores": cr.usage_cores,
            "throttled_ratio": cr.throttled_ratio,
            "pressure_ratio": cr.pressure_ratio,
            "pressure_source": cd.get("pressure_source"),
            "pressure_scope": cd.get("pressure_scope"),
            "memory_limit_bytes": cd.get("memory_limit_bytes"),
            "memory_limit_source": cd.get("memory_limit_source"),
            "memory_usage_bytes": cd.get("memory_usage_bytes"),
        },
        "lxcfs": lxcfs,
        "effective": {
            "cpus": cl.limit_cores if cl else None,
            "source": cl.source if cl else "none",
            "file": cl.source_file if cl else None,
            "affinity_cpus": cd.get("affinity_cpus"),
            "usable_cores": cr.usable_cores if cr.usable_cores is not None else (cl.limit_cores if cl else None),
            "usable_why": cl.usable_why if cl and cl.usable_cores is not None else None,
        },
        "errors": errors,
    }


def collect(root: str = "/", *, interval_s: float = 1.0, pid: int | str = "self", lxcfs_dir: str | None = None,
            sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """One report: limits always; utilizations over ``interval_s`` (None when 0). Never raises on bad input."""
    samplers = _samplers(root, pid, lxcfs_dir)
    try:
        for s in samplers.values():
            s.sample()
        if interval_s > 0:
            sleep(interval_s)
            samplers["container"].refresh_limits()  # a second look at the group's processes: usable cores
            for s in samplers.values():
                s.sample()
        return _report(samplers, root, interval_s)
    finally:
        for s in samplers.values():
            s.close()


def readable(report: dict[str, Any]) -> bool:
    """False when nothing at all could be read (no host CPU count, no cgroup, no lxcfs)."""
    return bool(report["host"]["cpus"] or report["cgroup"]["version"] or report["lxcfs"]
                or report["host"]["utilization"] is not None)


def _pct(x: object) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{100 * x:.1f}%"


def _scoped(ratio: object, scope: object) -> str:
    """A pressure ratio labelled with the scope it measures ("system" or "cgroup")."""
    return _pct(ratio) + (f" ({scope})" if scope else "")


def _num(x: object, unit: str = "") -> str:
    if not isinstance(x, (int, float)):
        return "-"
    return f"{x:g}{unit}" if isinstance(x, int) else f"{x:.3g}{unit}"


def _bytes(x: object) -> str:
    if not isinstance(x, (int, float)):
        return "no limit/-"
    v = float(x)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(x)  # pragma: no cover


def usable_advice(limit: object, usable: object, why: object) -> str | None:
    """The one line said when the workload cannot use its whole limit (None when it can)."""
    if not isinstance(limit, (int, float)) or not isinstance(usable, (int, float)) or usable >= limit - 1e-9:
        return None
    workers = math.ceil(limit - 1e-9)
    return (f"limit {limit:g} CPU, usable {usable:g} ({why}): lower the limit to {usable:g}, "
            f"or run {workers} workers")


def format_table(r: dict[str, Any]) -> str:
    """The human side-by-side table of a ``collect()`` report."""
    h, c, lx, eff = r["host"], r["cgroup"], r["lxcfs"], r["effective"]
    cg_title = f"cgroup v{c['version']}" if c["version"] else "cgroup (none)"
    cols = ["host (/proc)", cg_title] + (["lxcfs"] if lx else [])
    cg_cpus = _num(c["limit_cores"]) + " quota" if c["limit_cores"] is not None else "no quota"
    if c["cpuset_cpus"]:
        cg_cpus += f", cpuset {c['cpuset']}"
    rows: list[list[str]] = [
        ["cpus", _num(h["cpus"]), cg_cpus] + ([_num(lx["cpus"])] if lx else []),
        ["utilization", _pct(h["utilization"]), _pct(c["utilization"])] + ([_pct(lx["utilization"])] if lx else []),
        ["usage (cores)", _num(h["usage_cores"]), _num(c["usage_cores"])] + (["-"] if lx else []),
        ["usable cores", "-", _num(eff.get("usable_cores")) + (f" ({eff['usable_why']})" if eff.get("usable_why") else "")]
        + (["-"] if lx else []),
        ["throttled", "-", _pct(c["throttled_ratio"])] + (["-"] if lx else []),
        ["pressure (some)", _scoped(h["pressure_ratio"], h["pressure_scope"]),
         _scoped(c["pressure_ratio"], c["pressure_scope"])] + (["-"] if lx else []),
        ["memory", _bytes(h["mem_total_bytes"]), _bytes(c["memory_limit_bytes"])] + ([_bytes(lx["mem_total_bytes"])] if lx else []),
        ["from", str(h["cpus_source"] or "-"), str(c["limit_source"] or c["cpuset_source"] or c["path"] or "-")]
        + ([str(lx["location"])] if lx else []),
    ]
    widths = [max(len(row[i]) for row in rows + [[""] + cols]) for i in range(len(cols) + 1)]
    lines = ["  ".join(x.ljust(w) for x, w in zip([""] + cols, widths)).rstrip()]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    eff_cpus = "unknown" if eff["cpus"] is None else _num(eff["cpus"])
    lines.append("")
    lines.append(f"flowctl uses: the container view, effective {eff_cpus} CPUs from {eff['source']}"
                 + (f" ({eff['file']})" if eff["file"] else ""))
    advice = usable_advice(eff["cpus"], eff.get("usable_cores"), eff.get("usable_why"))
    if advice:
        lines.append(advice)
    if h.get("virtualized"):
        lines.append("note: /proc/stat is an lxcfs mount here, so the host column is already virtualized")
    if r["interval_s"] == 0:
        lines.append("(--interval 0: limits only, no utilization)")
    for e in r["errors"]:
        lines.append(f"error: {e}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute ``flowctl inspect``; returns the exit code."""
    root: str = args.root
    interval_s: float = args.interval
    pid: int | str = args.pid if args.pid is not None else "self"
    if interval_s < 0:
        print("flowctl inspect: --interval must be >= 0", file=sys.stderr)
        return 2
    if not args.watch:
        report = collect(root, interval_s=interval_s, pid=pid, lxcfs_dir=args.lxcfs_dir)
        if not readable(report):
            first = report["errors"][0] if report["errors"] else "no files"
            print(f"flowctl inspect: nothing readable under {root}: {first}", file=sys.stderr)
            return 1
        print(json.dumps(report, sort_keys=True) if args.json else format_table(report))
        return 0
    step_s = interval_s if interval_s > 0 else 1.0
    samplers = _samplers(root, pid, args.lxcfs_dir)
    try:
        for s in samplers.values():
            s.sample()
        while True:
            time.sleep(step_s)
            for s in samplers.values():
                s.sample()
            report = _report(samplers, root, step_s)
            if args.json:
                print(json.dumps(report, sort_keys=True), flush=True)
            else:
                print(time.strftime("%H:%M:%S"), flush=False)
                print(format_table(report) + "\n", flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        for s in samplers.values():
            s.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``flowctl inspect`` to the command's subparsers."""
    p = sub.add_parser("inspect", help="show the host, cgroup and lxcfs CPU views side by side",
                       description="Show what each view says about CPUs, usage, throttling, pressure and memory, "
                                   "which one flowctl uses, and the file every limit came from.")
    p.add_argument("--root", default="/", metavar="DIR", help="read every path under DIR (default /)")
    p.add_argument("--json", action="store_true", help="print one JSON object (one per line with --watch)")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="measure utilization over this interval; 0 reads limits only (default 1)")
    p.add_argument("--watch", action="store_true", help="repeat every interval until interrupted")
    p.add_argument("--pid", type=int, default=None, help="inspect process PID (via /proc/PID) instead of this one")
    p.add_argument("--lxcfs-dir", default=None, metavar="DIR", help="read lxcfs views from DIR (else detected)")
    p.set_defaults(func=run)
