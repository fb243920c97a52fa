"""bench.stream_ttfb runs end to end and reports every target (figures are for the docs, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def test_stream_ttfb_smoke(tmp_path: Path) -> None:
    out = tmp_path / "ttfb.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.stream_ttfb", "--rounds", "1", "--pause", "0.05", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["medians"]) == {"direct", "sidecar_fast", "sidecar_aiohttp"}
    for m in result["medians"].values():
        assert m["head_s"] <= m["first_byte_s"] <= m["body_s"]
