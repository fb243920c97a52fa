"""``python -m bench matrix-compare BEFORE.json AFTER.json``: two matrix runs of the same seed, side by side.

A cell's verdict flips on a few requests (an overload cell of 150 requests has its p99 decided by
two), so pass counts alone mislead when a candidate is judged against main. Per variant this prints
what moves more steadily beside them:

- cells passing per target, before -> after;
- sheds pooled over the false-shed cells of each load (k of n, with the Wilson 95% interval);
- the geometric mean and the median of each overload target's value over the cells both runs have;
- every cell whose verdict changed, with both values.

Both runs should share a seed (the same shapes); the references (capacity, unloaded p99) are each
run's own, as the matrix measures them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

from bench.stats import wilson_interval

__all__ = ["compare", "main"]

Key = tuple[int, str, float, str]  # shape, variant, load, target


def _cells(run: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {(c["shape"], c["variant"], float(c["load"]), c["target"]): c for c in run["cells"]}


def _pooled(cells: dict[Key, dict[str, Any]], variant: str, load: float) -> tuple[int, int]:
    """Sheds and requests over the false-shed cells of ``variant`` at ``load``."""
    k = n = 0
    for (_, v, ld, target), c in cells.items():
        if v == variant and ld == load and target == "false_shed" and c["value"] is not None:
            n += c["requests"]
            k += round(c["value"] * c["requests"])
    return k, n


def _geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(max(v, 1e-9)) for v in values))


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The report's lines (see the module)."""
    b, a = _cells(before), _cells(after)
    lines = [f"seed {before.get('seed')} -> {after.get('seed')}; code {_code(before)} -> {_code(after)}"]
    variants = sorted({k[1] for k in a} & {k[1] for k in b})
    for variant in variants:
        lines.append(f"\n{variant}")
        for target in sorted({k[3] for k in a if k[1] == variant}):
            kb = [k for k in b if k[1] == variant and k[3] == target]
            ka = [k for k in a if k[1] == variant and k[3] == target]
            line = f"  {target:10s} passing {sum(b[k]['pass'] for k in kb)} of {len(kb)} -> {sum(a[k]['pass'] for k in ka)} of {len(ka)}"
            both = [k for k in ka if k in b and a[k]["value"] is not None and b[k]["value"] is not None]
            if target != "false_shed" and both:
                line += (f"; geometric mean {_geomean([b[k]['value'] for k in both]):.3g} -> {_geomean([a[k]['value'] for k in both]):.3g}"
                         f", median {statistics.median(b[k]['value'] for k in both):.3g} -> {statistics.median(a[k]['value'] for k in both):.3g}")  # fmt: skip
            lines.append(line)
        for load in sorted({k[2] for k in a if k[1] == variant and k[3] == "false_shed"}):
            (kb_, nb), (ka_, na) = _pooled(b, variant, load), _pooled(a, variant, load)
            lo_b, hi_b = wilson_interval(kb_, nb)
            lo_a, hi_a = wilson_interval(ka_, na)
            lines.append(f"  sheds at {load:g}x   {kb_}/{nb} ({lo_b:.4f}-{hi_b:.4f}) -> {ka_}/{na} ({lo_a:.4f}-{hi_a:.4f})")
        for k in sorted(k for k in a if k[1] == variant and k in b and a[k]["pass"] != b[k]["pass"]):
            shape, _, load, target = k
            verdict = "passes" if a[k]["pass"] else "fails"
            lines.append(f"  moved: shape {shape} {load:g}x {target} {_fmt(b[k]['value'])} -> {_fmt(a[k]['value'])} ({verdict})")
    return lines


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _code(run: dict[str, Any]) -> str:
    code = run.get("code") or {}
    return str(code.get("commit", "?"))[:10] if isinstance(code, dict) else str(code)[:10]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench matrix-compare", description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="a `python -m bench matrix --json` result (main)")
    p.add_argument("after", help="another, of the same seed (the candidate)")
    a = p.parse_args(argv)
    runs = []
    for path in (a.before, a.after):
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, ValueError) as e:
            p.error(f"{path}: {e}")
    print("\n".join(compare(runs[0], runs[1])))
    return 0
