"""``python -m bench SCENARIO [options]``: a dispatcher over benchmark modules.

Each entry maps a scenario name to a module with ``main(argv) -> int``.
Modules are imported only when their scenario is chosen.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

SCENARIOS: dict[str, str] = {
    "limiter": "bench.limiter_speed",
    "overload": "bench.scenarios.overload",
    "step": "bench.scenarios.step",
    "priority": "bench.scenarios.priority",
    "overhead": "bench.scenarios.overhead",
    "demo": "bench.scenarios.demo",
    "scorecard": "bench.scenarios.scorecard",
    "matrix": "bench.scenarios.matrix",
    "matrix-compare": "bench.matrix_compare",
    "report": "bench.report",
    "loadgen": "bench.loadgen",
    "upstream": "bench.upstream",
    "soak": "bench.soak",
    "quota": "bench.quota",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in SCENARIOS:
        print("usage: python -m bench SCENARIO [options]\n\nscenarios:\n  " + "\n  ".join(SCENARIOS), file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    module = importlib.import_module(SCENARIOS[args[0]])
    code: int = module.main(args[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
