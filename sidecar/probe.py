"""Upstream readiness: a periodic TCP connect (or GET of a health path) to the app.

``UpstreamProbe.ready`` is what ``/readyz`` and ``flowctl_upstream_ready``
report. It is updated by one background task every ``interval_s``; the
request path never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from flowctl.periodic import Periodic

__all__ = ["UpstreamProbe"]

log = logging.getLogger("sidecar.probe")


class UpstreamProbe:
    """Probes ``upstream`` (``http://host:port[/prefix]``); ``health_path`` switches to an HTTP GET.

    With a health path, any status below 500 counts as ready.
    """

    def __init__(
        self,
        upstream: str,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        health_path: str = "",
        session: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(upstream)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._url = upstream + health_path if health_path else ""
        self._timeout_s = timeout_s
        self._session = session
        self._clock = clock
        self.ready = False
        self.checks = 0
        self.last_error: str | None = None
        self.last_check_at: float | None = None
        self._periodic = Periodic(self.check, interval_s, name="flowctl-upstream-probe")

    async def check(self) -> bool:
        """Probe once; update and return ``ready``."""
        try:
            if self._url and self._session is not None:
                timeout = aiohttp.ClientTimeout(total=self._timeout_s)
                async with self._session().get(self._url, timeout=timeout, allow_redirects=False) as r:
                    await r.read()
                    if r.status >= 500:
                        raise RuntimeError(f"GET {self._url} -> {r.status}")
            else:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races
                # the connect's completion, and stop() then waited forever (seen as a hung SIGTERM drain).
                async with asyncio.timeout(self._timeout_s):
                    _, writer = await asyncio.open_connection(self._host, self._port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure means "not ready"
            msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if self.ready or msg != self.last_error:
                log.warning("upstream not ready: %s", msg)
            self.ready = False
            self.last_error = msg
        else:
            if not self.ready:
                log.info("upstream ready")
            self.ready = True
            self.last_error = None
        self.checks += 1
        self.last_check_at = self._clock()
        return self.ready

    def describe(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "target": self._url or f"tcp://{self._host}:{self._port}",
            "checks": self.checks,
            "last_error": self.last_error,
        }

    async def start(self) -> None:
        """Probe once now, then every ``interval_s`` from a task (idempotent)."""
        if not self._periodic.running:
            await self.check()
            await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
