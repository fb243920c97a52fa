"""The median and the worst of several scorecard runs: one table, a row per (scenario, metric), a column per variant.

    python -m bench scorecard --runs 3 --json bench/results/scorecard-median-<date>.json
    python -m bench.scorecard_median bench/results/scorecard-<date>-run*.json \
        --json bench/results/scorecard-median-<date>.json

The first runs the scorecard three times and combines the runs; the second combines runs already
saved (each its own ``python -m bench scorecard``, for example each under its own hold of the
machine lock). Both write the JSON and, beside it, the Markdown and a PNG of the medians.

Each cell is the median of the runs' values and its verdict against the row's target; the worst
value of the runs (a value a run could not measure, such as a recovery that never came, counts as
the worst); and what the runs were measured on together: for a ratio of counts, the pooled k of n
and the Wilson 95% interval of k/n (the runs' requests taken as independent trials: the spread
between runs, machine load included, is in the per-run values, not in that interval), for any
other row the requests measured. A row's bound (``scorecard._bound_note``) is the median of the
bounds its runs measured. Runs are whole scorecard runs, each measuring its own references.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from bench.scenarios import common as c
from bench.scenarios.scorecard import (ALL_VARIANTS, BOUND_LEGEND, OURS, counts_text, plot, verdict_row, verdict_table,
                                       verdict_text)  # fmt: skip

__all__ = ["combine", "main", "markdown", "write_median"]


def _rank(variant: str) -> int:
    return ALL_VARIANTS.index(variant) if variant in ALL_VARIANTS else len(ALL_VARIANTS)


def _worst_first(better: str) -> float:
    return math.inf if better == "lower" else -math.inf


def _sum(xs: Sequence[int | None]) -> int | None:
    return None if not xs or any(x is None for x in xs) else sum(x for x in xs if x is not None)


def combine(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, variant, metric) seen in any run: the median value and its verdict,
    the worst value, the per-run values and verdicts, the pooled k of n with its interval (or n),
    and the median bound."""
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["rows"]:
            cells.setdefault((row["scenario"], row["variant"], row["metric"]), []).append(row)
    out: list[dict[str, Any]] = []
    for (scenario, variant, metric), rows in cells.items():
        first = rows[0]
        unknown = _worst_first(first["better"])  # an unknown value ("never") is the worst
        known = [unknown if r["value"] is None else float(r["value"]) for r in rows]
        median: float | None = statistics.median(known)
        worst: float | None = max(known) if first["better"] == "lower" else min(known)
        median = None if median is None or math.isinf(median) else median
        worst = None if worst is None or math.isinf(worst) else worst
        k = _sum([r.get("k") for r in rows])
        n = _sum([r.get("n") for r in rows])
        row = verdict_row(scenario, variant, metric, median, first["target"], first["better"],
                          strict=metric.startswith("sheddable"), n=n, k=k)  # fmt: skip
        bounds = [float(r["bound"]) for r in rows if r.get("bound") is not None]
        row.update(worst=worst, values=[r["value"] for r in rows], passes=[bool(r["pass"]) for r in rows],
                   passed=sum(bool(r["pass"]) for r in rows), runs=len(rows),
                   bound=statistics.median(bounds) if bounds else None)  # fmt: skip
        out.append(row)
    return out


def median_cell(row: dict[str, Any]) -> str:
    """The median, its verdict and bound (when out of reach), the worst run, the pooled counts."""
    worst = "never" if row["worst"] is None else f"{row['worst']:.3g}"
    counts = counts_text(row)
    return verdict_text(row) + f"; worst {worst}" + (f" ({counts})" if counts else "")


def _run_line(path: str, run: dict[str, Any]) -> str:
    m = run.get("machine", {})
    load = (f", load average {m['loadavg'][0]:.2f} -> {m['loadavg_after'][0]:.2f}"
            if m.get("loadavg") and m.get("loadavg_after") else "")  # fmt: skip
    code = (run.get("code") or {}).get("commit")
    wall = f", {run['wall_s'] / 60:.1f} min" if run.get("wall_s") else ""
    refs = "; ".join(f"{k} {r['capacity_rps']:.0f} rps (unloaded p99 {r['unloaded_p99_ms']:.0f} ms)"
                     for k, r in (run.get("references") or {}).items())  # fmt: skip
    return (f"`{path}`: started {run.get('started', '?')}{wall}{load}" + (f", commit {str(code)[:10]}" if code else "")
            + (f"; capacities {refs}" if refs else ""))  # fmt: skip


def summary_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per flowctl variant: how many rows pass on the median."""
    out = []
    for v in ALL_VARIANTS:
        mine = [r for r in rows if r["variant"] == v and v in OURS]
        if mine:
            out.append(f"{v}: {sum(r['pass'] for r in mine)} of {len(mine)} rows pass on the median.")
    return out


def markdown(rows: list[dict[str, Any]], runs: Sequence[dict[str, Any]], paths: Sequence[str]) -> str:
    """The median table, the flowctl totals, the per-run values and the runs' provenance."""
    commands = sorted({str(r.get("command", "?")) for r in runs})
    lines = [(f"Median of {len(runs)} scorecard runs (`{'`, `'.join(commands)}`). Each cell: the median and its verdict; "
              "the worst run; in brackets the runs' requests pooled: k/n and the Wilson 95% interval of k/n for a ratio "
              "of counts, n requests for any other row."), "",
             *verdict_table(rows, median_cell), "", *summary_lines(rows)]  # fmt: skip
    if any("(bound " in verdict_text(r) for r in rows):
        lines += ["", "(bound x): the median of the runs' " + BOUND_LEGEND + "."]
    quick = any(r.get("quick") for r in runs)
    if quick:
        lines += ["", "`--quick` runs: short phases (far fewer than 400 requests in a false-shed phase); the figures mean nothing."]
    lines += ["", "Per run (value, verdict):", "", "| scenario | metric | variant | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
              + " |", "|---|---|---|" + "---|" * len(runs)]  # fmt: skip
    order = {key: i for i, key in enumerate(dict.fromkeys((r["scenario"], r["metric"]) for r in rows))}
    for r in sorted(rows, key=lambda r: (order[(r["scenario"], r["metric"])], _rank(r["variant"]))):
        vals = ["never" if v is None else f"{v:.3g}" for v in r["values"]]
        vals = [f"{v} {'pass' if ok else '**fail**'}" for v, ok in zip(vals, r["passes"])]
        lines.append(f"| {r['scenario']} | {r['metric']} | {r['variant']} | " + " | ".join(vals) + " |")
    lines += ["", "Runs:", "", *(f"{i + 1}. {_run_line(p, r)}" for i, (p, r) in enumerate(zip(paths, runs)))]
    return "\n".join(lines) + "\n"


def median_json(rows: list[dict[str, Any]], runs: Sequence[dict[str, Any]], paths: Sequence[str]) -> dict[str, Any]:
    return {
        "scenario": "scorecard-median",
        "runs": [{"path": p, "command": r.get("command"), "started": r.get("started"), "wall_s": r.get("wall_s"),
                  "code": r.get("code"), "quick": r.get("quick"), "loadavg": r.get("machine", {}).get("loadavg"),
                  "loadavg_after": r.get("machine", {}).get("loadavg_after")} for p, r in zip(paths, runs)],  # fmt: skip
        "rows": rows,
    }


def write_median(runs: Sequence[dict[str, Any]], paths: Sequence[str], json_out: str, plot_out: str | None = None) -> str:
    """Combine ``runs`` (read from ``paths``); write the JSON, the Markdown and the PNG; return the Markdown."""
    rows = combine(runs)
    md = markdown(rows, runs, paths)
    c.write_json(median_json(rows, runs, paths), json_out)
    stem = os.path.splitext(json_out)[0]
    with open(stem + ".md", "w") as f:
        f.write(md)
    plot(rows, ALL_VARIANTS, plot_out or stem + ".png", f"flowctl scorecard, median of {len(runs)} runs")
    print(md)
    return md


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scorecard_median", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("runs", nargs="+", help="scorecard JSON files (python -m bench scorecard --json ...)")
    p.add_argument("--json", dest="json_out", required=True, help="the combined JSON; the Markdown and PNG go beside it")
    a = p.parse_args(argv)
    runs = []
    for path in a.runs:
        with open(path) as f:
            runs.append(json.load(f))
    write_median(runs, a.runs, a.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
