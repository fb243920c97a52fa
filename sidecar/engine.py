"""The engine seam: which data plane serves the traffic, behind one lifetime.

- ``python``: this process is the proxy (``sidecar.app.Sidecar``: the fast
  listener, the upstream pool, the Limiter deciding every request).
- ``haproxy``: HAProxy is the proxy, started as a child with a generated
  config; flowctl watches the CPU, runs the same Limiter and sets HAProxy's
  limits over its admin socket (``sidecar.haproxy.engine.HaproxySidecar``,
  docs/haproxy.md).
- ``auto``: haproxy when its binary is installed, else python.

Both present the same lifetime (``SidecarEngine``) to ``sidecar.app.serve``
and the same view to the admin listener (``sidecar.admin.AdminView``).
"""

from __future__ import annotations

import logging
from typing import Protocol

from sidecar.config import SidecarConfig

__all__ = ["ENGINES", "SidecarEngine", "make_engine", "resolve_engine"]

ENGINES = ("python", "haproxy", "auto")

log = logging.getLogger("sidecar")


class SidecarEngine(Protocol):
    """What ``serve`` runs: start, drain on SIGTERM, stop; ``failed`` returns if the data plane is lost."""

    @property
    def listen_port(self) -> int: ...
    @property
    def admin_port(self) -> int: ...
    async def start(self) -> None: ...
    async def drain(self) -> bool: ...
    async def stop(self) -> None: ...
    async def failed(self) -> str: ...


def resolve_engine(name: str, *, haproxy_found: bool | None = None) -> str:
    """``python`` or ``haproxy`` for a configured ``name`` (``auto``: haproxy when installed)."""
    if name != "auto":
        return name
    if haproxy_found is None:
        from sidecar.haproxy.process import find_haproxy

        haproxy_found = find_haproxy() is not None
    return "haproxy" if haproxy_found else "python"


def make_engine(config: SidecarConfig) -> SidecarEngine:
    """The engine ``config.engine`` names (built, not started)."""
    name = resolve_engine(config.engine)
    if name == "haproxy" and config.quota:
        from flowctl.errors import ConfigError

        raise ConfigError(f"quota: the haproxy engine does not enforce quotas (engine {config.engine!r} chose haproxy); "
                          "use --engine python")
    if name == "haproxy":
        from sidecar.haproxy.engine import HaproxySidecar

        return HaproxySidecar(config)
    from sidecar.app import Sidecar

    return Sidecar(config)
