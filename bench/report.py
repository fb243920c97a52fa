"""Markdown tables and PNG plots from a scenario's result JSON.

``python -m bench report FILE.json [...]`` (re)writes ``FILE.md`` and
``FILE-*.png`` next to the JSON. Scenarios call :func:`report_file` after
writing their JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["report_file", "overload_markdown", "main"]

COLORS = {
    "none": "#7f7f7f",
    "fixed": "#bcbd22",
    "bbr-host": "#d62728",
    "bbr-container": "#2ca02c",
    "bbr-lxcfs": "#17becf",
    "gradient": "#9467bd",
    "sidecar-bbr-container": "#1f77b4",
    "sidecar-bbr-host": "#e377c2",
    "sidecar-bare-host": "#8c564b",
    "sidecar-bare-container": "#98df8a",
    "kratos-host": "#ff9896",
    "kratos-lxcfs": "#9edae5",
    "kratos": "#c5b0d5",
    "flowctl": "#1f77b4",
    "nginx-limit-conn": "#ff7f0e",
}


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    return f"{x:.{nd}f}"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _machine_line(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    la = m.get("loadavg") or []
    la2 = m.get("loadavg_after") or []
    cg = m.get("cgroup_cpu_version")
    return (f"{m.get('date', '?')} on {m.get('hostname', '?')}: {m.get('cpus', '?')} CPUs ({m.get('cpu_model', '?')}), "
            f"kernel {m.get('kernel', '?')}, Python {m.get('python', '?')}"
            + (f", cpu controller on cgroup v{cg}" if cg else "") + "; load average before "
            f"{' '.join(f'{x:.2f}' for x in la)}" + (f", after {' '.join(f'{x:.2f}' for x in la2)}" if la2 else ""))  # fmt: skip


def _verdict(row: dict[str, Any]) -> str:
    v = row.get("verdicts") or {}
    if not v:
        return ""
    return ", ".join(f"{k}: {'PASS' if ok else 'MISS'}" for k, ok in v.items())


def _reasons(row: dict[str, Any]) -> str:
    reasons = row.get("shed_by_reason") or {}
    return ", ".join(f"{k} {n}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])) if reasons else "-"


def overload_table(rows: dict[str, Any]) -> list[str]:
    lines = [
        "| variant | offered rps | goodput rps | goodput / capacity | admitted p99 ms | p99 / unloaded | rejected p99 ms | shed | timeouts | host CPU | container CPU | throttled | PSI some | shed reasons | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {_f(r['offered_rps'])} | {_f(r['goodput_rps'])} | {_pct(r['goodput_ratio'])} | "
            f"{_f(r['admitted_p99_ms'])} | {_f(r.get('admitted_p99_over_unloaded'))}x | {_f(r['rejected_p99_ms'])} | "
            f"{_pct(r['shed_ratio'])} | {r['timeouts']} | {_pct(r['host_cpu_utilization_mean'])} | "
            f"{_pct(r['container_cpu_utilization_mean'])} | {_pct(r.get('container_throttled_ratio_mean'))} | "
            f"{_pct(r.get('container_pressure_ratio_mean'))} | {_reasons(r)} | {_verdict(r)} |"
        )
    return lines


def overload_markdown(data: dict[str, Any], png_names: Sequence[str] = ()) -> str:
    out = [f"# Overload: {data.get('cpus')} CPU upstream, {data.get('seconds')} s per run", "", _machine_line(data), ""]
    lg_notes = []
    for handler, hd in data.get("by_handler", {}).items():
        cap = hd["capacity"]
        out += [f"## Handler `{handler}`", "",
                f"Capacity {cap['capacity_rps']:.1f} rps (unloaded p99 {cap['unloaded_p99_ms']:.1f} ms; "
                f"criterion: {cap.get('criterion', 'given')}).", ""]  # fmt: skip
        for runinfo in hd["runs"]:
            secs = runinfo.get("seconds", data.get("seconds"))
            out += [f"### {runinfo['multiplier']:g}x capacity ({runinfo['rate_rps']:.0f} rps offered, {secs:g} s)", ""]
            out += overload_table(runinfo["variants"])
            out.append("")
            for name, r in runinfo["variants"].items():
                lg = r.get("loadgen", {})
                lg_notes.append((handler, runinfo["multiplier"], name, lg))
    if lg_notes:
        worst_lag = max((lg.get("send_lag_p99_ms") or 0) for *_, lg in lg_notes)
        max_cpu = max((lg.get("cpu_cores") or 0) for *_, lg in lg_notes)
        out += ["## Load generator", "",
                f"Open loop (Poisson), latency from the intended send time, timeout {data.get('timeout_s', 2)} s. "
                f"Worst send-lag p99 over all runs {worst_lag:.2f} ms, its CPU at most {max_cpu:.2f} cores "
                f"(pinned to CPU {lg_notes[0][3].get('affinity')}; the upstream is on CPU 0).", ""]  # fmt: skip
    for name in png_names:
        out.append(f"![{name}]({name})")
    return "\n".join(out) + "\n"


def headline_markdown(data: dict[str, Any]) -> str:
    """The README table: every variant at the last (highest) multiplier, for every handler."""
    lines = ["| handler | variant | goodput / capacity | admitted p99 ms (x unloaded) | rejected p99 ms | shed | timeouts | host CPU | container CPU |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for handler, hd in data.get("by_handler", {}).items():
        last = hd["runs"][-1]
        for name, r in last["variants"].items():
            lines.append(f"| {handler} | {name} | {_pct(r['goodput_ratio'])} | {_f(r['admitted_p99_ms'])} "
                         f"({_f(r.get('admitted_p99_over_unloaded'))}x) | {_f(r['rejected_p99_ms'])} | {_pct(r['shed_ratio'])} | "
                         f"{r['timeouts']} | {_pct(r['host_cpu_utilization_mean'])} | {_pct(r['container_cpu_utilization_mean'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        if r.get(key) is not None and r.get("t_s") is not None:
            xs.append(float(r["t_s"]))
            ys.append(float(r[key]))
    return xs, ys


def plot_sweep(data: dict[str, Any], handler: str, path: str) -> None:
    plt = _plt()
    hd = data["by_handler"][handler]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    variants: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for runinfo in hd["runs"]:
        for name, r in runinfo["variants"].items():
            variants.setdefault(name, []).append((r["offered_rps"], r))
    cap = hd["capacity"]["capacity_rps"]
    for name, pts in variants.items():
        pts.sort(key=lambda p: p[0])
        xs = [p[0] for p in pts]
        col = COLORS.get(name)
        ax1.plot(xs, [p[1]["goodput_rps"] for p in pts], "o-", label=name, color=col)
        ax2.plot(xs, [p[1]["admitted_p99_ms"] or float("nan") for p in pts], "o-", label=name, color=col)
    ax1.axhline(cap, ls="--", color="k", lw=0.8, label="capacity")
    ax1.set_xlabel("offered load (req/s)")
    ax1.set_ylabel("goodput (2xx within 1 s, req/s)")
    ax1.set_title(f"goodput vs offered load ({handler} handler)")
    ax2.axhline(4 * hd["capacity"]["unloaded_p99_ms"], ls="--", color="k", lw=0.8, label="4x unloaded p99")
    ax2.set_yscale("log")
    ax2.set_xlabel("offered load (req/s)")
    ax2.set_ylabel("admitted p99 (ms)")
    ax2.set_title("admitted p99 vs offered load")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_timeseries(rows: dict[str, Any], path: str, title: str, *, event_s: float | None = None,
                    bound_ms: float | None = None) -> None:  # fmt: skip
    """One row of panels per variant: CPU views, in-flight/limit, rates, admitted p99 per second."""
    plt = _plt()
    n = len(rows)
    fig, axes = plt.subplots(n, 4, figsize=(17, 2.4 * n + 0.6), squeeze=False)
    for i, (name, r) in enumerate(rows.items()):
        s = r.get("samples", [])
        tl = [row for row in r.get("timeline", []) if row.get("sent", 0) > 0]
        ax = axes[i][0]
        for key, lab, st in (("host_cpu_utilization", "host /proc/stat", "r-"),
                             ("container_cpu_utilization", "container (cgroup)", "g-"),
                             ("limiter_cpu_utilization", "limiter's signal", "b:"),
                             ("container_throttled_ratio", "periods throttled", "c--"),
                             ("container_pressure_ratio", "cpu.pressure some (v2)", "m-.")):  # fmt: skip
            xs, ys = _series(s, key)
            if xs:
                ax.plot(xs, ys, st, label=lab, lw=1.2)
        ax.set_ylim(0, 1.3)
        ax.axhline(0.8, color="k", lw=0.6, ls="--")
        ax.set_ylabel(name, fontsize=9, fontweight="bold")
        if i == 0:
            ax.set_title("CPU views, throttling, PSI (ratios)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
        ax = axes[i][1]
        for key, lab, st in (("inflight", "in-flight", "k-"), ("max_inflight", "max_inflight", "m--")):
            xs, ys = _series(s, key)
            if xs:
                ax.plot(xs, ys, st, label=lab, lw=1.2)
        if i == 0:
            ax.set_title("in-flight and limit")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax = axes[i][2]
        t = [row["t_s"] for row in tl]
        ax.plot(t, [row["good"] for row in tl], "g-", label="goodput/s")
        ax.plot(t, [row["rejected"] for row in tl], "r-", label="shed/s")
        ax.plot(t, [row["timeouts"] + row["errors"] for row in tl], "k:", label="timeouts+errors/s")
        if i == 0:
            ax.set_title("per second (by intended send time)")
            ax.legend(fontsize=7)
        ax = axes[i][3]
        xs = [row["t_s"] for row in tl if row.get("admitted_p99_ms") is not None]
        ys = [row["admitted_p99_ms"] for row in tl if row.get("admitted_p99_ms") is not None]
        ax.plot(xs, ys, "b.-")
        ax.set_yscale("log")
        if bound_ms:
            ax.axhline(bound_ms, color="k", ls="--", lw=0.8)
        if i == 0:
            ax.set_title("admitted p99 per second (ms)")
        for axx in axes[i]:
            if event_s is not None:
                axx.axvline(event_s, color="orange", lw=1.2)
            axx.tick_params(labelsize=7)
    for axx in axes[-1]:
        axx.set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.4 * n + 0.6)))
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------ per scenario


def _report_overload(data: dict[str, Any], stem: str) -> list[str]:
    pngs = []
    for handler, hd in data.get("by_handler", {}).items():
        if len(hd["runs"]) > 1:
            p = f"{stem}-sweep-{handler}.png"
            plot_sweep(data, handler, p)
            pngs.append(p)
        last = hd["runs"][-1]
        p = f"{stem}-timeseries-{handler}.png"
        plot_timeseries(last["variants"], p, f"overload {last['multiplier']:g}x capacity, {handler} handler, "
                        f"{data.get('cpus')} CPU upstream", bound_ms=4 * hd["capacity"]["unloaded_p99_ms"])  # fmt: skip
        pngs.append(p)
    md = overload_markdown(data, [os.path.basename(p) for p in pngs])
    with open(stem + ".md", "w") as f:
        f.write(md)
    return [stem + ".md", *pngs]


def step_markdown(data: dict[str, Any], pngs: Sequence[str]) -> str:
    out = [f"# Step: quota {data['cpus_before']} -> {data['cpus_after']} CPU at t={data['step_at_s']:g} s "
           f"under {data['rate_rps']:.0f} rps ({data['load_multiplier']:g}x the post-step capacity)", "",
           _machine_line(data), "",
           f"Capacity before the step {data['capacity_before']['capacity_rps']:.1f} rps, after "
           f"{data['capacity_after']['capacity_rps']:.1f} rps. Bound: admitted p99 <= {data['bound_ms']:.1f} ms "
           f"(4x the unloaded p99). nginx `limit_conn` = {data.get('nginx_limit_conn')} (tuned before the step).", "",
           "| peer | recovery after step (s) | p99 before step ms | p99 last 10 s ms | goodput before rps | goodput after rps | shed after | timeouts | target (<= 5 s) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for name, r in data["variants"].items():
        rec = r.get("recovery_s")
        out.append(f"| {name} | {_f(rec) if rec is not None else 'never'} | {_f(r.get('p99_before_ms'))} | "
                   f"{_f(r.get('p99_after_tail_ms'))} | {_f(r.get('goodput_before_rps'))} | {_f(r.get('goodput_after_rps'))} | "
                   f"{_pct(r.get('shed_ratio_after'))} | {r['timeouts']} | {'PASS' if rec is not None and rec <= 5 else 'MISS'} |")  # fmt: skip
    out.append("")
    for p in pngs:
        out.append(f"![{p}]({p})")
    return "\n".join(out) + "\n"


def _report_step(data: dict[str, Any], stem: str) -> list[str]:
    p = f"{stem}-timeseries.png"
    plot_timeseries(data["variants"], p, f"step {data['cpus_before']} -> {data['cpus_after']} CPU at "
                    f"t={data['step_at_s']:g} s, {data['rate_rps']:.0f} rps", event_s=data["step_at_s"],
                    bound_ms=data["bound_ms"])  # fmt: skip
    with open(stem + ".md", "w") as f:
        f.write(step_markdown(data, [os.path.basename(p)]))
    return [stem + ".md", p]


def priority_markdown(data: dict[str, Any], pngs: Sequence[str]) -> str:
    caps = ", ".join(f"{h} {c['capacity_rps']:.1f} rps" for h, c in data.get("capacities", {}).items())
    out = [f"# Priority: 50/50 critical/sheddable at {data['multiplier']:g}x capacity ({caps}), {data.get('seconds')} s", "",
           _machine_line(data), "",
           "| variant | handler | class | offered rps | goodput rps | goodput / offered | shed | admitted p99 ms | timeouts | target |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for key, r in data["variants"].items():
        for cls, cr in r["classes"].items():
            ratio = cr["goodput_rps"] / cr["offered_rps"] if cr["offered_rps"] else None
            tgt = ("PASS" if (ratio or 0) >= 0.95 else "MISS") if cls == "critical" else ""
            out.append(f"| {r['variant']} | {r.get('handler')} | {cls} | {_f(cr['offered_rps'])} | {_f(cr['goodput_rps'])} | {_pct(ratio)} | "
                       f"{_pct(cr['shed_ratio'])} | {_f(cr['admitted_p99_ms'])} | {cr['timeouts']} | {tgt} |")  # fmt: skip
    out.append("")
    for p in pngs:
        out.append(f"![{p}]({p})")
    return "\n".join(out) + "\n"


def _report_priority(data: dict[str, Any], stem: str) -> list[str]:
    plt = _plt()
    keys = list(data["variants"])
    fig, ax = plt.subplots(figsize=(2.2 + 2.2 * len(keys), 4))
    width = 0.2
    for i, key in enumerate(keys):
        r = data["variants"][key]
        for j, cls in enumerate(("critical", "sheddable")):
            cr = r["classes"].get(cls)
            if not cr:
                continue
            x = i + (j - 0.5) * 2 * width
            ax.bar(x - width / 2, cr["offered_rps"], width, color="#cccccc", label="offered" if i == j == 0 else None)
            ax.bar(x + width / 2, cr["goodput_rps"], width, color="#2ca02c" if cls == "critical" else "#d62728",
                   label=f"{cls} goodput" if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(keys)), keys, fontsize=8)
    ax.set_ylabel("req/s")
    ax.set_title(f"critical vs sheddable at {data['multiplier']:g}x capacity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = f"{stem}.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    with open(stem + ".md", "w") as f:
        f.write(priority_markdown(data, [os.path.basename(p)]))
    return [stem + ".md", p]


def _report_overhead(data: dict[str, Any], stem: str) -> list[str]:
    out = ["# Overhead (wrk on loopback)", "", _machine_line(data), ""]
    for name, part in data.get("parts", {}).items():
        out += [f"## {name}", ""]
        if isinstance(part, dict) and part.get("markdown"):
            out += [part["markdown"], ""]
        else:
            out += ["```", json.dumps(part, indent=1, default=str)[:4000], "```", ""]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(out) + "\n")
    return [stem + ".md"]


def report_file(path: str) -> list[str]:
    """Write the Markdown (and PNGs) for the result JSON at ``path``; return the files written."""
    with open(path) as f:
        data = json.load(f)
    stem = os.path.splitext(path)[0]
    kind = data.get("scenario")
    if kind == "overload":
        files = _report_overload(data, stem)
    elif kind == "step":
        files = _report_step(data, stem)
    elif kind == "priority":
        files = _report_priority(data, stem)
    elif kind == "overhead":
        files = _report_overhead(data, stem)
    else:
        raise ValueError(f"{path}: unknown scenario {kind!r}")
    for p in files:
        print(f"[bench] wrote {p}", file=sys.stderr)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench report", description="Markdown and PNG from result JSON")
    p.add_argument("json_files", nargs="+")
    p.add_argument("--headline", action="store_true", help="print the README headline table of an overload JSON instead")
    a = p.parse_args(argv)
    for path in a.json_files:
        if a.headline:
            with open(path) as f:
                print(headline_markdown(json.load(f)))
        else:
            report_file(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
