"""``python -m bench scorecard`` without load: k of n and the interval on its rows, the phase
length rule, ``--runs`` and ``bench.scorecard_median`` on synthetic runs, the Markdown. (The
``--quick`` run itself is in test_smoke.py: structure only, no timing.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import scorecard_median as sm
from bench.loadgen import WARMUP, Phase
from bench.scenarios import scorecard as sc
from bench.stats import wilson_interval

# ---------------------------------------------------------------- rows carry what they were measured on


def _phase(sent: int, rejected: int, good: int | None = None) -> dict[str, Any]:
    return {"sent": sent, "rejected": rejected, "good": sent - rejected if good is None else good,
            "shed_ratio": rejected / sent if sent else 0.0}  # fmt: skip


def test_a_shed_row_is_k_shed_of_n_sent_with_the_wilson_interval() -> None:
    row = sc.shed_row("false_shed", "flowctl-sidecar", "shed_ratio 0.9x blocking", _phase(412, 3), 0.01)
    assert (row["k"], row["n"]) == (3, 412)
    assert row["value"] == pytest.approx(3 / 412) and row["pass"] is True
    assert row["interval"] == pytest.approx(list(wilson_interval(3, 412)))
    lo, hi = row["interval"]
    assert lo < 3 / 412 < hi < 0.03  # 400 requests decide a 1% target to within about 2%
    red = sc.shed_row("false_shed", "kratos", "shed_ratio 0.9x yielding", _phase(400, 36), 0.01)
    assert red["pass"] is False and red["interval"][0] > 0.01
    empty = sc.shed_row("false_shed", "kratos", "shed_ratio 0.5x yielding", _phase(0, 0), 0.01)
    assert empty["value"] == 0.0 and empty["n"] == 0 and empty["interval"] == [0.0, 1.0]  # nothing sent: nothing known


def test_critical_goodput_is_k_answered_in_time_of_n_sent() -> None:
    row = sc.count_row("priority", "flowctl-inprocess", "critical goodput/offered 1x", 398, 404, 0.99, "higher")
    assert (row["k"], row["n"]) == (398, 404) and row["pass"] is False  # 0.985
    assert row["interval"] == pytest.approx(list(wilson_interval(398, 404)))


def test_a_row_that_is_not_a_ratio_of_counts_says_how_many_requests_it_measured() -> None:
    row = sc.verdict_row("overload", "flowctl-sidecar", "p99/unloaded_p99 4x blocking", 2.4, 4.0, "lower", n=811)
    assert row["n"] == 811 and row["k"] is None and row["interval"] is None
    assert sc.counts_text(row) == "n 811"
    never = sc.verdict_row("step", "none", "recovery_s 2x", None, 5.0, "lower", n=626)
    assert never["pass"] is False and sc.run_cell(never) == "never **fail** (n 626)"


# ---------------------------------------------------------------- phase lengths


CAPACITIES = (12.0, 40.0, 52.3, 97.0, 180.0)


@pytest.mark.parametrize("cap", CAPACITIES)
def test_every_false_shed_phase_holds_400_requests_at_the_measured_capacity(cap: float) -> None:
    p = sc.FULL
    assert p.min_requests == sc.MIN_REQUESTS == 400
    fs = sc.false_shed_phases(p, cap)
    assert [(ph.multiplier, ph.label) for ph in fs] == [(0.5, WARMUP), (0.5, "0.5x"), (0.9, "0.9x")]  # longer, never faster
    for label in ("0.5x", "0.9x"):
        assert sc.count_in(fs, cap, label) >= 400
    assert all(ph.seconds >= p.seconds for ph in fs[1:])
    # the length follows the rate: 400 requests at 0.5 x 40 rps need about 20 s
    assert fs[1].seconds == pytest.approx(400 / (0.5 * cap), rel=0.15) or fs[1].seconds == p.seconds

    bursts = sc.bursts_phases(p, cap)
    assert sc.count_in(bursts, cap, "calm") >= 400
    assert {(ph.seconds, ph.multiplier) for ph in bursts if ph.label == "calm"} == {(sc.BURST_S, 0.5)}
    assert {(ph.seconds, ph.multiplier) for ph in bursts if ph.label == "burst"} == {(sc.BURST_S, 4.0)}
    assert len(bursts) - 1 >= 2 * int(p.bursts_s // (2 * sc.BURST_S))

    for load in p.step_loads:
        rate = load * cap
        st = sc.step_phases(p, rate)
        assert [ph.label for ph in st] == [WARMUP, "before", "after"]
        assert sc.count_in(st, rate, "before") >= 400 and st[1].seconds >= p.step_before_s
        assert st[2].seconds == p.step_after_s

    pr = sc.priority_phases(p, cap)
    assert sc.count_in(pr, cap, "1x", classes=sc.PRIORITY_CLASSES, traffic_class="critical") >= 400
    assert (pr[2].seconds, pr[2].multiplier) == (p.seconds, 3.0)  # the overload phase stays short

    ll = sc.long_lived_phases(p, cap)
    assert sc.count_in(ll, cap, "0.9x") >= 400 and ll[1].multiplier == 0.9


def test_the_phases_are_no_longer_than_400_requests_need() -> None:
    fs = sc.false_shed_phases(sc.FULL, 40.0)
    shorter = [fs[0], Phase(fs[1].seconds / 1.03, 0.5, "0.5x")]
    assert fs[1].seconds > sc.FULL.seconds and sc.count_in(shorter, 40.0, "0.5x") < 400


def test_quick_keeps_short_phases() -> None:
    q = sc.QUICK
    assert q.min_requests == 0
    assert [ph.seconds for ph in sc.false_shed_phases(q, 40.0)] == [q.warmup_s, q.seconds, q.seconds]
    assert sum(ph.seconds for ph in sc.bursts_phases(q, 40.0)) == q.warmup_s + q.bursts_s
    assert sc.step_phases(q, 80.0)[1].seconds == q.step_before_s
    assert sc.priority_phases(q, 40.0)[1].seconds == q.seconds


# ---------------------------------------------------------------- synthetic runs, --runs


Key = tuple[str, str, str]


def _run(started: str, values: dict[Key, tuple[float | None, int | None, int]],
         extra: dict[Key, dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """A scorecard output with the given rows: (scenario, variant, metric) -> (value or None, k or None, n)."""
    targets = {"shed_ratio": (0.01, "lower"), "p99/unloaded_p99": (4.0, "lower"), "goodput/saturation": (0.75, "higher"),
               "recovery_s": (5.0, "lower")}  # fmt: skip
    rows = []
    for (scenario, variant, metric), (value, k, n) in values.items():
        target, better = next(t for prefix, t in targets.items() if metric.startswith(prefix))
        if k is not None:
            rows.append(sc.count_row(scenario, variant, metric, k, n, target, better))
        else:
            rows.append(sc.verdict_row(scenario, variant, metric, value, target, better, n=n))
        rows[-1].update((extra or {}).get((scenario, variant, metric), {}))
    return {"scenario": "scorecard", "command": "python -m bench scorecard", "started": started, "wall_s": 900.0,
            "quick": False, "code": {"commit": "abc1234567890", "changed": []},
            "machine": {"cpus": 2, "cpu_model": "test", "loadavg": [0.5, 0.4, 0.3], "loadavg_after": [0.6, 0.5, 0.4]},
            "rows": rows}  # fmt: skip


FS = ("false_shed", "flowctl-sidecar", "shed_ratio 0.9x blocking")
P99 = ("overload", "flowctl-sidecar", "p99/unloaded_p99 4x blocking")
GOOD = ("tight_quota", "flowctl-inprocess", "goodput/saturation 4x blocking")
REC = ("step", "flowctl-sidecar", "recovery_s 2x")


def _three() -> list[dict[str, Any]]:
    return [
        _run("2026-12-05T02:00:00Z", {FS: (None, 0, 410), P99: (2.1, None, 800), GOOD: (0.70, None, 1400), REC: (0.0, None, 600)},
             {GOOD: {"bound": 0.72}}),
        _run("2026-12-05T02:20:00Z", {FS: (None, 6, 402), P99: (4.6, None, 790), GOOD: (0.66, None, 1390), REC: (None, None, 610)},
             {GOOD: {"bound": 0.70}}),
        _run("2026-12-05T02:40:00Z", {FS: (None, 1, 405), P99: (3.0, None, 805), GOOD: (0.74, None, 1410), REC: (1.0, None, 605)},
             {GOOD: {"bound": 0.74}}),
    ]  # fmt: skip


def test_the_median_the_worst_and_the_per_run_values() -> None:
    rows = {(r["scenario"], r["variant"], r["metric"]): r for r in sm.combine(_three())}
    fs = rows[FS]
    assert fs["values"] == pytest.approx([0.0, 6 / 402, 1 / 405]) and fs["passes"] == [True, False, True]
    assert fs["value"] == pytest.approx(1 / 405) and fs["pass"] is True and fs["worst"] == pytest.approx(6 / 402)
    assert (fs["k"], fs["n"]) == (7, 1217) and fs["interval"] == pytest.approx(list(wilson_interval(7, 1217)))  # pooled
    assert (fs["passed"], fs["runs"]) == (2, 3)
    p99 = rows[P99]
    assert p99["value"] == 3.0 and p99["worst"] == 4.6 and p99["pass"] is True
    assert p99["k"] is None and p99["interval"] is None and p99["n"] == 2395
    good = rows[GOOD]  # higher is better: the worst is the least
    assert good["value"] == 0.70 and good["worst"] == 0.66 and good["pass"] is False and good["bound"] == 0.72
    rec = rows[REC]  # a run that never recovered counts as the worst, not as missing
    assert rec["value"] == 1.0 and rec["worst"] is None and rec["values"] == [0.0, None, 1.0] and rec["pass"] is True


def test_a_median_of_never_is_never_and_fails() -> None:
    runs = [_run(f"2026-12-05T0{i}:00:00Z", {REC: (v, None, 600)}) for i, v in enumerate((None, None, 2.0))]
    (rec,) = sm.combine(runs)
    assert rec["value"] is None and rec["pass"] is False and rec["worst"] is None


def test_the_median_markdown_carries_k_of_n_the_worst_the_bound_and_every_run() -> None:
    runs = _three()
    md = sm.markdown(sm.combine(runs), runs, ["r1.json", "r2.json", "r3.json"])
    assert "Median of 3 scorecard runs" in md
    lo, hi = wilson_interval(7, 1217)
    assert f"0.00247 pass; worst 0.0149 (7/1217, {lo:.2g}-{hi:.2g}) |" in md
    assert "3 pass; worst 4.6 (n 2395)" in md
    assert "0.7 **fail** (bound 0.72); worst 0.66 (n 4200)" in md  # a red median row carries its measured bound
    assert "(bound x): the median of the runs'" in md
    assert "1 pass; worst never (n 1815)" in md
    assert "| false_shed | shed_ratio 0.9x blocking | flowctl-sidecar | 0 pass | 0.0149 **fail** | 0.00247 pass |" in md
    assert "flowctl-sidecar: 3 of 3 rows pass on the median." in md and "flowctl-inprocess: 0 of 1 rows" in md
    assert "`r2.json`: started 2026-12-05T02:20:00Z, 15.0 min, load average 0.50 -> 0.60, commit abc1234567" in md


def test_one_runs_markdown_carries_k_of_n_and_says_when_it_is_quick() -> None:
    out = _three()[1]
    md = sc.markdown(out)
    lo, hi = wilson_interval(6, 402)
    assert f"| false_shed | shed_ratio 0.9x blocking | <= 0.01 |  | 0.0149 **fail** (6/402, {lo:.2g}-{hi:.2g}) |" in md
    assert "never **fail** (n 610)" in md and "Code: commit abc1234567." in md
    assert "k/n and the Wilson 95% interval" in md and "smoke test" not in md
    assert "smoke test" in sc.markdown({**out, "quick": True})


def test_runs_runs_the_scorecard_n_times_and_writes_each_run_and_the_median(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = iter(_three())
    commands = []

    async def fake_run(a: Any, command: str) -> dict[str, Any]:
        commands.append(command)
        return next(runs)

    monkeypatch.setattr(sc, "run", fake_run)
    out = tmp_path / "scorecard-median-2026-12-05.json"
    assert sc.main(["--runs", "3", "--json", str(out)]) == 0
    assert commands == [f"python -m bench scorecard --runs 3 --json {out}"] * 3
    for i in (1, 2, 3):
        run = json.loads((tmp_path / f"scorecard-median-2026-12-05-run{i}.json").read_text())
        assert run["run"] == {"index": i, "of": 3}
        assert (tmp_path / f"scorecard-median-2026-12-05-run{i}.md").exists()
    median = json.loads(out.read_text())
    assert median["scenario"] == "scorecard-median" and len(median["runs"]) == 3
    assert median["runs"][0]["path"].endswith("-run1.json") and median["runs"][2]["started"] == "2026-12-05T02:40:00Z"
    assert {r["metric"] for r in median["rows"]} == {FS[2], P99[2], GOOD[2], REC[2]}
    assert "Median of 3 scorecard runs" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0
    # the same median from the saved runs (three separate runs, combined afterwards)
    again = tmp_path / "again.json"
    assert sm.main([str(tmp_path / f"scorecard-median-2026-12-05-run{i}.json") for i in (1, 2, 3)] + ["--json", str(again)]) == 0
    assert json.loads(again.read_text())["rows"] == median["rows"]


def test_a_single_run_keeps_its_path() -> None:
    assert sc.run_path("bench/results/scorecard.json", 1, 1) == "bench/results/scorecard.json"
    assert sc.run_path("bench/results/sc.json", 2, 3) == "bench/results/sc-run2.json"
