"""``flowctl sidecar``: run the adaptive-limiting reverse proxy (same options as ``python -m sidecar``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flowctl.errors import ConfigError


def register(subparsers: Any) -> None:
    from sidecar.config import add_arguments

    p: argparse.ArgumentParser = subparsers.add_parser(
        "sidecar",
        help="run the adaptive-limiting HTTP reverse proxy in front of an app",
        description="Reverse proxy that sheds load using the app's container CPU. "
        "Options come from flags, then FLOWCTL_* environment variables, then a TOML file.",
    )
    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sidecar.app import run
    from sidecar.config import load_config

    try:
        return run(load_config(args))
    except ConfigError as e:
        print(f"flowctl sidecar: invalid configuration: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"flowctl sidecar: cannot start: {e}", file=sys.stderr)
        return 1
