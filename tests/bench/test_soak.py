"""The soak: 60 s of 2x overload on the sidecar and an in-process app (CI), and the growth figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import growth

REPO = Path(__file__).resolve().parents[2]


def test_growth_compares_the_last_window_with_the_one_after_warm_up() -> None:
    series: list[dict[str, float | None]] = [
        {"t_s": float(t), "rss_bytes": 100.0 + (t if t >= 100 else 0), "fds": 10.0 + (t >= 110), "inflight": 0.0}
        for t in range(0, 121, 5)
    ]
    g = growth(series, 120, warmup_s=10)
    assert g["window_s"] == 55
    # base: t in [10, 65) -> 11 rows of 100; last: t in [65, 120] -> 7 rows of 100 and 200..220
    assert g["rss_base_bytes"] == 100 and g["rss_last_bytes"] == pytest.approx((7 * 100 + 200 + 205 + 210 + 215 + 220) / 12)
    assert g["rss_growth_ratio"] == pytest.approx(g["rss_last_bytes"] / 100)
    assert g["fd_growth"] == pytest.approx(3 / 12)  # 3 of the last 12 rows have one more fd


@pytest.mark.slow
def test_soak_60s_holds_memory_fds_and_inflight(tmp_path: Path) -> None:
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    subprocess.run([sys.executable, "-m", "bench", "soak", "--seconds", "60", "--json", str(out), "--plot", str(png)],
                   cwd=REPO, check=True, timeout=240)  # fmt: skip
    data = json.loads(out.read_text())
    assert set(data["targets"]) == {"sidecar", "inprocess"} and png.stat().st_size > 0
    for name, t in data["targets"].items():
        assert t["crashed"] is False, name
        assert t["inflight_after"] == 0, (name, t["series"][-3:])
        assert t["rss_growth_ratio"] is not None and t["rss_growth_ratio"] < 1.25, (name, t["rss_growth_ratio"])
        assert t["fd_growth"] is not None and t["fd_growth"] < 100, (name, t["fd_growth"])
        assert t["load"]["sent"] > 0 and t["load"]["ok"] > 0 and t["load"]["errors"] == 0, (name, t["load"])
