"""The asyncio blind spot, measured: a blocking handler vs a yielding one, bare vs flowctl.

A handler that burns CPU without awaiting blocks the event loop. Requests
then queue in socket buffers and the loop's ready queue *before* any
middleware runs, so in-flight never exceeds 1 and an in-flight rule (BBR)
cannot fire. flowctl's loop-lag trigger (``flowctl.looplag``) sees that
hidden queue and sheds in-process.

One command (about a minute; each run is its own server process)::

    .venv/bin/python examples/blocking_handler.py measure [--clients 50] [--duration 8]

Server alone (``--protect`` adds ``flowctl.aiohttp.setup(app)`` with defaults)::

    .venv/bin/python examples/blocking_handler.py serve --port 8080 --protect

Handlers: ``/block`` burns 5 ms without awaiting; ``/yield`` burns the same
5 ms as five 1 ms slices with ``await asyncio.sleep(0)`` between them.
``/_stats`` (exempt) reports the in-flight maximum seen by an outer counting
middleware and the loop lag. The client is a separate process with N
keep-alive connections in a closed loop; it times each request from send to
response, so queueing before the server's middleware is included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from bench.ports import free_port

WORK_S = 0.005


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# ---------------------------------------------------------------- server


def make_app(*, protect: bool, threshold_s: float | None = None) -> web.Application:
    from flowctl.looplag import LoopLagMonitor

    counts = {"inflight": 0, "max": 0}
    watch: LoopLagMonitor | None = None  # bare: probed here, as flowctl's limiter would

    @web.middleware
    async def count_inflight(request: web.Request, handler: Any) -> web.StreamResponse:
        if watch is not None:
            watch.check(time.monotonic())
        counts["inflight"] += 1
        if counts["inflight"] > counts["max"]:
            counts["max"] = counts["inflight"]
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        finally:
            counts["inflight"] -= 1

    async def block(request: web.Request) -> web.Response:
        burn(WORK_S)
        return web.Response(text="ok")

    async def yielding(request: web.Request) -> web.Response:
        for _ in range(5):
            burn(WORK_S / 5)
            await asyncio.sleep(0)
        return web.Response(text="ok")

    app = web.Application(middlewares=[count_inflight])
    app.router.add_get("/block", block, name="block")
    app.router.add_get("/yield", yielding, name="yielding")

    if protect:
        import flowctl.aiohttp

        kw: dict[str, Any] = {"exempt_paths": ("/_stats", "/metrics")}
        if threshold_s is not None:
            kw["loop_lag_threshold_s"] = threshold_s
        state = flowctl.aiohttp.setup(app, **kw)
        monitor = state.loop_lag
        limiter = state.limiter
    else:  # the same monitor, only watching (its check() queues the probes), to report the bare app's lag
        monitor = watch = LoopLagMonitor()
        limiter = None

        async def run_monitor(app: web.Application) -> Any:
            async with monitor:
                yield

        app.cleanup_ctx.append(run_monitor)

    async def stats(request: web.Request) -> web.Response:
        assert monitor is not None
        out: dict[str, Any] = {"max_inflight_seen": counts["max"], "max_loop_lag_s": monitor.max_lag_s}
        reasons: dict[str, int] = {}
        if limiter is not None:
            for (_, trigger), n in limiter.snapshot().shed_by_reason.items():
                reasons[trigger] = reasons.get(trigger, 0) + n
        out["shed_by_reason"] = reasons
        if request.query.get("reset"):
            counts["max"] = 0
            monitor.max_lag_s = 0.0
        return web.json_response(out)

    app.router.add_get("/_stats", stats)
    return app


# ---------------------------------------------------------------- client


async def load(url: str, clients: int, duration_s: float) -> dict[str, Any]:
    import aiohttp

    lat_ok: list[float] = []
    lat_shed: list[float] = []
    other = 0
    stop_at = time.monotonic() + duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal other
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            async with session.get(url) as r:
                await r.read()
            dt = time.perf_counter() - t0
            if r.status == 200:
                lat_ok.append(dt)
            elif r.status in (429, 503):
                lat_shed.append(dt)
            else:
                other += 1

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as session:
        t0 = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        wall = time.monotonic() - t0

    def q(xs: list[float], p: float) -> float | None:
        if not xs:
            return None
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1e3

    return {
        "ok_per_s": len(lat_ok) / wall,
        "shed_per_s": len(lat_shed) / wall,
        "ok_p50_ms": q(lat_ok, 0.5),
        "ok_p99_ms": q(lat_ok, 0.99),
        "shed_p50_ms": q(lat_shed, 0.5),
        "other": other,
    }


# ---------------------------------------------------------------- driver


def _get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def measure_one(path: str, protect: bool, clients: int, duration_s: float, threshold_s: float | None) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, __file__, "serve", "--port", str(port)]
    if protect:
        cmd.append("--protect")
    if threshold_s is not None:
        cmd += ["--threshold-s", str(threshold_s)]
    server = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                _get_json(f"http://127.0.0.1:{port}/_stats?reset=1")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        time.sleep(0.5)  # let the CPU sampler get its first readings
        _get_json(f"http://127.0.0.1:{port}/_stats?reset=1")
        result = asyncio.run(load(f"http://127.0.0.1:{port}{path}", clients, duration_s))
        result.update(_get_json(f"http://127.0.0.1:{port}/_stats"))
    finally:
        server.terminate()
        server.wait(timeout=10)
    result.update(path=path, variant="flowctl" if protect else "bare")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--protect", action="store_true")
    s.add_argument("--threshold-s", type=float, default=None)
    m = sub.add_parser("measure")
    m.add_argument("--clients", type=int, default=50)
    m.add_argument("--duration", type=float, default=8.0)
    m.add_argument("--threshold-s", type=float, default=None, help="loop-lag trigger threshold (default: setup's)")
    m.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)

    if args.cmd == "serve":
        web.run_app(make_app(protect=args.protect, threshold_s=args.threshold_s), host="127.0.0.1",
                    port=args.port, access_log=None, print=None)  # fmt: skip
        return 0

    load_before = os.getloadavg()[0]
    rows = []
    for path in ("/block", "/yield"):
        for protect in (False, True):
            r = measure_one(path, protect, args.clients, args.duration, args.threshold_s)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{args.clients} clients, {args.duration:g} s each, {WORK_S * 1e3:g} ms of CPU per request; "
          f"load avg 1-min before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'handler':8s} {'variant':8s} {'inflight':>8s} {'loop lag':>9s} {'ok/s':>6s} {'ok p50':>8s} "
          f"{'ok p99':>8s} {'shed/s':>7s} {'shed p50':>9s}  shed reasons")  # fmt: skip

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}ms"

    for r in rows:
        print(f"{r['path']:8s} {r['variant']:8s} {r['max_inflight_seen']:8d} {r['max_loop_lag_s'] * 1e3:7.0f}ms "
              f"{r['ok_per_s']:6.0f} {ms(r['ok_p50_ms']):>8s} {ms(r['ok_p99_ms']):>8s} {r['shed_per_s']:7.0f} "
              f"{ms(r['shed_p50_ms']):>9s}  {r['shed_by_reason'] or '-'}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "args": vars(args), "load_before": load_before}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
