"""``python -m bench matrix-compare``: pass counts, pooled sheds, means and moved cells of two runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import matrix_compare


def cell(shape: int, load: float, target: str, value: float, ok: bool, requests: int = 400) -> dict[str, Any]:
    return {"shape": shape, "variant": "flowctl-sidecar", "load": load, "target": target, "value": value, "pass": ok,
            "requests": requests}  # fmt: skip


BEFORE = {"seed": 1, "code": {"commit": "aaaa"}, "cells": [
    cell(1, 0.9, "false_shed", 0.02, False), cell(2, 0.9, "false_shed", 0.0, True),
    cell(1, 4.0, "p99", 2.0, True), cell(2, 4.0, "p99", 8.0, False)]}  # fmt: skip
AFTER = {"seed": 1, "code": {"commit": "bbbb"}, "cells": [
    cell(1, 0.9, "false_shed", 0.005, True), cell(2, 0.9, "false_shed", 0.0025, True),
    cell(1, 4.0, "p99", 2.0, True), cell(2, 4.0, "p99", 2.0, True)]}  # fmt: skip


def test_the_report_pools_sheds_and_lists_what_moved() -> None:
    text = "\n".join(matrix_compare.compare(BEFORE, AFTER))
    assert "false_shed passing 1 of 2 -> 2 of 2" in text
    assert "sheds at 0.9x   8/800" in text and "-> 3/800" in text
    assert "p99        passing 1 of 2 -> 2 of 2; geometric mean 4 -> 2, median 5 -> 2" in text
    assert "moved: shape 1 0.9x false_shed 0.02 -> 0.005 (passes)" in text
    assert "moved: shape 2 4x p99 8 -> 2 (passes)" in text


def write_runs(tmp_path: Path, *runs: tuple[str, dict[str, Any]]) -> list[str]:
    """Each (name, run) as ``<name>.json`` in ``tmp_path``; their paths, in order."""
    paths = []
    for name, run in runs:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(run))
        paths.append(str(path))
    return paths


def test_the_command_reads_two_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_runs(tmp_path, ("before", BEFORE), ("after", AFTER))
    assert matrix_compare.main(paths) == 0
    assert "code aaaa -> bbbb" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        matrix_compare.main([paths[0], str(tmp_path / "missing.json")])


def test_pooled_runs_count_cells_over_all_runs_and_list_majority_flips() -> None:
    again = {"seed": 1, "code": {"commit": "bbbb"}, "cells": [
        cell(1, 0.9, "false_shed", 0.0125, False), cell(2, 0.9, "false_shed", 0.0, True),
        cell(1, 4.0, "p99", 2.5, True), cell(2, 4.0, "p99", 3.0, True)]}  # fmt: skip
    text = "\n".join(matrix_compare.pooled([BEFORE], [AFTER, again]))
    assert "false_shed passing 1 of 2 (0.50, 0.09-0.91) -> 3 of 4 (0.75, 0.30-0.95)" in text
    assert "sheds at 0.9x   8/800 (0.0051-0.0196) -> 8/1600" in text
    assert "unsteady cells (passing on some runs, failing on others) 0 of 4 -> 1 of 4" in text
    assert "moved: seed 1 shape 2 4x p99 passes 0 of 1 (median 8) -> passes 2 of 2 (median 2.5)" in text
    assert "shape 1 0.9x" not in text  # 1 of 2 passing is no majority: not a flip
    # nor from the other side: passing 1 of 1 before, 1 of 2 after
    text = "\n".join(matrix_compare.pooled([AFTER], [AFTER, BEFORE]))
    assert "moved" not in text


def test_the_command_pools_comma_separated_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_runs(tmp_path, ("before", BEFORE), ("after", AFTER), ("again", AFTER))
    assert matrix_compare.main([paths[0], f"{paths[1]},{paths[2]}"]) == 0
    out = capsys.readouterr().out
    assert "after:  bbbb seed 1, bbbb seed 1" in out and "passing 1 of 2 (0.50" in out


def test_a_run_of_a_few_shapes_is_compared_on_those_shapes_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``matrix --only 2`` against a full run: shape 1's cells leave both sides (and the report says so)."""
    only = {"seed": 1, "code": {"commit": "cccc"}, "only": [2],
            "cells": [cell(2, 0.9, "false_shed", 0.0, True), cell(2, 4.0, "p99", 2.0, True)]}  # fmt: skip
    before = json.loads(json.dumps(BEFORE))
    assert matrix_compare.common_shapes([before, only]) == ["seed 1: only shapes 2 (as in every run of the seed)"]
    assert {c["shape"] for c in before["cells"]} == {2}
    text = "\n".join(matrix_compare.compare(before, only))
    assert "false_shed passing 1 of 1 -> 1 of 1" in text and "p99        passing 0 of 1 -> 1 of 1" in text
    paths = write_runs(tmp_path, ("before", BEFORE), ("after", only))
    assert matrix_compare.main(paths) == 0
    assert "seed 1: only shapes 2" in capsys.readouterr().out
    assert matrix_compare.common_shapes([json.loads(json.dumps(BEFORE)), json.loads(json.dumps(AFTER))]) == []


def test_a_paired_run_sets_each_variant_against_its_candidate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``matrix --code cand=DIR`` with VARIANT and VARIANT@cand: ``--pair cand`` compares them within the run."""
    plain: list[dict[str, Any]] = BEFORE["cells"]  # type: ignore[assignment]
    cand: list[dict[str, Any]] = AFTER["cells"]  # type: ignore[assignment]
    paired = {"seed": 1, "code": {"commit": "aaaa"}, "codes": {"cand": {"dir": "/wt", "commit": "bbbb"}},
              "cells": plain + [{**x, "variant": "flowctl-sidecar@cand"} for x in cand]
              + [{**x, "variant": "kratos"} for x in plain]}  # fmt: skip
    before, after = matrix_compare.split_pair(paired, "cand")
    assert before["cells"] == plain  # kratos has no @cand twin: left out
    assert after["cells"] == cand and after["code"]["commit"] == "bbbb"
    with pytest.raises(ValueError, match="no variant measured both"):
        matrix_compare.split_pair(paired, "other")
    paths = write_runs(tmp_path, ("paired", paired))
    assert matrix_compare.main(["--pair", "cand", paths[0]]) == 0
    out = capsys.readouterr().out
    assert "code aaaa -> bbbb" in out and "false_shed passing 1 of 2 -> 2 of 2" in out
    assert matrix_compare.main(["--pair", "cand", f"{paths[0]},{paths[0]}"]) == 0
    assert "passing 2 of 4 (0.50" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        matrix_compare.main(["--pair", "cand", paths[0], paths[0]])
