"""A CPU-bound aiohttp app protected by flowctl, used as the sidecar's upstream in the
real-Prometheus test: ``python -m tests.deploy.live_upstream --port N``.

``GET /work`` burns ``--cpu-ms`` of CPU time in ``--slices`` awaited slices (so
requests overlap and in-flight grows, as in a real async service);
``GET /healthz`` answers at once; ``/metrics`` comes from ``flowctl.aiohttp.setup``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import web

import flowctl.aiohttp


def _burn(cpu_s: float) -> None:
    """Spin until this thread has used ``cpu_s`` of CPU time (wall time grows when throttled)."""
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


def make_app(cpu_ms: float, slices: int) -> web.Application:
    slice_s = cpu_ms / 1000.0 / slices

    async def work(request: web.Request) -> web.Response:
        for _ in range(slices):
            _burn(slice_s)
            await asyncio.sleep(0)
        return web.Response(text="done\n")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/work", work, name="work")
    app.router.add_get("/healthz", healthz, name="healthz")
    flowctl.aiohttp.setup(app, compare_views=("host",))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu-ms", type=float, default=10.0)
    parser.add_argument("--slices", type=int, default=5)
    args = parser.parse_args()
    web.run_app(make_app(args.cpu_ms, args.slices), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
