"""``python -m bench overhead``: middleware and sidecar cost with wrk (reuses their own benchmarks).

Runs ``bench.middleware_overhead`` (hello world bare vs protected, alternating
rounds) and ``bench.sidecar_overhead`` (direct vs sidecar vs nginx), each
with its own method, and gathers both results into one JSON + Markdown.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from bench.scenarios import common as c


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench overhead", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=10.0, help="wrk duration per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", default="middleware,sidecar")
    p.add_argument("--json", dest="json_out", default=os.path.join(c.RESULTS_DIR, "overhead.json"))
    p.add_argument("--no-report", action="store_true")
    return p


def _argv(part: str, a: argparse.Namespace, out: str) -> list[str]:
    secs = max(1, int(round(a.seconds)))
    if part == "middleware":
        return ["--rounds", str(a.rounds), "--duration", str(secs), "--json", out]
    return ["--rounds", str(a.rounds), "--seconds", str(float(secs)), "--half-seconds", str(float(secs)), "--json", out]


MODULES = {"middleware": "bench.middleware_overhead", "sidecar": "bench.sidecar_overhead"}


def medians_markdown(part: dict[str, Any]) -> str | None:
    """A table from a ``medians`` mapping (variant -> metric -> value), if the part has one."""
    med = part.get("medians")
    if med is None and isinstance(part.get("wrk"), dict):  # bench.sidecar_overhead: target -> {rps_median, ...}
        med = {k: {m: x for m, x in v.items() if not isinstance(x, (list, dict))} for k, v in part["wrk"].items() if isinstance(v, dict)}
    if not isinstance(med, dict) or not med or not all(isinstance(v, dict) for v in med.values()):
        return None
    cols = sorted({k for v in med.values() for k in v})
    lines = ["| variant | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, v in med.items():
        cells = [f"{v[k]:.2f}" if isinstance(v.get(k), float) else str(v.get(k, "-")) for k in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    # No pinning here: each benchmark places its own servers and wrk (children inherit affinity).
    out: dict[str, Any] = {"scenario": "overhead", "machine": c.machine_info(), "seconds": a.seconds, "rounds": a.rounds, "parts": {}}
    for part in [p.strip() for p in a.parts.split(",") if p.strip()]:
        fd, tmp = tempfile.mkstemp(suffix=".json", prefix=f"flowctl-{part}-")
        os.close(fd)
        try:
            c.log(f"overhead: {part} ({MODULES[part]}) ...")
            old = os.getcwd()
            os.chdir(c.REPO)  # these benchmarks start their servers with `python -m bench...`
            try:
                rc = importlib.import_module(MODULES[part]).main(_argv(part, a, tmp))
            finally:
                os.chdir(old)
            with open(tmp) as f:
                text = f.read()
            data: dict[str, Any] = json.loads(text) if text.strip() else {}
            data["exit_code"] = rc
            md = medians_markdown(data)
            if md:
                data["markdown"] = md
            out["parts"][part] = data
        finally:
            os.unlink(tmp)
    out["machine"]["loadavg_after"] = list(os.getloadavg())
    c.write_json(out, a.json_out)
    if not a.no_report:
        from bench import report

        report.report_file(a.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
