"""What the flowctl middleware and metrics cost: wrk against hello world, bare vs protected.

One command (re-run it on a quiet machine)::

    .venv/bin/python -m bench.middleware_overhead            # 3 rounds, 10 s each, -c50
    .venv/bin/python -m bench.middleware_overhead --rounds 5 --duration 20 --json out.json
    .venv/bin/python -m bench.middleware_overhead --micro   # in-process us/request, no sockets

Variants, each served by its own single-process aiohttp server on loopback:

- ``bare``: hello world, no middleware.
- ``flowctl``: the same app after ``flowctl.aiohttp.setup(app)`` with defaults
  (container CPU sampler, BBR, loop-lag monitor, duration histogram, /metrics),
  scraped once a second during the run.
- ``flowctl_dry``: as ``flowctl`` with ``dry_run=True``: every request takes the
  full decision path and is admitted, so no cheap 503 flatters throughput.
- on request only (``--variants``): ``trivial_mw`` (one do-nothing
  ``@web.middleware``: aiohttp's own price for any middleware) and
  ``flowctl_nolag`` (``flowctl`` without the loop-lag monitor).

Rounds alternate the variants (A B C A B C ...) so drift from other load hits
all of them alike; the report gives every run, the medians and each variant's
median req/s as a ratio of bare's. It also reports the server process's CPU
time per request (utime+stime from /proc/PID/stat over the wrk run / requests
served): less sensitive to other load on the machine than req/s. Non-2xx responses are reported: on a busy
host the default variant may legitimately shed. The 1-min load average before
and after is printed, because measurements here swing with other load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

VARIANTS = ("bare", "flowctl", "flowctl_dry")
EXTRA_VARIANTS = ("trivial_mw", "flowctl_nolag")  # for attributing cost: --variants bare,trivial_mw,...


# ---------------------------------------------------------------- the served app


def serve(variant: str, port: int) -> None:
    """Run the hello-world app for ``variant`` on 127.0.0.1:``port`` (blocks)."""
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello\n")

    app = web.Application()
    app.router.add_get("/", hello, name="hello")
    if variant == "flowctl":
        import flowctl.aiohttp

        flowctl.aiohttp.setup(app)
    elif variant == "flowctl_dry":
        import flowctl.aiohttp

        flowctl.aiohttp.setup(app, limiter_options={"dry_run": True})
    elif variant == "flowctl_nolag":
        import flowctl.aiohttp

        flowctl.aiohttp.setup(app, loop_lag=False)
    elif variant == "trivial_mw":

        @web.middleware
        async def trivial(request: web.Request, handler: Any) -> web.StreamResponse:
            resp: web.StreamResponse = await handler(request)
            return resp

        app.middlewares.append(trivial)
    elif variant != "bare":
        raise SystemExit(f"unknown variant {variant!r}")
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------- in-process cost


def micro(repeats: int = 7, n: int = 50_000) -> dict[str, float]:
    """Median us per request: the handler alone, through a trivial middleware, through flowctl's.

    No sockets: a mocked request with its route resolved, awaited in a loop.
    The limiter is real (BBR, loop-lag trigger) with a cool static CPU signal;
    the lag monitor has a probe pending far in the future, so it never fires while the loop spins.
    """
    import asyncio
    import time as _time

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request
    from prometheus_client import CollectorRegistry

    import flowctl.aiohttp as fa
    from flowctl.limiter import Limiter
    from flowctl.signal import StaticSignal

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello\n")

    @web.middleware
    async def trivial(request: web.Request, handler: Any) -> web.StreamResponse:
        resp: web.StreamResponse = await handler(request)
        return resp

    async def run() -> dict[str, float]:
        app = web.Application()
        app.router.add_get("/", hello, name="hello")
        limiter = Limiter(StaticSignal("container", utilization=0.3, limit_cores=2.0))
        state = fa.setup(app, limiter=limiter, registry=CollectorRegistry())
        runner = web.AppRunner(app)
        await runner.setup()  # start-up: the route handlers get wrapped (hook="wrap")
        assert state.loop_lag is not None
        state.loop_lag.arm(_time.monotonic() + 1e9)  # a probe pending that never runs late
        guarded = next(r.handler for r in app.router.routes() if r.resource is not None and r.resource.canonical == "/")
        req = make_mocked_request("GET", "/", app=app)
        req._match_info = await app.router.resolve(req)  # what aiohttp does before the handler

        async def bare() -> None:
            await hello(req)

        async def via_trivial() -> None:
            await trivial(req, hello)

        async def via_flowctl() -> None:
            await guarded(req)

        out: dict[str, list[float]] = {"handler": [], "trivial_mw": [], "flowctl_mw": []}
        for _ in range(repeats):
            for name, fn in (("handler", bare), ("trivial_mw", via_trivial), ("flowctl_mw", via_flowctl)):
                t0 = _time.perf_counter()
                for _ in range(n):
                    await fn()
                out[name].append((_time.perf_counter() - t0) / n * 1e6)
        assert limiter.inflight == 0
        await runner.cleanup()
        return {k: statistics.median(v) for k, v in out.items()}

    return asyncio.run(run())


# ---------------------------------------------------------------- the driver


@dataclass
class Run:
    variant: str
    round: int
    requests_per_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    non_2xx: int
    errors: str
    server_cpu_us_per_request: float | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                r.read()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not become ready")


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(out: str) -> tuple[float, float | None, float | None, int, str]:
    """(req/s, p50 ms, p99 ms, non-2xx count, socket errors line) from ``wrk --latency`` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*", out)
    return (
        rps,
        _ms(p50.group(1)) if p50 else None,
        _ms(p99.group(1)) if p99 else None,
        int(non2.group(1)) if non2 else 0,
        errs.group(0) if errs else "",
    )


def _cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape_loop(port: int, stop: threading.Event, interval_s: float = 1.0) -> None:
    while not stop.wait(interval_s):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                r.read()
        except OSError:
            pass


def run_one(
    variant: str, rnd: int, *, duration_s: int, connections: int, threads: int, wrk: str, pin: bool = False
) -> Run:
    port = _free_port()
    server_pin = ["taskset", "-c", "0"] if pin else []
    wrk_pin = ["taskset", "-c", "1"] if pin else []
    server = subprocess.Popen(
        [*server_pin, sys.executable, "-m", "bench.middleware_overhead", "--serve", variant, "--port", str(port)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    stop = threading.Event()
    scraper: threading.Thread | None = None
    try:
        _wait_ready(port)
        if variant.startswith("flowctl"):
            scraper = threading.Thread(target=_scrape_loop, args=(port, stop), daemon=True)
            scraper.start()
        cpu_before = _cpu_s(server.pid)
        out = subprocess.run(
            [*wrk_pin, wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", f"http://127.0.0.1:{port}/"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        cpu_after = _cpu_s(server.pid)
    finally:
        stop.set()
        if scraper is not None:
            scraper.join()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    rps, p50, p99, non2, errs = parse_wrk(out)
    total = re.search(r"(\d+) requests in", out)
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and total and int(total.group(1)):
        cpu_us = (cpu_after - cpu_before) / int(total.group(1)) * 1e6
    return Run(variant, rnd, rps, p50, p99, non2, errs, cpu_us)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.middleware_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json", help="also write the runs and medians to this file")
    p.add_argument("--pin", action="store_true", help="server on CPU 0, wrk on CPU 1 (taskset)")
    p.add_argument("--micro", action="store_true", help="only the in-process cost per request (no sockets, no wrk)")
    p.add_argument("--serve", choices=VARIANTS + EXTRA_VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=8080, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0

    if args.micro:
        mic = micro()
        print(f"in-process us/request (median of 7): handler {mic['handler']:.2f}, "
              f"+trivial middleware {mic['trivial_mw'] - mic['handler']:+.2f}, "
              f"+flowctl middleware {mic['flowctl_mw'] - mic['handler']:+.2f} "
              f"(load avg {os.getloadavg()[0]:.2f})")
        return 0

    wrk = "wrk"
    variants = [v for v in args.variants.split(",") if v]
    load_before = os.getloadavg()[0]
    runs: list[Run] = []
    for rnd in range(1, args.rounds + 1):
        # Alternate the order each round (A B, B A, ...): on this VM the position in a
        # round alone moved one variant by up to 30%, which a fixed order turns into bias.
        for v in variants if rnd % 2 else variants[::-1]:
            r = run_one(v, rnd, duration_s=args.duration, connections=args.connections, threads=args.threads, wrk=wrk,
                       pin=args.pin)
            runs.append(r)
            print(
                f"round {rnd} {v:12s} {r.requests_per_s:9.0f} req/s  p50 {r.latency_p50_ms} ms  "
                f"p99 {r.latency_p99_ms} ms  non-2xx {r.non_2xx}  server CPU {r.server_cpu_us_per_request or 0:.1f} us/req "
                f"{r.errors}",
                flush=True,
            )
    load_after = os.getloadavg()[0]

    medians: dict[str, dict[str, float | None]] = {}
    for v in variants:
        mine = [r for r in runs if r.variant == v]
        p50s = [r.latency_p50_ms for r in mine if r.latency_p50_ms is not None]
        p99s = [r.latency_p99_ms for r in mine if r.latency_p99_ms is not None]
        cpus = [r.server_cpu_us_per_request for r in mine if r.server_cpu_us_per_request is not None]
        medians[v] = {
            "requests_per_s": statistics.median(r.requests_per_s for r in mine),
            "latency_p50_ms": statistics.median(p50s) if p50s else None,
            "latency_p99_ms": statistics.median(p99s) if p99s else None,
            "non_2xx_total": float(sum(r.non_2xx for r in mine)),
            "server_cpu_us_per_request": statistics.median(cpus) if cpus else None,
        }
    bare = medians.get("bare", {}).get("requests_per_s")
    bare_cpu = medians.get("bare", {}).get("server_cpu_us_per_request")
    print(f"\nmedians over {args.rounds} rounds ({args.duration} s, -t{args.threads} -c{args.connections}); "
          f"load avg 1-min before {load_before:.2f}, after {load_after:.2f}, cores {os.cpu_count()}")
    print(f"{'variant':14s} {'req/s':>9s} {'vs bare':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'non-2xx':>8s} "
          f"{'CPU us/req':>10s} {'vs bare':>8s}")
    for v, m in medians.items():
        rps = m["requests_per_s"] or 0.0
        ratio = f"{rps / bare:7.1%}" if bare else "      -"
        cpu = m["server_cpu_us_per_request"]
        cpu_ratio = f"{cpu / bare_cpu:7.2f}x" if cpu and bare_cpu else "       -"
        print(f"{v:14s} {rps:9.0f} {ratio:>8s} {m['latency_p50_ms'] or 0:8.2f} {m['latency_p99_ms'] or 0:8.2f} "
              f"{int(m['non_2xx_total'] or 0):8d} {cpu or 0:10.1f} {cpu_ratio:>8s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": [asdict(r) for r in runs], "medians": medians, "load_before": load_before,
                       "load_after": load_after, "args": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
