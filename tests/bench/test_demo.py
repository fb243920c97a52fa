"""`make demo`'s second act: its verdicts, and the README showing the committed run's figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.scenarios import demo

REPO = Path(__file__).resolve().parents[2]
RESULT = REPO / "bench" / "results" / "demo.json"


def _row(goodput_ratio: float, p99_x: float | None, timeouts: int = 0) -> dict[str, Any]:
    return {"goodput_ratio": goodput_ratio, "admitted_p99_over_unloaded": p99_x, "timeouts": timeouts}


@pytest.mark.parametrize(
    "row,word",
    [
        (_row(0.85, 4.0), demo.PROTECTED),
        (_row(1.5, 2.0), demo.PROTECTED),
        (_row(0.84, 2.0), demo.DEGRADED),
        (_row(1.2, 4.1), demo.DEGRADED),
        (_row(1.2, 9.9), demo.DEGRADED),
        (_row(1.2, 10.0), demo.DROWNING),
        (_row(1.2, 2.0, timeouts=1), demo.PROTECTED),  # goodput and p99 both hold: timeouts were few
        (_row(0.5, 3.0, timeouts=1), demo.DROWNING),
        (_row(0.0, None), demo.DEGRADED),
    ],
)
def test_verdict_words(row: dict[str, Any], word: str) -> None:
    assert demo.verdict(row) == word


def test_the_readme_shows_the_committed_run() -> None:
    """The README's "What `make demo` shows" table is the committed bench/results/demo.json, as
    ``make demo`` prints it (the same figures and verdict words), with its date and load."""
    data = json.loads(RESULT.read_text())
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## What `make demo` shows", 1)[1].split("\n## ", 1)[0]
    assert demo.readme_section(data) in section, (
        "README.md does not show bench/results/demo.json: after a local `make demo`, restore the committed run "
        "(git checkout bench/results/demo*) or put bench.scenarios.demo.readme_section(<the new JSON>) in the README"
    )
    assert "bench/results/demo-timeseries-yielding.png" in section
    labels = tuple(what + " " for _, what in demo.ROWS.values())
    printed = [ln for ln in demo.verdict_text(data).splitlines() if ln.startswith(labels)]
    assert len(printed) == len(data["variants"]) >= 6
    for line, (variant, row) in zip(printed, data["variants"].items()):
        word = demo.verdict(row)
        assert data["demo"]["rows"][variant]["verdict"] == word
        assert line.startswith(demo.ROWS[variant][1]) and line.endswith("  " + word)
        assert f"| {demo.ROWS[variant][0]} | {demo.ROWS[variant][1]} | " in section and f"| {word} |" in section
