"""What flowctl costs a hello world: wrk against it, bare vs protected, three ways.

Commands (re-run them on a quiet machine)::

    .venv/bin/python -m bench.middleware_overhead            # sequential: 3 rounds, 10 s each, -c50
    .venv/bin/python -m bench.middleware_overhead --rounds 6 --duration 10 --pin --variants bare,flowctl --json out.json
    .venv/bin/python -m bench.middleware_overhead --paired --variants bare,flowctl --rounds 4 --duration 10
    .venv/bin/python -m bench.middleware_overhead --idle 30 --variants bare,flowctl
    .venv/bin/python -m bench.middleware_overhead --micro   # in-process us/request, no sockets
    .venv/bin/python -m bench.middleware_overhead --rate 1000 --cpus 0.48 --variants bare,flowctl_shed --rounds 3
    .venv/bin/python -m bench.middleware_overhead --paired --variants flowctl_shed@base,flowctl_shed --base-tree /tmp/base

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
  middleware instead of wrapped handlers), and ``flowctl_shed``: ``flowctl``
  as the benchmark upstream sets it up (``trusted_priority_header``) plus a
  trigger that always fires, so every request to ``/`` takes the whole
  admission path and is shed by the middleware (503, stage ``lag``, reason
  ``always``): the CPU one shed costs the app, against ``bare``'s 200; and
  ``bare_shed``: no middleware, ``/`` answers the same 503 (headers and body
  bytes as flowctl's): the floor of what answering a shed costs in aiohttp.
- ``NAME@base`` (with ``--base-tree DIR``): variant NAME served with the
  ``flowctl`` package of DIR (e.g. ``git archive HEAD flowctl | tar -x -C DIR``):
  before/after of the library in one run, the bench code the same on both sides.

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
- ``--rate RPS``: open loop, as the scenarios load the app. Each variant's
  server runs alone on CPU 0 (``--cpus Q``: inside a cgroup with a CFS quota of
  Q on CPU 0, as ``bench.scenarios`` runs the upstream; needs root), is warmed
  up for a second at RPS, left idle for ``--idle-window`` seconds (its timers
  and samplers: ``idle_cores``), then offered Poisson arrivals at RPS by
  ``bench.loadgen`` on CPU 1 for ``--duration`` seconds. Reported per round:
  its CPU per answer (all of it, and with the idle CPU taken out), the
  answers by status, and the cores it used. Rounds alternate the order.
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
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from bench.ports import free_port

VARIANTS = ("bare", "flowctl", "flowctl_dry")
EXTRA_VARIANTS = ("trivial_mw", "flowctl_nolag", "flowctl_middleware", "flowctl_shed", "bare_shed")  # --variants bare,...
PAIRED_VARIANTS = ("bare", "flowctl")  # --paired without --variants
PAIRED_CONNECTIONS = 25  # per wrk in --paired (one wrk thread each)
BASE_SUFFIX = "@base"  # NAME@base: variant NAME served with the flowctl package of --base-tree


class _AlwaysShed:
    """A bypass trigger that always fires: every admission runs the whole path and is shed (stage lag)."""

    name = "always"
    threshold = 0.0
    bypass_inflight = True

    def check(self, now: float) -> float | None:
        return 1.0


def _split_variant(variant: str) -> tuple[str, bool]:
    """(the served variant, whether it runs with the base tree's flowctl)."""
    if variant.endswith(BASE_SUFFIX):
        return variant[: -len(BASE_SUFFIX)], True
    return variant, False


# ---------------------------------------------------------------- the served app


def serve(variant: str, port: int) -> None:
    """Run the hello-world app for ``variant`` on 127.0.0.1:``port`` (blocks)."""
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello\n")

    shed_body = b'{"error": "overloaded", "reason": "always", "stage": "lag", "retry_after_s": 1.0}'
    shed_headers = {"Retry-After": "1", "Content-Type": "application/json; charset=utf-8"}

    async def shed(request: web.Request) -> web.Response:  # bare_shed: flowctl_shed's answer, without flowctl
        return web.Response(body=shed_body, status=503, headers=shed_headers)

    app = web.Application()
    app.router.add_get("/", shed if variant == "bare_shed" else hello, name="hello")
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
    elif variant == "flowctl_shed":
        import flowctl.aiohttp

        state = flowctl.aiohttp.setup(app, trusted_priority_header="X-Priority")  # as bench.upstream's flowctl
        state.limiter.add_trigger(_AlwaysShed())
    elif variant == "trivial_mw":

        @web.middleware
        async def trivial(request: web.Request, handler: Any) -> web.StreamResponse:
            resp: web.StreamResponse = await handler(request)
            return resp

        app.middlewares.append(trivial)
    elif variant not in ("bare", "bare_shed"):
        raise SystemExit(f"unknown variant {variant!r}")
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------- in-process cost


def micro(repeats: int = 7, n: int = 50_000) -> dict[str, float]:
    """Median us per request: the handler alone, through a trivial middleware, through flowctl's,
    and (``flowctl_shed``) a request flowctl sheds: admission and the 503 response, no handler.

    No sockets: a mocked request with its route resolved, awaited in a loop.
    The limiter is real (BBR, loop-lag trigger) with a cool static CPU signal;
    the lag monitor has a probe pending far in the future, so it never fires while the loop spins.
    The shedding one has the ``flowctl_shed`` variant's trigger that always fires instead.
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

        shed_app = web.Application()
        shed_app.router.add_get("/", hello, name="hello")
        shedding = Limiter(StaticSignal("container", utilization=0.3, limit_cores=2.0))
        shedding.add_trigger(_AlwaysShed())
        fa.setup(shed_app, limiter=shedding, registry=CollectorRegistry(), loop_lag=False)
        shed_runner = web.AppRunner(shed_app)
        await shed_runner.setup()
        shed_guarded = next(r.handler for r in shed_app.router.routes()
                            if r.resource is not None and r.resource.canonical == "/")  # fmt: skip
        shed_req = make_mocked_request("GET", "/", app=shed_app)
        shed_req._match_info = await shed_app.router.resolve(shed_req)
        assert (await shed_guarded(shed_req)).status == 503

        async def bare() -> None:
            await hello(req)

        async def via_flowctl_shed() -> None:
            await shed_guarded(shed_req)

        async def via_trivial() -> None:
            await trivial(req, hello)

        async def via_flowctl() -> None:
            await guarded(req)

        out: dict[str, list[float]] = {"handler": [], "trivial_mw": [], "flowctl_mw": [], "flowctl_shed": []}
        for _ in range(repeats):
            for name, fn in (("handler", bare), ("trivial_mw", via_trivial), ("flowctl_mw", via_flowctl),
                             ("flowctl_shed", via_flowctl_shed)):  # fmt: skip
                t0 = _time.perf_counter()
                for _ in range(n):
                    await fn()
                out[name].append((_time.perf_counter() - t0) / n * 1e6)
        assert limiter.inflight == 0 and shedding.inflight == 0
        await runner.cleanup()
        await shed_runner.cleanup()
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
        except urllib.error.HTTPError:  # answered (flowctl_shed sheds every request)
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


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_base_tree: str | None = None  # --base-tree


def _serve_cmd(variant: str, port: int) -> list[str]:
    """The command serving ``variant`` (``NAME@base``: with the base tree's flowctl) on ``port``."""
    name, base = _split_variant(variant)
    tree: list[str] = []
    if base:
        if _base_tree is None:
            raise SystemExit(f"{variant}: give --base-tree DIR (a tree holding the flowctl package to compare with)")
        tree = ["--flowctl-tree", _base_tree]
    return [sys.executable, "-m", "bench.middleware_overhead", "--serve", name, "--port", str(port), *tree]


def _start_server(variant: str, port: int, *, cpu: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``--serve variant`` on ``port`` (pinned to ``cpu`` with taskset if given); not yet ready."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return subprocess.Popen([*pin, *_serve_cmd(variant, port)], cwd=_REPO)


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


# ---------------------------------------------------------------- open loop (--rate)


@dataclass
class RateRun:
    """One server under open-loop load: its CPU per answer (``cpu_us_per_answer``: all of it;
    ``net_cpu_us_per_answer``: less its idle CPU over the same time) and the answers by status."""

    variant: str
    round: int
    rate_rps: float
    seconds: float
    answers: int
    ok: int
    shed: int
    other: int
    timeouts: int
    cpu_s: float
    idle_cores: float
    cores: float
    cpu_us_per_answer: float
    net_cpu_us_per_answer: float
    admitted_p99_ms: float | None
    rejected_p99_ms: float | None
    send_lag_p99_ms: float | None


async def _stop_async(proc: Any) -> None:
    """SIGINT (aiohttp shuts down cleanly), then SIGKILL after 10 s."""
    import asyncio

    proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _rate_round(variant: str, rnd: int, *, rate_rps: float, duration_s: float, cpus: float | None,
                      idle_window_s: float) -> RateRun:  # fmt: skip
    """Serve ``variant`` on CPU 0 (in a cgroup with quota ``cpus`` if given), warm it up, measure it idle,
    then offer ``rate_rps`` for ``duration_s`` from CPU 1 and read its CPU."""
    import asyncio
    import contextlib
    import uuid

    from bench.loadgen import LoadSpec, run_load_process_async

    port = free_port()
    cmd = _serve_cmd(variant, port)
    async with contextlib.AsyncExitStack() as stack:
        if cpus is not None:
            from flowctl.workload import launch

            w = await stack.enter_async_context(launch(cmd, cpus=cpus, cpuset="0", name=f"flowctl-bench-{uuid.uuid4().hex[:8]}",
                                                       cwd=_REPO))  # fmt: skip
            pid = w.pid
        else:
            proc = await asyncio.create_subprocess_exec("taskset", "-c", "0", *cmd, cwd=_REPO)
            stack.push_async_callback(_stop_async, proc)
            pid = proc.pid
        await asyncio.to_thread(_wait_ready, port)
        url = f"http://127.0.0.1:{port}/"
        await run_load_process_async(LoadSpec(url=url, rate_rps=rate_rps, duration_s=1.0, seed=rnd + 1000), cpus=[1])
        await asyncio.sleep(0.5)  # the warm-up's last answers
        c0, t0 = _cpu_s(pid), time.monotonic()
        await asyncio.sleep(idle_window_s)
        c1, t1 = _cpu_s(pid), time.monotonic()
        res = await run_load_process_async(LoadSpec(url=url, rate_rps=rate_rps, duration_s=duration_s, seed=rnd), cpus=[1])
        c2, t2 = _cpu_s(pid), time.monotonic()
    if c0 is None or c1 is None or c2 is None:
        raise SystemExit("--rate reads /proc/PID/stat (Linux only)")
    m = res["measured"]
    ok, shed, other = int(m["ok"]), int(m["rejected"]), int(m["other_status"])
    answers = ok + shed + other
    if not answers:
        raise RuntimeError(f"{variant}: no answers at {rate_rps} rps")
    idle_cores = (c1 - c0) / (t1 - t0)
    cpu_s = c2 - c1
    lg = res["loadgen"]
    return RateRun(variant, rnd, rate_rps, t2 - t1, answers, ok, shed, other, int(m["timeouts"]), cpu_s, idle_cores,
                   cpu_s / (t2 - t1), cpu_s / answers * 1e6, max(0.0, cpu_s - idle_cores * (t2 - t1)) / answers * 1e6,
                   m.get("admitted_p99_ms"), m.get("rejected_p99_ms"), lg.get("send_lag_p99_ms"))  # fmt: skip


def rate(variants: Sequence[str], *, rounds: int, rate_rps: float, duration_s: float, cpus: float | None = None,
         idle_window_s: float = 2.0, on_round: Callable[[RateRun], None] | None = None) -> list[RateRun]:  # fmt: skip
    """``rounds`` rounds of every variant under open-loop load at ``rate_rps``, the order alternating."""
    import asyncio

    if not {0, 1} <= os.sched_getaffinity(0):
        raise SystemExit("--rate puts the server on CPU 0 and the load generator on CPU 1: both must be available")
    runs = []
    for rnd in range(1, rounds + 1):
        for v in variants if rnd % 2 else variants[::-1]:
            r = asyncio.run(_rate_round(v, rnd, rate_rps=rate_rps, duration_s=duration_s, cpus=cpus,
                                        idle_window_s=idle_window_s))  # fmt: skip
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
    mode.add_argument("--rate", type=float, metavar="RPS", help="open-loop load at RPS: CPU per answer (see the module doc)")
    p.add_argument("--cpus", type=float, help="--rate: run each server in a cgroup with this CFS quota on CPU 0 (root)")
    p.add_argument("--idle-window", type=float, default=2.0, help="--rate: seconds each server is measured idle")
    p.add_argument("--base-tree", help=f"a tree holding the flowctl package that NAME{BASE_SUFFIX} variants run with")
    p.add_argument("--serve", choices=VARIANTS + EXTRA_VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=8080, help=argparse.SUPPRESS)
    p.add_argument("--flowctl-tree", help="import flowctl from this tree (--micro before/after; how NAME@base is served)")
    args = p.parse_args(argv)
    if args.flowctl_tree:  # before anything imports flowctl: this tree's package wins
        sys.path.insert(0, os.path.abspath(args.flowctl_tree))
    if args.serve:
        serve(args.serve, args.port)
        return 0
    global _base_tree
    _base_tree = os.path.abspath(args.base_tree) if args.base_tree else None

    if args.micro:
        mic = micro()
        print(f"in-process us/request (median of 7): handler {mic['handler']:.2f}, "
              f"+trivial middleware {mic['trivial_mw'] - mic['handler']:+.2f}, "
              f"+flowctl middleware {mic['flowctl_mw'] - mic['handler']:+.2f}; a shed through flowctl "
              f"{mic['flowctl_shed']:.2f} (load avg {os.getloadavg()[0]:.2f})")
        _write_json(args.json, {"mode": "micro", "us_per_request": mic, "flowctl_tree": args.flowctl_tree,
                                "load": os.getloadavg()[0], "args": vars(args)})  # fmt: skip
        return 0

    default = PAIRED_VARIANTS if args.paired else VARIANTS
    variants = [v for v in args.variants.split(",") if v] if args.variants else list(default)
    unknown = [v for v in variants if _split_variant(v)[0] not in VARIANTS + EXTRA_VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS + EXTRA_VARIANTS)} (each also as NAME{BASE_SUFFIX})")
    if any(_split_variant(v)[1] for v in variants) and _base_tree is None:
        p.error(f"NAME{BASE_SUFFIX} variants need --base-tree DIR")
    if args.idle is not None:
        return _main_idle(variants, args)
    if args.rate is not None:
        return _main_rate(variants, args)
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


def _main_rate(variants: list[str], args: argparse.Namespace) -> int:
    load_before = os.getloadavg()[0]
    where = f"in a cgroup of {args.cpus:g} CPU on CPU 0" if args.cpus is not None else "pinned to CPU 0"

    def show(r: RateRun) -> None:
        print(f"round {r.round} {r.variant:22s} {r.cpu_us_per_answer:7.1f} us CPU/answer ({r.net_cpu_us_per_answer:7.1f} "
              f"less idle {r.idle_cores:.3f} cores)  {r.cores:.3f} cores  answers {r.answers} (2xx {r.ok}, shed {r.shed}, "
              f"other {r.other}, timeouts {r.timeouts})  p99 2xx {r.admitted_p99_ms} ms, shed {r.rejected_p99_ms} ms  "
              f"send lag p99 {r.send_lag_p99_ms} ms", flush=True)  # fmt: skip

    runs = rate(variants, rounds=args.rounds, rate_rps=args.rate, duration_s=args.duration, cpus=args.cpus,
                idle_window_s=args.idle_window, on_round=show)  # fmt: skip
    load_after = os.getloadavg()[0]
    medians: dict[str, dict[str, float]] = {}
    for v in variants:
        mine = [r for r in runs if r.variant == v]
        medians[v] = {k: statistics.median(getattr(r, k) for r in mine)
                      for k in ("cpu_us_per_answer", "net_cpu_us_per_answer", "idle_cores", "cores", "answers", "shed")}  # fmt: skip
    print(f"\nmedians over {args.rounds} rounds, {args.rate:g} rps open loop for {args.duration} s, server {where}; "
          f"load avg 1-min before {load_before:.2f}, after {load_after:.2f}")  # fmt: skip
    first = variants[0]
    for v, m in medians.items():
        vs = m["net_cpu_us_per_answer"] / medians[first]["net_cpu_us_per_answer"]
        print(f"{v:22s} {m['cpu_us_per_answer']:7.1f} us CPU/answer, {m['net_cpu_us_per_answer']:7.1f} less idle "
              f"({vs:.3f}x {first})  idle {m['idle_cores']:.3f} cores")  # fmt: skip
    _write_json(args.json, {"mode": "rate", "variants": variants, "rate_rps": args.rate, "cpus": args.cpus,
                            "base_tree": _base_tree, "runs": [asdict(r) for r in runs], "medians": medians,
                            "load_before": load_before, "load_after": load_after,
                            "command": " ".join(["python -m bench.middleware_overhead", *sys.argv[1:]]),
                            "args": vars(args)})  # fmt: skip
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
