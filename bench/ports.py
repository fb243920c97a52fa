"""``free_port()``: a TCP port on 127.0.0.1 that nothing listens on now, for benchmarks and tests."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A port the kernel just handed out and released (another process could take it before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
