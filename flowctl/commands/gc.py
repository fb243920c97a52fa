"""``flowctl gc``: remove what killed launchers left behind (empty groups, lxcfs mounts, run files).

Only records of launchers that are gone are looked at (``flowctl.workload.leftovers``);
a live launcher's groups, mounts and files are never touched, and a group that still
holds a process is kept. Exit status 0, or 1 when something could not be removed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flowctl.workload.leftovers import collect

__all__ = ["gc_command", "register"]


def register(sub: Any) -> None:
    """Add the ``gc`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "gc",
        help="remove the empty groups, lxcfs mounts and run files of launchers that are gone",
        description="Remove what `flowctl run` launchers that were killed left behind; never a live launcher's.",
    )
    p.add_argument("--run-dir", metavar="DIR", help="where launchers record what they own (default $FLOWCTL_RUN_DIR "
                   "or /run/flowctl)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(func=gc_command)


def gc_command(args: argparse.Namespace) -> int:
    """Entry point of ``flowctl gc``; returns the exit code."""
    done = collect(base=args.run_dir)
    if args.json:
        print(json.dumps(done.as_dict(), indent=1))
    else:
        for label, items in (("removed group", done.removed_groups), ("unmounted", done.unmounted),
                             ("removed", done.removed_dirs), ("kept (in use)", done.busy_groups),
                             ("error", done.errors)):  # fmt: skip
            for item in items:
                print(f"flowctl gc: {label} {item}", file=sys.stderr if label == "error" else sys.stdout)
    return 1 if done.errors else 0
