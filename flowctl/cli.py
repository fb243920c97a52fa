"""The ``flowctl`` command: a thin dispatcher over ``flowctl.commands.*``.

Each command module defines ``register(subparsers) -> None``, which adds its
parser and sets ``func=`` to a callable ``(args) -> int`` (the exit code).
Modules are imported when the parser is built, never at package import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# Add a command by appending its module here.
COMMAND_MODULES: tuple[str, ...] = (
    "flowctl.commands.inspect",
    "flowctl.commands.run",
    "flowctl.commands.demo",
    "flowctl.commands.sidecar",
    "flowctl.commands.gc",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="flowctl",
        description="Container-aware adaptive rate limiting: read the real (cgroup) CPU, shed what cannot be served.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
