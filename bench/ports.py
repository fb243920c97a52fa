"""``free_port()``, ``free_ports(n)``: TCP ports on 127.0.0.1 that nothing listens on now, for benchmarks and tests."""

from __future__ import annotations

import contextlib
import socket

__all__ = ["free_port", "free_ports"]


def free_port() -> int:
    """A port the kernel just handed out and released (another process could take it before use)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel just handed out and released: each socket is held until all
    are bound, so two calls in a row cannot return the same port (``free_port`` twice can)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
