"""The haproxy child process: started in the foreground, watched, soft-stopped, killed.

``haproxy -db -f CONFIG`` runs in the foreground as this process's child (no
daemon, no master process), with ``PR_SET_PDEATHSIG`` so that it gets SIGTERM
if flowctl dies first. Its stderr (alerts and warnings) goes to the
``sidecar.haproxy`` log. ``start`` returns once the admin socket answers, or
raises ``DataPlaneError`` with HAProxy's own first alert line (a port in use, a
config it refuses). ``soft_stop`` is HAProxy's graceful stop (SIGUSR1: the
listeners close, requests in flight finish, idle keep-alive connections
close); ``kill`` ends it at once (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence

from flowctl.errors import DataPlaneError
from sidecar.haproxy.runtime import Runtime

__all__ = ["HaproxyProcess", "find_haproxy"]

log = logging.getLogger("sidecar.haproxy")

_PR_SET_PDEATHSIG = 1


def find_haproxy(path: str | None = None) -> str | None:
    """The haproxy binary: ``path`` if executable, else ``haproxy`` on PATH or in /usr/sbin, /usr/local/sbin."""
    if path:
        return path if os.access(path, os.X_OK) else None
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin:/sbin")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class HaproxyProcess:
    """One haproxy child for ``config_path``; ``runtime`` is its admin socket."""

    def __init__(self, binary: str, config_path: str, runtime: Runtime, *, extra_args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.config_path = config_path
        self.runtime = runtime
        self._extra = tuple(extra_args)
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self.alerts: list[str] = []
        self.pid: int | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            if not text:
                continue
            if "[ALERT]" in text:
                self.alerts.append(text)
                log.error("haproxy: %s", text)
            elif "[WARNING]" in text:
                log.warning("haproxy: %s", text)
            else:
                log.debug("haproxy: %s", text)

    def first_alert(self) -> str:
        """HAProxy's first alert, without its prefix (what it refused), or ''."""
        for a in self.alerts:
            return a.split(":", 1)[-1].strip() if "]" in a else a
        return ""

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start haproxy and wait until its admin socket answers; DataPlaneError when it exits first."""
        self.alerts = []
        self._proc = await asyncio.create_subprocess_exec(
            self.binary, "-db", "-f", self.config_path, *self._extra,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        assert self._proc.stderr is not None
        self._stderr_task = asyncio.get_running_loop().create_task(self._read_stderr(self._proc.stderr))
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                break
            try:
                stats_pid = (await self.runtime.stats()).pid
            except DataPlaneError as e:
                last = e
                await asyncio.sleep(0.02)
                continue
            self.pid = stats_pid
            return
        rc = self._proc.returncode
        if rc is None:
            await self.kill()
            raise DataPlaneError(f"haproxy: admin socket not answering after {timeout_s:g} s ({last})")
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 1.0)
        raise DataPlaneError(f"haproxy exited with {rc} at start: {self.first_alert() or 'no alert printed'}")

    async def wait(self) -> int:
        """Until the child exits; its return code."""
        assert self._proc is not None
        return await self._proc.wait()

    def soft_stop(self) -> None:
        """HAProxy's graceful stop: no new connections, in-flight requests finish, then it exits."""
        if self.running:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGUSR1)

    async def kill(self, grace_s: float = 2.0) -> int | None:
        """SIGTERM (HAProxy's hard stop), then SIGKILL after ``grace_s``; always reaps the child."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 1.0)
            self._stderr_task = None
        return proc.returncode
