"""The benchmark upstream: an aiohttp service with three handlers, protected by flowctl in one variant.

Handlers (resources; ``HANDLERS`` maps their names to paths):

- ``/cpu-blocking``: pure-Python work of ``--work-iters`` iterations (about
  5 ms of CPU by default) with no await: blocks the event loop.
- ``/cpu-yielding``: the same work in ``--slices`` awaited slices, then a short
  awaited I/O wait (``--io-ms``), as real services do.
- ``/cpu-mixed``: a mix of CPU and I/O, as a handler that calls a database does:
  half the work (no await), an awaited wait of ``--mixed-io-ms`` (10 ms by
  default), then the other half.
- ``/io``: an awaited wait of ``--io-bound-ms`` with almost no CPU.
- ``/ws``: a WebSocket held open until the client closes it (echoes text).
- ``/sse``: a Server-Sent Events stream, one ``data: tick`` event a second,
  until the client goes away.

Variants (``--variant``): ``none`` (no limiter), ``fixed`` (a fixed concurrency
limit), ``bbr-host``, ``bbr-container``, ``bbr-lxcfs`` (flowctl's BBR limiter fed
the host /proc, the cgroup, or the lxcfs view: every machine input from that
view), ``gradient`` (latency-only Gradient2-style). ``flowctl`` is
``flowctl.aiohttp.setup(app)`` with its defaults (no hand-built limiter).
``kratos`` is a Kratos-style peer: CPU-gated BBR with a 1 s cool-off and no
loop-lag trigger (:func:`kratos_limiter`), reading the cgroup;
``kratos-host`` and ``kratos-lxcfs`` are the same peer reading the host's /proc
or lxcfs's, as it ships.
``/_bench/state`` (never limited) returns the limiter snapshot and every CPU
view's latest reading as JSON, for the harness's time series.

Run: ``python -m bench.upstream --port 8080 --variant bbr-container``; usually
started by ``bench.scenarios`` inside a cgroup via ``flowctl.workload.launch``.
"""

from __future__ import annotations

from flowctl.limiter import Policy

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import WSMsgType, web

__all__ = ["VARIANTS", "HANDLERS", "burn", "calibrate_iters_per_ms", "kratos_limiter", "make_app", "main"]

VARIANTS = ("none", "fixed", "bbr-host", "bbr-container", "bbr-lxcfs", "gradient", "flowctl", "kratos", "kratos-host",
            "kratos-lxcfs")  # fmt: skip
EXEMPT_PATHS = ("/healthz", "/metrics", "/_bench/state")
HANDLERS = {"blocking": "/cpu-blocking", "yielding": "/cpu-yielding", "mixed": "/cpu-mixed", "io": "/io"}
PRIORITY_HEADER = "X-Priority"


def burn(iters: int) -> int:
    """Pure-Python CPU work: ``iters`` loop iterations, no allocation, no await."""
    acc = 0
    for i in range(iters):
        acc = (acc + i * i) % 1_000_003
    return acc


def burn_cpu(cpu_s: float) -> int:
    """Pure-Python CPU work until this thread has used ``cpu_s`` seconds of CPU time (``thread_time``).

    A request then costs the same share of a CFS quota whatever the VM's speed does: this
    machine's 2 CPUs run ``burn`` at ~7000 or ~11500 iterations per ms depending on what the
    other one does, so iteration counts calibrated at one moment made whole scorecard runs 1.6x
    heavier than intended. Checks the clock every 200 iterations (~30 µs)."""
    end = time.thread_time() + cpu_s
    acc = 0
    while time.thread_time() < end:
        for i in range(200):
            acc = (acc + i * i) % 1_000_003
    return acc


def calibrate_iters_per_ms(target_ms: float = 50.0) -> float:
    """Iterations of :func:`burn` per millisecond of *thread CPU time* (immune to throttling): the
    median of 5 measurements. (The fastest of 5, used before, once read 12265 against 7257-7565 in
    the other runs of the day: the 2 CPUs behave like SMT siblings, and one quiet moment made every
    "5 ms" request of that scorecard 1.65x heavier, its 0.9x load 0.75 of saturation.)"""
    burn(20_000)
    rates = []
    for _ in range(5):
        n = 50_000
        t0 = time.thread_time()
        burn(n)
        dt = time.thread_time() - t0
        n = int(n * target_ms / 1000.0 / max(dt, 1e-6))
        t0 = time.thread_time()
        burn(n)
        dt = time.thread_time() - t0
        rates.append(n / (max(dt, 1e-9) * 1000.0))
    return statistics.median(rates)


def _reading_dict(sig: Any) -> dict[str, Any]:
    try:
        r = sig.reading
        return {"name": sig.name, **dataclasses.asdict(r)}
    except Exception as exc:  # a broken view must not break the state endpoint
        return {"name": getattr(sig, "name", "?"), "error": repr(exc)}


_LIMITER = web.AppKey("bench_limiter", object)
_VIEWS = web.AppKey("bench_views", dict)
_LAG = web.AppKey("bench_lag", object)


def _hot_signal() -> Any:
    """A signal that always reads "saturated": leaves only the algorithm's own limit in force."""
    from flowctl.signal import StaticSignal

    return StaticSignal(name="static", utilization=1.0, utilization_smoothed=1.0, usage_cores=1.0, limit_cores=1.0)


def kratos_limiter(view: str = "container") -> Any:
    """The Kratos-style peer: BBR gated by the ``view``'s CPU as Kratos' rule has it, on flowctl's parts.

    Bare Little's law (no headroom), any single reading over 0.8 is hot, a 1 s cool-off
    that always runs its course, no period gate, no in-flight ceiling, no busy floor, no loop-lag trigger. (Kinder to it than Kratos
    itself is: RT is not rounded to ms; with ``view="container"`` the CPU is the cgroup's, re-read
    every second. Kratos and go-zero ship it reading /proc: ``view="host"``.)
    """
    from flowctl.cpu import make_signal
    from flowctl.limit.bbr import Bbr
    from flowctl.limiter import Limiter

    return Limiter(make_signal(view, fallback=False), Bbr(headroom=0.0), policy=Policy(cool_off_s=1.0, hot_samples=1, cool_fraction=0.0, queue_allowance=None, busy_floor=False, period_gate=False))  # fmt: skip


def build_limiter(variant: str, *, fixed_limit: int) -> tuple[Any, dict[str, Any]]:
    """The Limiter for ``variant`` and the CPU views (name -> Sampler) to sample beside it.

    BBR (and Kratos) variants differ only in the CPU view fed to the limiter: every machine input
    comes from it (no fallback to another view: a view that fails leaves the CPU unknown). ``fixed`` and
    ``gradient`` are the concurrency-limit peers: no CPU gate, their limit alone.
    """
    from flowctl.cpu import make_signal
    from flowctl.limit import make_algorithm
    from flowctl.limiter import Limiter

    views: dict[str, Any] = {"container": make_signal("container", fallback=False), "host": make_signal("host")}
    if variant in ("bbr-lxcfs", "kratos-lxcfs"):
        views["lxcfs"] = make_signal("lxcfs", fallback=False)
    if variant.startswith("kratos"):
        view = variant.removeprefix("kratos").removeprefix("-") or "container"
        lim = kratos_limiter(view)
        views[view] = lim.signal
        return lim, views
    if variant in ("bbr-host", "bbr-container", "bbr-lxcfs"):
        return Limiter(views[variant.removeprefix("bbr-")], make_algorithm("bbr")), views
    if variant in ("fixed", "gradient"):
        algorithm = make_algorithm(variant, fixed_limit=fixed_limit)  # the peers as they are: their limit alone
        return Limiter(views["container"], algorithm, policy=Policy(cpu_gate=False, queue_allowance=None, busy_floor=False)), views
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def make_app(
    variant: str = "none",
    *,
    work_iters: int = 50_000,
    work_cpu_s: float | None = None,
    slices: int = 5,
    io_ms: float = 2.0,
    io_bound_ms: float = 20.0,
    mixed_io_ms: float = 10.0,
    fixed_limit: int = 4,
    loop_lag: bool = True,
) -> web.Application:
    """The upstream app for ``variant`` (see the module docstring)."""
    app = web.Application()
    slice_iters = max(1, work_iters // max(1, slices))
    slice_cpu_s = None if work_cpu_s is None else work_cpu_s / max(1, slices)

    async def cpu_blocking(request: web.Request) -> web.Response:
        if work_cpu_s is None:
            burn(work_iters)
        else:
            burn_cpu(work_cpu_s)
        return web.Response(text="ok")

    async def cpu_yielding(request: web.Request) -> web.Response:
        for _ in range(slices):
            if slice_cpu_s is None:
                burn(slice_iters)
            else:
                burn_cpu(slice_cpu_s)
            await asyncio.sleep(0)
        await asyncio.sleep(io_ms / 1000.0)
        return web.Response(text="ok")

    async def cpu_mixed(request: web.Request) -> web.Response:
        for half in (0, 1):
            if work_cpu_s is None:
                burn(work_iters // 2)
            else:
                burn_cpu(work_cpu_s / 2)
            if half == 0:
                await asyncio.sleep(mixed_io_ms / 1000.0)
        return web.Response(text="ok")

    async def io_bound(request: web.Request) -> web.Response:
        await asyncio.sleep(io_bound_ms / 1000.0)
        return web.Response(text="ok")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"data: tick\n\n")
                await asyncio.sleep(1.0)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def state(request: web.Request) -> web.Response:
        out: dict[str, Any] = {"variant": variant, "pid": os.getpid(), "at": time.monotonic()}
        limiter = request.app.get(_LIMITER)
        if limiter is not None:
            try:
                out["snapshot"] = limiter.snapshot().as_dict()  # type: ignore[attr-defined]
            except Exception as exc:
                out["snapshot_error"] = repr(exc)
        out["views"] = {k: _reading_dict(v) for k, v in request.app.get(_VIEWS, {}).items()}
        lag = request.app.get(_LAG)
        if lag is not None:
            out["loop_lag"] = {"last_s": getattr(lag, "last_lag_s", None), "max_s": getattr(lag, "max_lag_s", None)}
        ru = os.times()
        out["process_cpu_s"] = ru.user + ru.system
        return web.json_response(out, dumps=lambda o: json.dumps(o, default=str))

    app.router.add_get("/cpu-blocking", cpu_blocking, name="cpu-blocking")
    app.router.add_get("/cpu-yielding", cpu_yielding, name="cpu-yielding")
    app.router.add_get("/cpu-mixed", cpu_mixed, name="cpu-mixed")
    app.router.add_get("/io", io_bound, name="io")
    app.router.add_get("/_bench/state", state, name="bench-state")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/ws", websocket, name="ws")
    app.router.add_get("/sse", sse, name="sse")

    if variant == "none":
        _setup_views_only(app)
        return app

    import flowctl.aiohttp as fa

    if variant == "flowctl":
        # The library's defaults: setup builds and runs the signal, limiter and loop-lag trigger
        # (the trigger off with --no-loop-lag, as in the other in-process variants).
        fc = fa.setup(app, exempt_paths=EXEMPT_PATHS, trusted_priority_header=PRIORITY_HEADER, loop_lag=loop_lag)
        app[_LIMITER] = fc.limiter
        app[_VIEWS] = dict(fc.views)
        if fc.loop_lag is not None:
            app[_LAG] = fc.loop_lag
        return app

    limiter, views = build_limiter(variant, fixed_limit=fixed_limit)
    app[_LIMITER] = limiter
    app[_VIEWS] = views

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        started = []
        try:
            for v in views.values():
                await v.start()
                started.append(v)
            yield
        finally:
            for v in started:
                await v.stop()

    app.cleanup_ctx.append(lifetime)
    # The loop-lag trigger (the asyncio blind spot, issue 4) belongs to flowctl's BBR
    # set-up; the fixed and gradient peers run as those algorithms do elsewhere, without it.
    fc = fa.setup(
        app,
        limiter=limiter,
        exempt_paths=EXEMPT_PATHS,
        trusted_priority_header=PRIORITY_HEADER,
        loop_lag=loop_lag and variant.startswith("bbr-"),
    )
    if fc.loop_lag is not None:
        app[_LAG] = fc.loop_lag
    return app


def _setup_views_only(app: web.Application) -> None:
    """CPU views for the ``none`` variant's state endpoint (sampled, never used to limit)."""
    try:
        from flowctl.cpu import make_signal
    except ImportError:
        return
    views = {"container": make_signal("container"), "host": make_signal("host")}
    app[_VIEWS] = views

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        for v in views.values():
            await v.start()
        try:
            yield
        finally:
            for v in views.values():
                await v.stop()

    app.cleanup_ctx.append(lifetime)


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.upstream", description="flowctl benchmark upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--variant", choices=VARIANTS, default="none")
    p.add_argument("--work-ms", type=float, default=5.0, help="CPU work per request (calibrated here unless --work-iters)")
    p.add_argument("--work-iters", type=int, default=0, help="burn() iterations per request (0 = calibrate --work-ms)")
    p.add_argument("--work-cpu-ms", type=float, default=0.0,
                   help="instead: burn until the request has used this much thread CPU time (0 = off)")
    p.add_argument("--slices", type=int, default=5)
    p.add_argument("--io-ms", type=float, default=2.0, help="awaited wait of the yielding handler")
    p.add_argument("--io-bound-ms", type=float, default=20.0)
    p.add_argument("--mixed-io-ms", type=float, default=10.0, help="awaited wait between the two halves of the mixed handler")
    p.add_argument("--fixed-limit", type=int, default=4)
    p.add_argument("--no-loop-lag", action="store_true", help="BBR and flowctl variants without the event-loop lag trigger")
    p.add_argument("--backlog", type=int, default=128, help="listen backlog (aiohttp's default)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _build_parser().parse_args(argv)
    cpu_s = a.work_cpu_ms / 1000.0 if a.work_cpu_ms > 0 else None
    iters = 0 if cpu_s is not None else (a.work_iters or int(calibrate_iters_per_ms() * a.work_ms))
    app = make_app(
        a.variant,
        work_iters=iters,
        work_cpu_s=cpu_s,
        slices=a.slices,
        io_ms=a.io_ms,
        io_bound_ms=a.io_bound_ms,
        mixed_io_ms=a.mixed_io_ms,
        fixed_limit=a.fixed_limit,
        loop_lag=not a.no_loop_lag,
    )
    work = f"work_cpu_ms={a.work_cpu_ms:g}" if cpu_s is not None else f"work_iters={iters}"
    print(f"upstream: variant={a.variant} {work} listening on {a.host}:{a.port}", file=sys.stderr, flush=True)
    web.run_app(app, host=a.host, port=a.port, backlog=a.backlog, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
