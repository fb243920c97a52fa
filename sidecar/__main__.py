"""``python -m sidecar``: the adaptive-limiting reverse proxy (see ``sidecar.config`` for options)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from flowctl.errors import ConfigError, DataPlaneError


def main(argv: Sequence[str] | None = None, prog: str = "sidecar") -> int:
    """Parse flags, merge env and TOML, run; a bad configuration exits 2 with one line naming the key."""
    from sidecar.app import run
    from sidecar.config import build_parser, load_config

    args = build_parser(prog).parse_args(argv)
    try:
        config = load_config(args)
        return run(config)
    except ConfigError as e:
        print(f"{prog}: invalid configuration: {e}", file=sys.stderr)
        return 2
    except (OSError, DataPlaneError) as e:  # e.g. the listen address is in use, haproxy refused to start
        print(f"{prog}: cannot start: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
