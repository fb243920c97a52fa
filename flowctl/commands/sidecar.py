"""``flowctl sidecar``: run the adaptive-limiting reverse proxy (the same as ``python -m sidecar``).

The arguments go unparsed to ``sidecar.__main__.main``, which owns the options, their
``--help`` and the error handling: the sidecar is imported only when this command runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sidecar",
        help="run the adaptive-limiting HTTP reverse proxy in front of an app (flowctl sidecar --help)",
        description="Reverse proxy that sheds load using the app's container CPU.",
        add_help=False,
        prefix_chars="\0",  # every argument, --help included, is the sidecar's
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, help="the sidecar's options")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sidecar.__main__ import main

    return main(args.argv, prog="flowctl sidecar")
