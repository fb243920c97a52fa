"""The app the container tests run (mounted at /apps/app.py): aiohttp, optionally protected in-process by flowctl.

    python /apps/app.py PORT [--protect]

``/`` answers ok; ``/burn?ms=N`` burns N ms of CPU in 1 ms slices with an await
between them (so requests overlap and in-flight grows); ``/slow?s=S`` sleeps.
With ``--protect``, ``flowctl.aiohttp.setup(app)`` reads the container's cgroup;
``/metrics`` and ``/limits`` (the container view's details) show what it read.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def burn(request: web.Request) -> web.Response:
    for _ in range(int(request.query.get("ms", "20"))):
        end = time.thread_time() + 0.001
        while time.thread_time() < end:
            pass
        await asyncio.sleep(0)
    return web.Response(text="burnt\n")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="slept\n")


def main() -> None:
    app = web.Application()
    app.router.add_get("/", ok)
    app.router.add_get("/burn", burn)
    app.router.add_get("/slow", slow)
    if "--protect" in sys.argv:
        import flowctl.aiohttp

        state = flowctl.aiohttp.setup(app, exempt_paths=("/limits",))

        async def limits(request: web.Request) -> web.Response:
            """What the in-process limiter's CPU view read (limits, their files, memory)."""
            details = getattr(state.views["container"], "details")()
            return web.json_response(details, dumps=lambda o: json.dumps(o, default=str))

        app.router.add_get("/limits", limits)
    web.run_app(app, host="0.0.0.0", port=int(sys.argv[1]), print=None, handle_signals=True)


if __name__ == "__main__":
    main()
