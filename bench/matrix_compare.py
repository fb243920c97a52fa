"""``python -m bench matrix-compare BEFORE.json AFTER.json``: two matrix runs of the same seed, side by side.

A cell's verdict flips on a few requests (an overload cell of 150 requests has its p99 decided by
two), so pass counts alone mislead when a candidate is judged against main. Per variant this prints
what moves more steadily beside them:

- cells passing per target, before -> after;
- sheds pooled over the false-shed cells of each load (k of n, with the Wilson 95% interval);
- the geometric mean and the median of each overload target's value over the cells both runs have;
- every cell whose verdict changed, with both values.

Both runs should share a seed (the same shapes); the references (capacity, unloaded p99) are each
run's own, as the matrix measures them. A run of a few shapes (``matrix --only``) is compared on the
shapes every run of its seed has (``common_shapes``): the others' cells are left out of both sides.

A run that measured a candidate beside main (``matrix --code LABEL=DIR`` with variants
``VARIANT@LABEL``) is compared with itself: ``--pair LABEL RUN.json[,RUN2.json]`` sets each
VARIANT's cells (before) against VARIANT@LABEL's (after), same shapes, references and arrivals
(``split_pair``).

Either side may also be several runs (comma-separated files: repeats of a seed, other seeds): the
report then pools them (``pooled``), since one run cannot tell two candidates apart by fewer than a
few cells. Per variant: cells passing per target over all runs, with the Wilson 95% interval; sheds
pooled per load; how many cells are *unsteady* (passing on some runs of a side and failing on
others); and every cell (seed, shape, load, target) whose majority verdict differs between the
sides, with its pass count and median value on each (a tie, 1 of 2, is no majority: such a cell
counts among the unsteady ones, not as moved).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

from bench.stats import wilson_interval

__all__ = ["common_shapes", "compare", "main", "pooled", "split_pair"]

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


PooledKey = tuple[Any, int, str, float, str]  # seed, shape, variant, load, target


def _by_cell(runs: Sequence[dict[str, Any]]) -> dict[PooledKey, list[dict[str, Any]]]:
    cells: dict[PooledKey, list[dict[str, Any]]] = {}
    for run in runs:
        for c in run["cells"]:
            cells.setdefault((run.get("seed"), c["shape"], c["variant"], float(c["load"]), c["target"]), []).append(c)
    return cells


def _share(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{k} of {n} ({k / n if n else 0:.2f}, {lo:.2f}-{hi:.2f})"


def pooled(befores: Sequence[dict[str, Any]], afters: Sequence[dict[str, Any]]) -> list[str]:
    """The pooled report's lines (see the module): each side is any number of runs, of any seeds."""
    b, a = _by_cell(befores), _by_cell(afters)

    def side(runs: Sequence[dict[str, Any]]) -> str:
        return ", ".join(f"{_code(r)} seed {r.get('seed')}" for r in runs)

    lines = [f"before: {side(befores)}", f"after:  {side(afters)}"]
    for variant in sorted({k[2] for k in a} & {k[2] for k in b}):
        lines.append(f"\n{variant}")
        for target in sorted({k[4] for k in a if k[2] == variant}):
            counts = []
            for cells in (b, a):
                runs = [c for k, cs in cells.items() if k[2] == variant and k[4] == target for c in cs]
                counts.append(_share(sum(bool(c["pass"]) for c in runs), len(runs)))
            lines.append(f"  {target:10s} passing {counts[0]} -> {counts[1]}")
        for load in sorted({k[3] for k in a if k[2] == variant and k[4] == "false_shed"}):
            pooled_ = []
            for cells in (b, a):
                runs = [c for k, cs in cells.items() if k[2] == variant and k[3] == load and k[4] == "false_shed"
                        for c in cs if c["value"] is not None]  # fmt: skip
                k_ = sum(round(c["value"] * c["requests"]) for c in runs)
                n_ = sum(c["requests"] for c in runs)
                lo, hi = wilson_interval(k_, n_)
                pooled_.append(f"{k_}/{n_} ({lo:.4f}-{hi:.4f})")
            lines.append(f"  sheds at {load:g}x   {pooled_[0]} -> {pooled_[1]}")
        unsteady = []
        for cells in (b, a):
            keys = [k for k in cells if k[2] == variant]
            unsteady.append(f"{sum(len({bool(c['pass']) for c in cells[k]}) > 1 for k in keys)} of {len(keys)}")
        lines.append(f"  unsteady cells (passing on some runs, failing on others) {unsteady[0]} -> {unsteady[1]}")
        for k in sorted((k for k in a if k[2] == variant and k in b), key=lambda k: (str(k[0]), k[1:])):
            fb = sum(bool(c["pass"]) for c in b[k]) / len(b[k])
            fa = sum(bool(c["pass"]) for c in a[k]) / len(a[k])
            if (fb - 0.5) * (fa - 0.5) < 0:  # both sides have a majority (a tie has none) and they differ
                seed, shape, _, load, target = k
                lines.append(f"  moved: seed {seed} shape {shape} {load:g}x {target} {_verdicts(b[k])} -> {_verdicts(a[k])}")
    return lines


def _verdicts(cells: Sequence[dict[str, Any]]) -> str:
    values = [c["value"] for c in cells if c["value"] is not None]
    median = _fmt(statistics.median(values)) if values else "-"
    return f"passes {sum(bool(c['pass']) for c in cells)} of {len(cells)} (median {median})"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _code(run: dict[str, Any]) -> str:
    code = run.get("code") or {}
    return str(code.get("commit", "?"))[:10] if isinstance(code, dict) else str(code)[:10]


def common_shapes(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Keep, in each run, only the cells of the shapes every run of its seed measured (in place); the
    report lines saying what was left out (none when every run has the same shapes)."""
    by_seed: dict[Any, set[int]] = {}
    for run in runs:
        shapes = {c["shape"] for c in run["cells"]}
        seed = run.get("seed")
        by_seed[seed] = by_seed[seed] & shapes if seed in by_seed else shapes
    lines = []
    for run in runs:
        keep = by_seed[run.get("seed")]
        if any(c["shape"] not in keep for c in run["cells"]):
            run["cells"] = [c for c in run["cells"] if c["shape"] in keep]
            lines.append(f"seed {run.get('seed')}: only shapes {', '.join(map(str, sorted(keep)))} (as in every run of the seed)")
    return sorted(set(lines))


def split_pair(run: dict[str, Any], label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run with variants VARIANT and VARIANT@``label`` -> (the run of VARIANT's cells, the run of
    VARIANT@``label``'s named VARIANT, its code the label's checkout). Only variants the run has
    both ways are kept. Raises ValueError when there are none."""
    tag = "@" + label
    names = {c["variant"] for c in run["cells"]}
    paired = {v for v in names if "@" not in v and v + tag in names}
    if not paired:
        raise ValueError(f"no variant measured both plain and as VARIANT{tag} (variants: {', '.join(sorted(names))})")
    before = {**run, "cells": [c for c in run["cells"] if c["variant"] in paired]}
    after_cells = [{**c, "variant": c["variant"][: -len(tag)]} for c in run["cells"] if c["variant"][: -len(tag)] in paired
                   and c["variant"].endswith(tag)]  # fmt: skip
    after = {**run, "cells": after_cells, "code": (run.get("codes") or {}).get(label, {"commit": label})}
    return before, after


def _load(p: argparse.ArgumentParser, paths: str) -> list[dict[str, Any]]:
    runs = []
    for path in paths.split(","):
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, ValueError) as e:
            p.error(f"{path}: {e}")
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench matrix-compare", description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="a `python -m bench matrix --json` result (main); several, comma-separated: pooled; "
                   "with --pair: the paired runs")  # fmt: skip
    p.add_argument("after", nargs="?", help="another, of the same seed (the candidate); several, comma-separated: pooled")
    p.add_argument("--pair", metavar="LABEL", help="compare VARIANT with VARIANT@LABEL within each run given as BEFORE")
    a = p.parse_args(argv)
    sides: list[list[dict[str, Any]]] = []
    if a.pair:
        if a.after:
            p.error("--pair takes the paired runs as one argument (comma-separated), not two sides")
        sides = [[], []]
        for run in _load(p, a.before):
            try:
                b, af = split_pair(run, a.pair)
            except ValueError as e:
                p.error(str(e))
            sides[0].append(b)
            sides[1].append(af)
    elif not a.after:
        p.error("give BEFORE and AFTER, or --pair LABEL with the paired runs")
    else:
        sides = [_load(p, a.before), _load(p, a.after)]
    for line in common_shapes(sides[0] + sides[1]):
        print(line)
    if len(sides[0]) == 1 and len(sides[1]) == 1:
        print("\n".join(compare(sides[0][0], sides[1][0])))
    else:
        print("\n".join(pooled(sides[0], sides[1])))
    return 0
