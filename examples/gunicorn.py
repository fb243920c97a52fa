"""flowctl under gunicorn: several aiohttp workers, and one /metrics for all of them.

Run from the repository root (the directory is wiped by ``on_starting`` below)::

    export PROMETHEUS_MULTIPROC_DIR=/tmp/flowctl-metrics
    gunicorn -c examples/gunicorn.py examples.gunicorn:app

This file is both gunicorn's configuration (``bind``, ``workers``,
``worker_class`` and two hooks) and the app factory (``app``). Each worker
builds its own app, so each has its own limiter, reading the same container
CPU. Because ``PROMETHEUS_MULTIPROC_DIR`` is set in the environment that
starts gunicorn, ``flowctl.aiohttp.setup`` exports through prometheus_client's
multiprocess mode: every scrape of ``/metrics``, whichever worker answers it,
shows the whole app's counters and histograms (see docs/real-apps.md).

``PROMETHEUS_MULTIPROC_DIR`` must be set in the shell (or the service's
environment), not from Python: prometheus_client reads it when it is first
imported.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from aiohttp import web

import flowctl.aiohttp

bind = os.environ.get("BIND", "127.0.0.1:8080")
workers = int(os.environ.get("WORKERS", "2"))
worker_class = "aiohttp.GunicornWebWorker"


def on_starting(server: Any) -> None:
    """Master, before the workers: empty the multiprocess directory (old files would be summed in)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """Master, after a worker exited: drop its live gauges (its counters stay in the totals)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


async def hello(request: web.Request) -> web.Response:
    return web.Response(text=f"hello from worker {os.getpid()}\n")


async def echo(request: web.Request) -> web.WebSocketResponse:
    """A WebSocket: admitted like a request, then a session (flowctl_sessions_active{resource="ws"})."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is web.WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


async def app() -> web.Application:
    """gunicorn's aiohttp worker calls this once per worker, after the fork."""
    application = web.Application()
    application.router.add_get("/", hello, name="hello")
    application.router.add_get("/ws", echo, name="ws")
    flowctl.aiohttp.setup(application)  # multiprocess metrics because PROMETHEUS_MULTIPROC_DIR is set
    return application
