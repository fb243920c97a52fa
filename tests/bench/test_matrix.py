"""``python -m bench matrix``: the interval, the sampling, the schedules and the verdicts without
root; the ``--quick`` run itself with root and cgroup v1 (structure and sanity, no timing)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from bench.loadgen import WARMUP, LoadSpec, arrivals_by_label
from bench.scenarios import matrix as mx
from bench.scenarios import common
from bench.scenarios.common import Capacity
from bench.scenarios.scorecard import Reference
from bench.stats import wilson_interval
from tests.realenv import need_cgroup_v1

REPO = Path(__file__).resolve().parents[2]
CELL_FIELDS = {"shape", "variant", "target", "value", "limit", "pass", "requests", "shed_by_reason"}
SUMMARY_FIELDS = {"variant", "target", "passed", "cells", "fraction", "interval"}


# ---------------------------------------------------------------- the interval


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (8, 8, 0.6756, 1.0),
        (19, 20, 0.7639, 0.9911),
        (1, 1, 0.2065, 1.0),
    ],
)
def test_wilson_interval_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_holds_the_fraction_and_mirrors() -> None:
    for n in range(1, 60):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            assert lo < hi
            mlo, mhi = wilson_interval(n - k, n)
            assert (lo, hi) == pytest.approx((1.0 - mhi, 1.0 - mlo), abs=1e-12)
        # more trials, the same fraction: a narrower interval
    assert wilson_interval(40, 50)[0] > wilson_interval(4, 5)[0]
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


# ---------------------------------------------------------------- shapes and schedules


def test_shapes_are_reproducible_stratified_and_in_range() -> None:
    shapes = mx.sample_shapes(8, seed=3)
    assert shapes == mx.sample_shapes(8, seed=3)
    assert shapes != mx.sample_shapes(8, seed=4)
    lo_q, hi_q = mx.QUOTA_RANGE
    width = (hi_q - lo_q) / 8
    for i, cpus in enumerate(sorted(s.cpus for s in shapes)):  # a Latin hypercube: one shape per eighth of the range
        assert lo_q + i * width - 0.005 <= cpus <= lo_q + (i + 1) * width + 0.005  # (quotas are rounded to 0.01)
    for s in shapes:
        assert lo_q <= s.cpus <= hi_q
        assert mx.WORK_RANGE_MS[0] <= s.work_ms <= mx.WORK_RANGE_MS[1]
        assert s.cpus * 1000.0 / s.work_ms >= mx.DEFAULT.min_rate_rps * 0.99  # work rounded to 0.1 ms
        assert s.handler in mx.HANDLER_CHOICES
        assert (s.burst_period_s is None) == (s.pattern == "steady")
        if s.burst_period_s is not None:
            assert mx.BURST_PERIOD_RANGE_S[0] <= s.burst_period_s <= mx.BURST_PERIOD_RANGE_S[1]
    assert sorted(s.pattern for s in shapes) == ["bursts"] * 4 + ["steady"] * 4
    counts = {h: sum(s.handler == h for s in shapes) for h in mx.HANDLER_CHOICES}
    assert max(counts.values()) - min(counts.values()) <= 1
    assert [s.index for s in shapes] == list(range(1, 9))
    whole = mx.sample_shapes(40, seed=1, min_rate_rps=0)
    assert max(s.work_ms / s.cpus for s in whole) > 25.0  # the heavy corner is reachable with --min-rate 0


def test_a_draw_over_the_time_budget_is_paired_again() -> None:
    def cost(shapes: Sequence[mx.Shape]) -> float:
        return sum(mx.predicted_s(s, mx.DEFAULT, mx.VARIANTS) for s in shapes)

    budget = 19.5 * 60
    for seed in range(1, 30):
        drawn = mx.sample_shapes(8, seed)
        kept = mx.sample_shapes(8, seed, cost=cost, budget=budget)
        if cost(drawn) <= budget:
            assert kept == drawn
            continue
        assert cost(kept) <= budget < cost(drawn)
        assert sorted(s.cpus for s in kept) == sorted(s.cpus for s in drawn)  # the same quota slices
        assert [(s.handler, s.pattern, s.burst_period_s) for s in kept] == [(s.handler, s.pattern, s.burst_period_s) for s in drawn]
    assert all(cost(mx.sample_shapes(8, seed, cost=cost, budget=budget)) <= budget for seed in range(1, 30))
    assert mx.sample_shapes(8, 7) == mx.sample_shapes(8, 7, cost=cost, budget=budget)  # seed 7 fits as drawn
    # A budget no pairing meets: the cheapest pairing tried.
    assert cost(mx.sample_shapes(8, 1, cost=cost, budget=0.0)) < cost(mx.sample_shapes(8, 1))


def test_only_measures_a_few_shapes_of_the_same_draw() -> None:
    """``--only 6,8``: the full run's shapes 6 and 8 (the same draw, so the same arrivals), nothing else."""
    full = mx.Matrix(mx.DEFAULT, 2, mx.VARIANTS, 1000.0)
    some = mx.Matrix(mx.DEFAULT, 2, mx.VARIANTS, 1000.0, only=mx.parse_only("8,6", mx.DEFAULT.shapes))
    assert [s.index for s in some.shapes] == [6, 8]
    assert some.shapes == [s for s in full.shapes if s.index in (6, 8)]
    assert some.seed_of(some.shapes[0]) == full.seed_of(full.shapes[5])
    assert mx.parse_only(None, 8) == () and mx.parse_only("", 8) == ()
    for bad in ("0", "9", "x", ","):
        with pytest.raises(SystemExit):
            mx.parse_only(bad, 8)
    with pytest.raises(ValueError):
        mx.Matrix(mx.DEFAULT, 2, mx.VARIANTS, 1000.0, only=(9,))


def test_each_side_of_a_pair_runs_first_on_half_the_shapes() -> None:
    """Odd shapes run the variants as given, even ones reversed; over 8 shapes each side of every
    pair leads 4 times, and a shape's order does not depend on which shapes ``--only`` picks."""
    variants = ["flowctl-inprocess", "flowctl-inprocess@cand", "flowctl-sidecar@cand", "flowctl-sidecar"]
    assert mx.shape_order(variants, 1) == variants
    assert mx.shape_order(variants, 2) == variants[::-1]
    for base in ("flowctl-inprocess", "flowctl-sidecar"):
        firsts = []
        for index in range(1, 9):
            order = [v for v in mx.shape_order(variants, index) if v.split("@")[0] == base]
            firsts.append(order[0])
        assert sorted(set(firsts)) == sorted(v for v in variants if v.split("@")[0] == base)
        assert all(firsts.count(v) == 4 for v in set(firsts))


def _spec(sched: mx.Schedule, rate: float, seed: int) -> LoadSpec:
    return LoadSpec(url="http://127.0.0.1/", rate_rps=rate, duration_s=sched.seconds, seed=seed, phases=tuple(sched.phases))


@pytest.mark.parametrize("period", [None, 0.3, 2.5])
def test_false_shed_cells_hold_their_requests_and_never_exceed_their_load(period: float | None) -> None:
    shape = mx.Shape(1, 0.5, 5.0, "blocking", "steady" if period is None else "bursts", period)
    plan = mx.DEFAULT
    sched = mx.schedule(shape, mx.LOADS, 37.0, plan, seed=1001)
    counts = arrivals_by_label(_spec(sched, 37.0, 1001))
    assert [w.load for w in sched.cells] == sorted(mx.LOADS)
    assert sched.phases[0].label == WARMUP
    for w in sched.cells:
        inside = [ph for ph in sched.phases if ph.label in (w.label, w.label + " calm")]
        assert sum(ph.seconds for ph in inside) == pytest.approx(w.end_s - w.start_s)
        if w.overload:
            assert w.end_s - w.start_s >= plan.overload_s - 1e-9
            if period is not None:
                assert sum(ph.multiplier == w.load for ph in inside) >= 2  # at least two bursts
                assert sum(ph.seconds for ph in inside if ph.multiplier == w.load) == pytest.approx((w.end_s - w.start_s) / 2)
            i = sched.phases.index(inside[0])
            assert sched.phases[i - 1].label == "gap" and sched.phases[i - 1].multiplier == mx.CALM
        else:
            assert counts[w.label] >= plan.min_requests  # the draws this seed will really send
            assert max(ph.multiplier for ph in inside) == w.load
    starts = [w.start_s for w in sched.cells]
    assert starts == sorted(starts) and all(a.end_s <= b.start_s for a, b in zip(sched.cells, sched.cells[1:]))


@pytest.mark.parametrize("period", [None, 0.3, 2.5])
def test_overload_cells_last_long_enough_for_min_admitted_answers_at_saturation(period: float | None) -> None:
    shape = mx.Shape(1, 0.3, 10.0, "blocking", "steady" if period is None else "bursts", period)
    cap, sat = 20.0, 30.0
    plain = mx.schedule(shape, mx.LOADS, cap, mx.DEFAULT, seed=None)
    sized = mx.schedule(shape, mx.LOADS, cap, mx.DEFAULT, seed=None, saturation_rps=sat)
    for before, after in zip(plain.cells, sized.cells, strict=True):
        if not after.overload:  # false-shed cells are sized by their requests, as before
            assert after.end_s - after.start_s == pytest.approx(before.end_s - before.start_s)
            continue
        at_load = [ph for ph in sized.phases if ph.label == after.label and ph.multiplier == after.load]
        assert min(after.load * cap, sat) * sum(ph.seconds for ph in at_load) >= mx.DEFAULT.min_admitted - 1e-6
        assert after.end_s - after.start_s > before.end_s - before.start_s
    # A service that answers 300 in well under 2.5 s keeps the plain length.
    fast = mx.schedule(shape, mx.LOADS, 400.0, mx.DEFAULT, seed=None, saturation_rps=600.0)
    assert fast.seconds == pytest.approx(mx.schedule(shape, mx.LOADS, 400.0, mx.DEFAULT, seed=None).seconds)


def test_the_draw_is_judged_at_the_lengths_a_run_will_have() -> None:
    """Before any reference, the prediction sizes overload cells for ``min_admitted`` answers at full
    use of the quota, and a reference by the capacity guess (low capacities take longer): the
    default draws of seeds 1-10 are predicted within 19 minutes, and their shapes are pinned here."""
    shape = mx.Shape(1, 0.22, 2.4, "blocking", "bursts", 1.19)
    without = replace(mx.DEFAULT, min_admitted=0)
    assert mx.predicted_s(shape, mx.DEFAULT, mx.VARIANTS) > mx.predicted_s(shape, without, mx.VARIANTS)
    assert mx.predicted_s(shape, mx.DEFAULT, mx.VARIANTS, 36.7, saturation_rps=73.0) > mx.predicted_s(
        shape, without, mx.VARIANTS, 36.7, saturation_rps=73.0)
    assert mx.reference_guess_s(replace(shape, work_ms=10.0)) > mx.reference_guess_s(shape) > mx.REFERENCE_BASE_S
    for seed in range(1, 11):
        shapes = mx.Matrix(mx.DEFAULT, seed, mx.VARIANTS, 1000.0).shapes
        assert sum(mx.predicted_s(s, mx.DEFAULT, mx.VARIANTS) for s in shapes) < 19.0 * 60
    drawn = {seed: [(s.cpus, s.work_ms, s.handler, s.burst_period_s) for s in mx.Matrix(mx.DEFAULT, seed, mx.VARIANTS, 1000.0).shapes]
             for seed in (1, 2, 3, 4)}  # fmt: skip
    assert [drawn[1][0], drawn[1][-1]] == [(0.98, 7.3, "mixed", None), (0.38, 1.2, "blocking", 0.4)]
    assert [drawn[2][0], drawn[2][-1]] == [(0.77, 4.4, "yielding", None), (0.51, 3.9, "mixed", None)]
    assert drawn[3][:2] == [(0.22, 3.0, "blocking", None), (0.8, 5.2, "mixed", None)]
    assert drawn[4][-1] == (0.22, 1.1, "blocking", 1.19)


def test_peers_run_at_0_9x_and_4x_only() -> None:
    assert mx.variant_loads("kratos", mx.DEFAULT) == (0.9, 4.0)
    assert mx.variant_loads("none", mx.DEFAULT) == (0.9, 4.0)
    assert mx.variant_loads("flowctl-sidecar", mx.DEFAULT) == mx.LOADS


# ---------------------------------------------------------------- verdicts, summary, worst cells


def _reference() -> Reference:
    cap = Capacity(capacity_rps=40.0, unloaded_p99_ms=10.0, unloaded_p50_ms=6.0, probes=[], cpus=0.5, handler="blocking")
    return Reference(0.5, 5.0, "blocking", cap, 80.0, [], idle_cores=0.01, answer_cpu_ms=0.6)


def _stats(sent: int, rejected: int, p99_ms: float | None, goodput_rps: float, offered_rps: float) -> dict[str, Any]:
    return {"sent": sent, "rejected": rejected, "shed_ratio": rejected / sent, "admitted_p99_ms": p99_ms, "goodput_rps": goodput_rps,
            "offered_rps": offered_rps, "timeouts": 0, "errors": 0}  # fmt: skip


def test_cells_judge_each_target_and_count_sheds_by_reason_inside_the_cell() -> None:
    shape = mx.Shape(1, 0.5, 5.0, "blocking", "steady")
    ref = _reference()
    sched = mx.schedule(shape, (0.9, 4.0), 40.0, mx.DEFAULT, seed=None)
    fs, ov = sched.cells
    lg = {"phases": {"0.9x": _stats(400, 8, 20.0, 36.0, 36.0), "4x": {**_stats(400, 250, 50.0, 50.0, 160.0), "send_lag_p99_ms": 9.0}},
          "loadgen": {"send_lag_p99_ms": 1.0, "send_overrun_s": 0.0}}  # fmt: skip
    samples = [{"t_s": fs.start_s - 0.2, "shed_by_reason": {}, "engagements": {"hot": 1, "freeze": 0}},
               {"t_s": fs.end_s, "shed_by_reason": {"cpu": 8}, "shed_by_stage": {"period/engaged": 8},
                "engagements": {"hot": 3, "freeze": 0}},
               {"t_s": ov.start_s, "shed_by_reason": {"cpu": 8}, "shed_by_stage": {"period/engaged": 8}},
               {"t_s": ov.end_s + 0.3, "shed_by_reason": {"cpu": 58, "limit": 200},
                "shed_by_stage": {"period/engaged": 50, "period/not_engaged": 200}, "engagements": {"hot": 3, "freeze": 2}}]  # fmt: skip
    cells = {(x["variant"], x["target"]): x for v in ("flowctl-sidecar", "flowctl-inprocess")
             for x in mx.cells_of(shape, v, ref, sched, lg, samples)}  # fmt: skip
    for x in cells.values():
        assert CELL_FIELDS <= set(x)
    f = cells[("flowctl-sidecar", "false_shed")]
    assert f["value"] == pytest.approx(0.02) and f["pass"] is False and f["requests"] == 400
    assert f["shed_by_reason"] == {"cpu": 8} and f["shed"] == 8
    assert f["shed_by_stage"] == {"period/engaged": 8} and f["engagements"] == {"hot": 2}  # counted inside the cell
    assert f["harness_lagged"] is False and cells[("flowctl-sidecar", "p99")]["harness_lagged"] is True  # 9 ms late at p99
    p = cells[("flowctl-sidecar", "p99")]
    assert p["value"] == pytest.approx(5.0) and p["pass"] is False
    assert p["shed_by_reason"] == {"cpu": 50, "limit": 200}
    assert p["shed_by_stage"] == {"period/engaged": 42, "period/not_engaged": 200} and p["engagements"] == {"freeze": 2}
    g = cells[("flowctl-sidecar", "goodput")]
    assert g["value"] == pytest.approx(50.0 / 80.0) and g["pass"] is False and "bound" not in g
    gi = cells[("flowctl-inprocess", "goodput")]
    bound = ref.in_process_bound(160.0)
    assert bound is not None and bound < 1.0
    assert gi["bound"] == pytest.approx(bound)
    assert gi["value"] == pytest.approx(50.0 / (80.0 * bound))  # judged against what a limiter in the group can reach
    assert gi["goodput_over_saturation"] == pytest.approx(50.0 / 80.0)


def test_a_lifetime_that_did_not_run_fails_every_cell() -> None:
    shape = mx.Shape(1, 0.5, 5.0, "blocking", "steady")
    sched = mx.schedule(shape, (0.9, 4.0), 40.0, mx.DEFAULT, seed=None)
    cells = mx.cells_of(shape, "kratos", _reference(), sched, None, [], "RuntimeError: no")
    assert len(cells) == 3 and all(x["pass"] is False and x["value"] is None and x["error"] for x in cells)


def test_summary_and_worst_cells() -> None:
    def cell(variant: str, target: str, value: float | None, ok: bool, load: float = 4.0) -> dict[str, Any]:
        t = next(t for t in mx.TARGETS if t.name == target)
        return {"shape": 1, "variant": variant, "target": target, "load": load, "value": value, "limit": t.limit,
                "better": t.better, "pass": ok, "requests": 100, "shed_by_reason": None}  # fmt: skip

    cells = [cell("flowctl-sidecar", "p99", 2.0, True), cell("flowctl-sidecar", "p99", 9.0, False),
             cell("flowctl-sidecar", "goodput", 0.5, False), cell("flowctl-sidecar", "false_shed", 0.03, False, 0.9),
             cell("flowctl-inprocess", "goodput", None, False), cell("none", "p99", 100.0, False)]  # fmt: skip
    summary = mx.summarize(cells, ["flowctl-sidecar", "flowctl-inprocess", "none"])
    rows = {(s["variant"], s["target"]): s for s in summary}
    assert all(SUMMARY_FIELDS <= set(s) for s in summary)
    p99 = rows[("flowctl-sidecar", "p99")]
    assert (p99["passed"], p99["cells"], p99["fraction"]) == (1, 2, 0.5)
    assert p99["interval"] == pytest.approx(list(wilson_interval(1, 2)))
    assert ("flowctl-inprocess", "p99") not in rows
    worst = mx.worst(cells, n=3)
    assert [(x["variant"], x["target"]) for x in worst] == [("flowctl-inprocess", "goodput"), ("flowctl-sidecar", "false_shed"),
                                                            ("flowctl-sidecar", "p99")]  # fmt: skip
    assert mx.severity(worst[1]) == pytest.approx(3.0) and math.isinf(mx.severity(worst[0]))


def test_markdown_shows_the_summary_the_worst_cells_and_every_cell() -> None:
    shape = mx.Shape(1, 0.5, 5.0, "blocking", "bursts", 0.5)
    ref = _reference()
    sched = mx.schedule(shape, (0.9, 4.0), 40.0, mx.DEFAULT, seed=None)
    lg = {"phases": {"0.9x": _stats(400, 8, 20.0, 36.0, 36.0), "4x": {**_stats(400, 250, 50.0, 50.0, 160.0), "send_lag_p99_ms": 9.0}},
          "loadgen": {}}  # fmt: skip
    cells = mx.cells_of(shape, "flowctl-sidecar", ref, sched, lg, [{"t_s": 0.0, "shed_by_reason": {"queue": 3}}])
    out = {"command": "python -m bench matrix --seed 3", "started": "2026-12-04T00:00:00Z", "wall_s": 60.0, "seed": 3,
           "machine": {"cpus": 2, "cpu_model": "x", "loadavg": [0.5], "loadavg_after": [0.6]},
           "code": {"commit": "0123456789abcdef", "changed": []}, "targets": [vars(t) for t in mx.TARGETS],
           "variants": ["flowctl-sidecar"], "shapes": [{"index": 1, "label": shape.label, "reference": ref.as_dict(),
                                                        "in_process_bound_4x": 0.9}],
           "cells": cells, "summary": mx.summarize(cells, ["flowctl-sidecar"]), "worst": mx.worst(cells)}  # fmt: skip
    md = mx.markdown(out)
    assert md.startswith("`python -m bench matrix --seed 3`") and "commit 0123456789" in md
    assert "| flowctl-sidecar | false_shed | 0 of 1 | 0.00 | 0.00-0.79 |" in md
    assert "| 1 | 0.9x | **2%** |" in md and "| 1 | 4x | **5x** / **0.62** |" in md
    assert "shape 1 flowctl-sidecar 4x (9 ms)" in md  # the late sends are named
    assert "fewer than 100 admitted" not in md  # 150 admitted at 4x
    few = [{**x, "shed": 340} if x["target"] == "p99" else x for x in cells]
    assert "slowest request's (one slow request decides the cell) in: shape 1 flowctl-sidecar 4x (60 admitted)." in mx.markdown(
        {**out, "cells": few})  # fmt: skip


# ---------------------------------------------------------------- the quick run (root, cgroups)


@pytest.mark.real
@pytest.mark.slow
def test_matrix_quick_writes_cells_and_a_summary(tmp_path: Path) -> None:
    need_cgroup_v1("cpu", "cpuacct", "cpuset")
    out = tmp_path / "matrix.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "matrix", "--quick", "--seed", "5", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=280)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["seed"] == 5 and data["quick"] is True and data["machine"]["cpus"] >= 1
    assert data["command"].startswith("python -m bench matrix --quick")
    assert len(data["shapes"]) == 1
    shape = data["shapes"][0]
    ref = shape["reference"]
    assert ref["capacity_rps"] > 0 and ref["unloaded_p99_ms"] > 0 and ref["saturation_rps"] > 0
    assert set(data["variants"]) == set(mx.VARIANTS)
    cells = data["cells"]
    for x in cells:
        assert CELL_FIELDS <= set(x), x
        assert x["shape"] == shape["index"] and x["error"] is None
        assert x["requests"] > 0 and 0 <= x["shed"] <= x["requests"]
        assert x["send_lag_p99_ms"] is not None and x["send_lag_p99_ms"] >= 0
        assert x["value"] is None or (math.isfinite(x["value"]) and x["value"] >= 0)
        assert x["pass"] == (x["value"] is not None and (x["value"] <= x["limit"] if x["better"] == "lower" else x["value"] >= x["limit"]))
    # every variant has a false-shed cell at 0.9x and p99 and goodput cells at 4x
    got = {(x["variant"], x["target"], x["load"]) for x in cells}
    for v in mx.VARIANTS:
        assert {(v, "false_shed", 0.9), (v, "p99", 4.0), (v, "goodput", 4.0)} <= got
    assert all(x["shed_by_reason"] is None for x in cells if x["variant"] == "none")
    assert all(x["value"] == 0.0 for x in cells if x["variant"] == "none" and x["target"] == "false_shed")
    for s in data["summary"]:
        assert SUMMARY_FIELDS <= set(s)
        lo, hi = s["interval"]
        assert 0.0 <= lo <= s["fraction"] <= hi <= 1.0
        assert s["fraction"] == pytest.approx(s["passed"] / s["cells"])
    assert sum(s["cells"] for s in data["summary"]) == len(cells)
    for life in data["lifetimes"]:
        assert life["error"] is None
        assert sum(st["sent"] for st in life["phases"].values()) > 0
    md = (tmp_path / "matrix.md").read_text()
    assert "| variant | target | passed | fraction | 95% interval |" in md
    assert "passed" in proc.stdout


def test_a_candidate_checkout_runs_as_variant_at_label(tmp_path: Path) -> None:
    """``--code cand=DIR`` and ``flowctl-sidecar@cand``: the same variant (its loads, its goodput
    reference) from another checkout; unknown labels, bad directories and repeats are refused."""
    assert mx.split_variant("flowctl-sidecar@cand") == ("flowctl-sidecar", "cand")
    assert mx.split_variant("kratos") == ("kratos", None)
    assert mx.variant_loads("kratos@cand", mx.DEFAULT) == mx.PEER_LOADS
    assert mx.variant_loads("flowctl-inprocess@cand", mx.DEFAULT) == mx.LOADS
    for d in ("flowctl", "bench", "sidecar"):
        (tmp_path / d).mkdir()
    codes = mx.parse_codes([f"cand={tmp_path}"])
    assert codes == {"cand": str(tmp_path)}
    assert mx.parse_variants("flowctl-inprocess,flowctl-inprocess@cand", codes) == ["flowctl-inprocess", "flowctl-inprocess@cand"]
    for bad in (["cand"], ["c/d=" + str(tmp_path)], [f"cand={tmp_path / 'flowctl'}"], [f"cand={tmp_path}", f"cand={tmp_path}"]):
        with pytest.raises(SystemExit):
            mx.parse_codes(bad)
    for bad_variants in ("flowctl-inprocess@other", "nope@cand", "kratos,kratos"):
        with pytest.raises(SystemExit):
            mx.parse_variants(bad_variants, codes)
    m = mx.Matrix(mx.QUICK, 5, ["flowctl-inprocess", "flowctl-inprocess@cand", "kratos@cand"], 1000.0, codes=codes)
    assert m.bases == ["flowctl-inprocess", "kratos"]
    assert [s.index for s in m.shapes] == [s.index for s in mx.Matrix(mx.QUICK, 5, ["none"], 1000.0).shapes]


def test_the_monitor_keeps_the_limiters_stage_counters_flat() -> None:
    """``extract_state`` on a real snapshot: shed_by_stage flattened to "stage/state", engagements and
    the engaged flag kept (the cells count them inside each cell)."""
    from flowctl.limit.fixed import FixedLimit
    from flowctl.limiter import Limiter, Rejection
    from flowctl.signal import CpuReading, StaticSignal

    sig = StaticSignal("container", CpuReading(at=1.0, utilization=0.95, utilization_smoothed=0.95, seq=1))
    lim = Limiter(sig, FixedLimit(1))
    first, second = lim.acquire(), lim.acquire()
    assert not isinstance(first, Rejection) and isinstance(second, Rejection)
    state = common.extract_state({"snapshot": lim.snapshot().as_dict()})
    assert state["shed_by_stage"] == {"limit/engaged": 1}
    assert state["engaged"] is True and state["engagements"]["hot"] == 1
