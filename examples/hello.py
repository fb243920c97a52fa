"""The fewest lines that protect an aiohttp app with flowctl.

Run:  python examples/hello.py            (listens on :8080, or $PORT; GET / and GET /metrics)

`flowctl.aiohttp.setup(app)` with no options reads this container's real CPU
budget from its cgroup, sheds with the BBR rule when that budget is saturated,
sheds when a blocking handler makes the event loop lag, answers 503 with
Retry-After and a JSON reason, and serves Prometheus metrics on /metrics.
"""

from __future__ import annotations

import os

from aiohttp import web

import flowctl.aiohttp


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello\n")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello, name="hello")
    flowctl.aiohttp.setup(app)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), port=int(os.environ.get("PORT", "8080")))
