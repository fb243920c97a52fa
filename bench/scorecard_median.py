"""Medians over several scorecard runs: one table, a row per (scenario, metric), a column per variant.

    .venv/bin/python -m bench.scorecard_median bench/results/scorecard_haproxy_run*.json \
        --md bench/results/scorecard_haproxy.md --json bench/results/scorecard_haproxy.json

Each cell is the median of the runs' values (a value a run could not measure, such as a recovery
that never came, counts as the worst), its verdict against the row's target, and how many of the
runs passed (k/n). Runs are whole ``python -m bench scorecard`` runs (each measures its own
references), so a cell's spread is run to run, machine load included.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from bench.scenarios.scorecard import ALL_VARIANTS, verdict_row

__all__ = ["combine", "main", "markdown"]


def combine(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, variant, metric) seen in any run: the median value, its verdict, k of n."""
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["rows"]:
            cells.setdefault((row["scenario"], row["variant"], row["metric"]), []).append(row)
    out: list[dict[str, Any]] = []
    for (scenario, variant, metric), rows in cells.items():
        first = rows[0]
        worst = math.inf if first["better"] == "lower" else -math.inf  # an unknown value ("never") is the worst
        median: float | None = statistics.median(worst if r["value"] is None else r["value"] for r in rows)
        if median is not None and math.isinf(median):
            median = None
        row = verdict_row(scenario, variant, metric, median, first["target"], first["better"],
                          strict=metric.startswith("sheddable"))  # fmt: skip
        row.update(values=[r["value"] for r in rows], passed=sum(bool(r["pass"]) for r in rows), runs=len(rows))
        out.append(row)
    return out


def markdown(rows: list[dict[str, Any]], runs: Sequence[dict[str, Any]], paths: Sequence[str]) -> str:
    keys = list(dict.fromkeys((r["scenario"], r["metric"]) for r in rows))
    shown = [v for v in ALL_VARIANTS if any(r["variant"] == v for r in rows)]
    cells = {(r["scenario"], r["metric"], r["variant"]): r for r in rows}
    lines = [f"Medians of {len(runs)} scorecard runs ({', '.join(paths)}); each cell: median, verdict, runs passing.",
             "Runs: " + "; ".join(f"`{r.get('command', '?')}` started {r.get('started', '?')}, load average "
                                  f"{r['machine']['loadavg'][0]:.2f} -> {r['machine']['loadavg_after'][0]:.2f}"
                                  for r in runs),  # fmt: skip
             "", "| scenario | metric | target | " + " | ".join(shown) + " |", "|---|---|---|" + "---|" * len(shown)]
    for s, m in keys:
        first = next(cells[(s, m, v)] for v in shown if (s, m, v) in cells)
        op = "<=" if first["better"] == "lower" else (">" if m.startswith("sheddable") else ">=")
        vals = []
        for v in shown:
            r = cells.get((s, m, v))
            if r is None:
                vals.append("")
                continue
            val = "never" if r["value"] is None else f"{r['value']:.3g}"
            vals.append(f"{val} {'pass' if r['pass'] else '**fail**'} ({r['passed']}/{r['runs']})")
        lines.append(f"| {s} | {m} | {op} {first['target']:g} | " + " | ".join(vals) + " |")
    ours = [r for r in rows if r["variant"] in ("flowctl-sidecar", "flowctl-haproxy", "flowctl-inprocess")]
    for v in shown:
        mine = [r for r in ours if r["variant"] == v]
        if mine:
            lines.append(f"\n{v}: {sum(r['pass'] for r in mine)} of {len(mine)} rows pass on the median")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scorecard_median", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("runs", nargs="+", help="scorecard JSON files (python -m bench scorecard --json ...)")
    p.add_argument("--md", help="write the Markdown table here")
    p.add_argument("--json", dest="json_out", help="write the combined rows here")
    a = p.parse_args(argv)
    runs = []
    for path in a.runs:
        with open(path) as f:
            runs.append(json.load(f))
    rows = combine(runs)
    md = markdown(rows, runs, a.runs)
    print(md)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"runs": a.runs, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
