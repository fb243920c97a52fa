"""What one ``on_response_prepare`` receiver would cost every response (why flowctl does not use one).

One command::

    .venv/bin/python -m bench.prepare_hook_cost

Awaits ``request._prepare_hook(response)`` (what ``StreamResponse.prepare`` calls for every
response) 100 000 times on an app without and with one no-op ``on_response_prepare``
receiver; prints the median over 7 runs of the nanoseconds per call. Detecting SSE
(``text/event-stream``) at ``prepare()`` for every route would need such a receiver.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

from aiohttp import web
from aiohttp.test_utils import make_mocked_request


async def _noop(request: web.Request, response: web.StreamResponse) -> None:
    return None


async def _measure(with_receiver: bool, calls: int = 100_000, runs: int = 7) -> float:
    app = web.Application()
    if with_receiver:
        app.on_response_prepare.append(_noop)
    app.freeze()
    request = make_mocked_request("GET", "/", app=app)
    response = web.Response()
    per_call_ns = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(calls):
            await request._prepare_hook(response)
        per_call_ns.append((time.perf_counter() - t0) / calls * 1e9)
    return statistics.median(per_call_ns)


async def _main() -> None:
    empty = await _measure(False)
    one = await _measure(True)
    print(f"_prepare_hook per response: {empty:.0f} ns without a receiver, {one:.0f} ns with one no-op receiver "
          f"(+{one - empty:.0f} ns); load average {os.getloadavg()[0]:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(_main())
    sys.exit(0)
