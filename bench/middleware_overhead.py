"""What flowctl costs a hello world: wrk against it, bare vs protected, three ways.

Commands (re-run them on a quiet machine)::

    .venv/bin/python -m bench.middleware_overhead            # sequential: 3 rounds, 10 s each, -c50
    .venv/bin/python -m bench.middleware_overhead --rounds 6 --duration 10 --pin --variants bare,flowctl --json out.json
    .venv/bin/python -m bench.middleware_overhead --paired --variants bare,flowctl --rounds 4 --duration 10
    .venv/bin/python -m bench.middleware_overhead --idle 30 --variants bare,flowctl
    .venv/bin/python -m bench.middleware_overhead --micro   # in-process us/request, no sockets

Variants, each served by its own single-process aiohttp server on loopback:

- ``bare``: hello world, no middleware.
- ``flowctl``: the same app after ``flowctl.aiohttp.setup(app)`` with defaults
  (route handlers wrapped at start-up, container CPU sampler, BBR, loop-lag
  monitor, duration histogram, /metrics).
- ``flowctl_dry``: as ``flowctl`` with ``dry_run=True``: every request takes the
  full decision path and is admitted, so no cheap 503 flatters throughput.
- on request only (``--variants``): ``trivial_mw`` (one do-nothing
  ``@web.middleware``: aiohttp's own price for any middleware),
  ``flowctl_nolag`` (``flowctl`` without the loop-lag monitor) and
  ``flowctl_middleware`` (``setup(app, hook="middleware")``: an aiohttp
  middleware instead of wrapped handlers).

Modes:

- *sequential* (default): one server at a time, ``wrk`` against it; the
  ``flowctl*`` servers are scraped once a second. Rounds alternate the
  variants (A B C, C B A, ...) so drift from other load hits all of them
  alike; the report gives every run, the medians and each variant's median
  req/s as a ratio of bare's. It also reports the server process's CPU time
  per request (utime+stime from /proc/PID/stat over the wrk run / requests
  served): less sensitive to other load than req/s. ``--pin`` puts the
  server on CPU 0 and wrk on CPU 1.
- ``--paired``: side by side. Two variants (baseline first) are served at
  the same time, both pinned to CPU 0, each hit by its own ``wrk -t1 -c25``
  pinned to CPU 1. CFS splits CPU 0 between the two saturated servers, so
  the ratio of their req/s is the inverse of their CPU-per-request ratio,
  measured in the same moment: drift from other load hits both alike. The
  server started (and loaded) first alternates each round. No /metrics
  scrape. Prints per round each side's req/s and CPU us/request and the
  ratio B/A, then the median ratio. Needs CPUs 0 and 1 and ``taskset``.
- ``--idle SECONDS``: each variant's server is started (all at once), sent
  one request, then left without load; its process CPU over SECONDS is
  reported as % of one core (the cost of timers and samplers).
- ``--micro``: in-process microseconds per request (see ``micro``).

Non-2xx responses are reported: on a busy host the default variant may
legitimately shed. The 1-min load average before and after is printed,
because measurements here swing with other load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from bench.ports import free_port

VARIANTS = ("bare", "flowctl", "flowctl_dry")
EXTRA_VARIANTS = ("trivial_mw", "flowctl_nolag", "flowctl_middleware")  # for attributing cost: --variants bare,trivial_mw,...
PAIRED_VARIANTS = ("bare", "flowctl")  # --paired without --variants
PAIRED_CONNECTIONS = 25  # per wrk in --paired (one wrk thread each)


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
    elif variant == "flowctl_middleware":
        import flowctl.aiohttp

        flowctl.aiohttp.setup(app, hook="middleware")
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


def _start_server(variant: str, port: int, *, cpu: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``--serve variant`` on ``port`` (pinned to ``cpu`` with taskset if given); not yet ready."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return subprocess.Popen(
        [*pin, sys.executable, "-m", "bench.middleware_overhead", "--serve", variant, "--port", str(port)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _requests_done(out: str) -> tuple[int, float] | None:
    """(requests, elapsed s) from wrk's ``N requests in 10.00s`` line."""
    m = re.search(r"(\d+) requests in ([\d.]+(?:us|ms|s|m))", out)
    return (int(m.group(1)), _ms(m.group(2)) / 1e3) if m else None


def run_one(
    variant: str, rnd: int, *, duration_s: int, connections: int, threads: int, wrk: str, pin: bool = False
) -> Run:
    port = free_port()
    server = _start_server(variant, port, cpu=0 if pin else None)
    wrk_pin = ["taskset", "-c", "1"] if pin else []
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
        _stop_server(server)
    rps, p50, p99, non2, errs = parse_wrk(out)
    done = _requests_done(out)
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and done and done[0]:
        cpu_us = (cpu_after - cpu_before) / done[0] * 1e6
    return Run(variant, rnd, rps, p50, p99, non2, errs, cpu_us)


# ---------------------------------------------------------------- side by side


@dataclass
class PairedRun:
    """One round of ``paired``: both servers on CPU 0 at once; ``ratio`` = B's req/s / A's."""

    round: int
    first: str
    variant_a: str
    variant_b: str
    requests_per_s_a: float
    requests_per_s_b: float
    server_cpu_us_per_request_a: float | None
    server_cpu_us_per_request_b: float | None
    non_2xx_a: int
    non_2xx_b: int
    ratio: float


def paired_round(a: str, b: str, rnd: int, *, duration_s: int, connections: int, wrk: str, a_first: bool) -> PairedRun:
    """Serve ``a`` and ``b`` together on CPU 0 and load each with its own wrk on CPU 1 for ``duration_s``."""
    order = (a, b) if a_first else (b, a)
    ports = {v: free_port() for v in order}
    servers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for v in order:
            servers[v] = _start_server(v, ports[v], cpu=0)
        for v in order:
            _wait_ready(ports[v])
        cpu0 = {v: _cpu_s(servers[v].pid) for v in order}
        wrks = {
            v: subprocess.Popen(
                ["taskset", "-c", "1", wrk, "-t1", f"-c{connections}", f"-d{duration_s}s", f"http://127.0.0.1:{ports[v]}/"],
                stdout=subprocess.PIPE,
                text=True,
            )
            for v in order
        }
        outs = {v: wrks[v].communicate()[0] for v in order}
        cpu1 = {v: _cpu_s(servers[v].pid) for v in order}
        if any(w.returncode for w in wrks.values()):
            raise RuntimeError(f"wrk failed: {[w.returncode for w in wrks.values()]}")
    finally:
        for server in servers.values():
            _stop_server(server)

    rps: dict[str, float] = {}
    cpu_us: dict[str, float | None] = {}
    non2: dict[str, int] = {}
    for v in order:
        done = _requests_done(outs[v])
        if not done or not done[0] or not done[1]:
            raise RuntimeError(f"no requests served by {v!r}:\n{outs[v]}")
        n, elapsed_s = done
        rps[v] = n / elapsed_s
        c0, c1 = cpu0[v], cpu1[v]
        cpu_us[v] = (c1 - c0) / n * 1e6 if c0 is not None and c1 is not None else None
        non2[v] = parse_wrk(outs[v])[3]
    return PairedRun(rnd, order[0], a, b, rps[a], rps[b], cpu_us[a], cpu_us[b], non2[a], non2[b], rps[b] / rps[a])


def paired(a: str, b: str, *, rounds: int, duration_s: int, connections: int = PAIRED_CONNECTIONS, wrk: str = "wrk",
           on_round: Callable[[PairedRun], None] | None = None) -> list[PairedRun]:  # fmt: skip
    """``rounds`` side-by-side rounds of ``a`` (baseline) and ``b``; the one started first alternates.

    ``on_round`` is called with each round as it completes.
    """
    if a == b:
        raise ValueError("paired needs two different variants")
    if not {0, 1} <= os.sched_getaffinity(0):
        raise SystemExit("--paired pins the servers to CPU 0 and wrk to CPU 1: both must be available")
    runs = []
    for rnd in range(1, rounds + 1):
        r = paired_round(a, b, rnd, duration_s=duration_s, connections=connections, wrk=wrk, a_first=rnd % 2 == 1)
        if on_round is not None:
            on_round(r)
        runs.append(r)
    return runs


# ---------------------------------------------------------------- idle


def idle(variants: Sequence[str], seconds: float) -> dict[str, dict[str, float]]:
    """Per variant: the server's CPU over ``seconds`` without load, after one request (``cpu_s``, ``wall_s``, ``cores``)."""
    ports = {v: free_port() for v in variants}
    servers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for v in variants:
            servers[v] = _start_server(v, ports[v])
        for v in variants:
            _wait_ready(ports[v])  # the one request
        before = {v: _cpu_s(servers[v].pid) for v in variants}
        t0 = time.monotonic()
        time.sleep(seconds)
        wall_s = time.monotonic() - t0
        after = {v: _cpu_s(servers[v].pid) for v in variants}
    finally:
        for server in servers.values():
            _stop_server(server)
    out: dict[str, dict[str, float]] = {}
    for v in variants:
        b0, b1 = before[v], after[v]
        if b0 is None or b1 is None:
            raise SystemExit("--idle reads /proc/PID/stat (Linux only)")
        out[v] = {"cpu_s": b1 - b0, "wall_s": wall_s, "cores": (b1 - b0) / wall_s}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.middleware_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--connections", type=int, help=f"wrk connections (default 50; --paired: {PAIRED_CONNECTIONS} per wrk)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (sequential mode; --paired uses 1 per wrk)")
    p.add_argument("--variants", help=f"comma-separated (default {','.join(VARIANTS)}; --paired: "
                   f"{','.join(PAIRED_VARIANTS)}, baseline first); also {', '.join(EXTRA_VARIANTS)}")  # fmt: skip
    p.add_argument("--json", help="also write the runs and medians to this file")
    p.add_argument("--pin", action="store_true", help="server on CPU 0, wrk on CPU 1 (taskset)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--paired", action="store_true", help="two variants side by side on CPU 0 (see the module doc)")
    mode.add_argument("--idle", type=float, metavar="SECONDS", help="only each variant's CPU use without load")
    mode.add_argument("--micro", action="store_true", help="only the in-process cost per request (no sockets, no wrk)")
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

    default = PAIRED_VARIANTS if args.paired else VARIANTS
    variants = [v for v in args.variants.split(",") if v] if args.variants else list(default)
    unknown = [v for v in variants if v not in VARIANTS + EXTRA_VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS + EXTRA_VARIANTS)}")
    if args.idle is not None:
        return _main_idle(variants, args)
    if args.paired:
        if len(variants) != 2 or variants[0] == variants[1]:
            p.error("--paired needs exactly two different variants: --variants BASELINE,OTHER")
        return _main_paired(variants[0], variants[1], args)
    if args.connections is None:
        args.connections = 50

    wrk = "wrk"
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
                f"round {rnd} {v:18s} {r.requests_per_s:9.0f} req/s  p50 {r.latency_p50_ms} ms  "
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
    print(f"{'variant':18s} {'req/s':>9s} {'vs bare':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'non-2xx':>8s} "
          f"{'CPU us/req':>10s} {'vs bare':>8s}")
    for v, m in medians.items():
        rps = m["requests_per_s"] or 0.0
        ratio = f"{rps / bare:7.1%}" if bare else "      -"
        cpu = m["server_cpu_us_per_request"]
        cpu_ratio = f"{cpu / bare_cpu:7.2f}x" if cpu and bare_cpu else "       -"
        print(f"{v:18s} {rps:9.0f} {ratio:>8s} {m['latency_p50_ms'] or 0:8.2f} {m['latency_p99_ms'] or 0:8.2f} "
              f"{int(m['non_2xx_total'] or 0):8d} {cpu or 0:10.1f} {cpu_ratio:>8s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": [asdict(r) for r in runs], "medians": medians, "load_before": load_before,
                       "load_after": load_after, "args": vars(args)}, f, indent=2)
    return 0


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)


def _main_paired(a: str, b: str, args: argparse.Namespace) -> int:
    connections = args.connections or PAIRED_CONNECTIONS
    load_before = os.getloadavg()[0]

    def show(r: PairedRun) -> None:
        print(f"round {r.round} (first {r.first}): {a} {r.requests_per_s_a:.0f} req/s {r.server_cpu_us_per_request_a or 0:.1f} "
              f"us/req non-2xx {r.non_2xx_a} | {b} {r.requests_per_s_b:.0f} req/s {r.server_cpu_us_per_request_b or 0:.1f} "
              f"us/req non-2xx {r.non_2xx_b} | ratio {r.ratio:.3f}", flush=True)  # fmt: skip

    runs = paired(a, b, rounds=args.rounds, duration_s=args.duration, connections=connections, on_round=show)
    load_after = os.getloadavg()[0]
    median_ratio = statistics.median(r.ratio for r in runs)

    def med(xs: list[float | None]) -> float | None:
        vals = [x for x in xs if x is not None]
        return statistics.median(vals) if vals else None

    medians = {
        a: {"requests_per_s": med([r.requests_per_s_a for r in runs]),
            "server_cpu_us_per_request": med([r.server_cpu_us_per_request_a for r in runs])},
        b: {"requests_per_s": med([r.requests_per_s_b for r in runs]),
            "server_cpu_us_per_request": med([r.server_cpu_us_per_request_b for r in runs])},
    }  # fmt: skip
    print(f"\nmedian ratio {b}/{a} over {args.rounds} rounds: {median_ratio:.3f} (side by side on CPU 0, {args.duration} s, "
          f"wrk -t1 -c{connections} each on CPU 1; load avg 1-min before {load_before:.2f}, after {load_after:.2f})")  # fmt: skip
    _write_json(args.json, {"mode": "paired", "variants": [a, b], "runs": [asdict(r) for r in runs], "median_ratio": median_ratio,
                            "medians": medians, "load_before": load_before, "load_after": load_after, "args": vars(args)})  # fmt: skip
    return 0


def _main_idle(variants: list[str], args: argparse.Namespace) -> int:
    load_before = os.getloadavg()[0]
    res = idle(variants, args.idle)
    for v, r in res.items():
        print(f"idle {v:18s} {r['cores']:7.2%} of a core ({r['cpu_s']:.2f} s CPU over {r['wall_s']:.1f} s)")
    print(f"(no load; CPU time has 1/{os.sysconf('SC_CLK_TCK')} s resolution; load avg 1-min before {load_before:.2f})")
    _write_json(args.json, {"mode": "idle", "seconds": args.idle, "idle": res, "load_before": load_before, "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
