"""``python -m bench quota``: quotas across replicas on a real redis-server started by the bench.

Phases (one run; ``--phases`` picks some):

- **accuracy**: ``--replicas`` (3) in-process aiohttp apps (``flowctl.aiohttp.setup(quotas=...,
  quota_store=...)``), each its own process, behind a client that spreads requests round-robin.
  Tenant A is offered 3x its quota, tenant B 0.5x, open loop, for ``--seconds`` (30). A's admitted
  rate against its quota; what B lost; Redis calls per request (each store call ends in exactly
  one ``admitted`` or ``rejected`` outcome; ``rejected_cached`` costs no call).
- **bursts**: at a wall-clock second edge (the fixed window's edge), two idle tenants are offered
  6x the quota from 0.5 s before to 0.5 s after it, through three store clients (one per
  replica): GCRA (flowctl's script) and the peer, a fixed-window counter as envoyproxy/ratelimit
  keeps it (``INCRBY`` + ``EXPIRE`` on a key named for the current second). The most admitted in
  any 1 s window, against ``quota + burst``.
- **cost**: one replica with a quota rule and one without, alternated (``--cost-runs`` pairs),
  a closed loop of sequential requests on loopback: added p50 and p99 per request; store calls per
  request for a tenant under its quota and for one over it.
- **faults**: per failure mode (local, open, closed): the accuracy load for ``--fault-seconds``,
  redis-server killed -9 at a third of it and restarted at two thirds. Status counts per phase,
  the slowest answer while the store is down, when each replica's ``flowctl_quota_mode`` changed
  (polled every 50 ms), and A's admitted rate in 0.5 s bins.

``python -m bench.quota replica ...`` is one replica (started by the bench).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.ports import free_port
from bench.redis_server import RedisServer, find_redis_server

__all__ = ["main"]

RULE_HEADER = "X-Tenant"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg: str) -> None:
    print(f"[bench quota {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- one replica ------------------------------------------------------------------------------------


def run_replica(argv: Sequence[str]) -> int:
    """An aiohttp app behind flowctl (a fixed, never-binding limit: only quotas decide here)."""
    p = argparse.ArgumentParser(prog="bench.quota replica")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--store", default="")
    p.add_argument("--on-error", default="local")
    p.add_argument("--rule", action="append", default=[])
    p.add_argument("--timeout", type=float, default=0.02)
    a = p.parse_args(argv)
    import logging

    from aiohttp import web

    import flowctl.aiohttp as fa
    from flowctl.limit.fixed import FixedLimit
    from flowctl.limiter import Limiter, Policy
    from flowctl.signal import StaticSignal

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s replica %(levelname)s %(name)s: %(message)s")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/healthz", healthz)
    limiter = Limiter(StaticSignal("container"), FixedLimit(100_000), policy=Policy(cpu_gate=False))
    fa.setup(
        app,
        limiter=limiter,
        loop_lag=False,
        quotas=a.rule,
        quota_store=a.store or None,
        quota_on_error=a.on_error,
        quota_timeout_s=a.timeout,
    )
    web.run_app(app, host="127.0.0.1", port=a.port, access_log=None, print=None)
    return 0


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_replicas(n: int, *, store: str, on_error: str, rules: Sequence[str]) -> list[Replica]:
    out = []
    for _ in range(n):
        port = free_port()
        cmd = [sys.executable, "-m", "bench.quota", "replica", "--port", str(port), "--store", store, "--on-error", on_error]
        for rule in rules:
            cmd += ["--rule", rule]
        out.append(Replica(subprocess.Popen(cmd, cwd=REPO), port))
    async with aiohttp.ClientSession() as s:
        for r in out:
            deadline = time.monotonic() + 20
            while True:
                if r.proc.poll() is not None:
                    raise RuntimeError(f"replica on port {r.port} exited with {r.proc.returncode}")
                try:
                    async with s.get(r.url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica on port {r.port} did not start")
                await asyncio.sleep(0.05)
    return out


def stop_replicas(replicas: Sequence[Replica]) -> list[int]:
    """SIGTERM each, wait, return the exit codes (a crash shows as non-zero before our SIGTERM)."""
    codes = []
    for r in replicas:
        crashed = r.proc.poll()
        if crashed is None:
            r.proc.send_signal(signal.SIGTERM)
            try:
                r.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            codes.append(0)
        else:
            codes.append(crashed)  # it had exited on its own: a crash
    return codes


async def scrape(session: aiohttp.ClientSession, replica: Replica) -> str:
    async with session.get(replica.url + "/metrics") as resp:
        return await resp.text()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


# -- open-loop load over the replicas ---------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    t_s: float  # intended send time, from the start
    tenant: str
    replica: int
    status: int  # 0: no answer (connection error or client timeout)
    latency_s: float


def schedule(rates: dict[str, float], seconds: float) -> list[tuple[float, str]]:
    """Evenly spaced arrivals per tenant (phases offset so tenants do not arrive in lockstep), merged."""
    out = []
    for i, (tenant, rate) in enumerate(sorted(rates.items())):
        step = 1.0 / rate
        offset = step * (i + 1) / (len(rates) + 1)
        k = 0
        while offset + k * step < seconds:
            out.append((offset + k * step, tenant))
            k += 1
    out.sort()
    return out


async def offer(replicas: Sequence[Replica], plan: list[tuple[float, str]]) -> list[Result]:
    """Send ``plan`` round-robin over ``replicas`` at the planned times; every answer is recorded."""
    loop = asyncio.get_running_loop()
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(t_s: float, tenant: str, idx: int) -> None:
            sent = loop.time()
            status = 0
            try:
                async with session.get(replicas[idx].url + "/", headers={RULE_HEADER: tenant}) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = 0
            results.append(Result(t_s, tenant, idx, status, loop.time() - sent))

        tasks: set[asyncio.Task[None]] = set()
        t0 = loop.time()
        for i, (t_s, tenant) in enumerate(plan):
            delay = t0 + t_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one(t_s, tenant, i % len(replicas)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    return results


def counts(results: Sequence[Result], tenant: str, t_from: float = 0.0, t_to: float = float("inf")) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        if r.tenant == tenant and t_from <= r.t_s < t_to:
            out[str(r.status)] = out.get(str(r.status), 0) + 1
    return out


def percentile(xs: Sequence[float], q: float) -> float:
    ys = sorted(xs)
    if not ys:
        return float("nan")
    return ys[min(len(ys) - 1, max(0, round(q * (len(ys) - 1))))]


# -- phases -----------------------------------------------------------------------------------------


def rule_text(quota: int, burst: int) -> str:
    return f"key=header:{RULE_HEADER},rate={quota}/s,burst={burst}"


async def accuracy(a: argparse.Namespace, redis: RedisServer) -> dict[str, Any]:
    rate_a, rate_b = 3.0 * a.quota, 0.5 * a.quota
    replicas = await start_replicas(a.replicas, store=redis.url, on_error="local", rules=[rule_text(a.quota, a.burst)])
    try:
        await asyncio.sleep(1.5)  # every replica has seen the others' heartbeats
        log(f"accuracy: {a.replicas} replicas, A offered {rate_a:g}/s, B {rate_b:g}/s, quota {a.quota}/s burst {a.burst}, {a.seconds:g} s")
        plan = schedule({"A": rate_a, "B": rate_b}, a.seconds)
        t0 = time.monotonic()
        results = await offer(replicas, plan)
        wall_s = time.monotonic() - t0
        async with aiohttp.ClientSession() as s:
            texts = [await scrape(s, r) for r in replicas]
    finally:
        codes = stop_replicas(replicas)
    a_counts, b_counts = counts(results, "A"), counts(results, "B")
    admitted_a = a_counts.get("200", 0)
    steady_from = min(2.0, a.seconds / 2)
    steady_a = counts(results, "A", steady_from).get("200", 0)
    outcome = {o: sum(metric(t, "flowctl_quota_requests_total", outcome=o) for t in texts)
               for o in ("admitted", "rejected", "rejected_cached")}  # fmt: skip
    checked = sum(outcome.values())
    calls = outcome["admitted"] + outcome["rejected"]
    per_replica_a = [sum(1 for r in results if r.tenant == "A" and r.replica == i and r.status == 200) for i in range(a.replicas)]
    out = {
        "replicas": a.replicas,
        "seconds": a.seconds,
        "quota_per_s": a.quota,
        "burst": a.burst,
        "offered_per_s": {"A": rate_a, "B": rate_b},
        "statuses": {"A": a_counts, "B": b_counts},
        "admitted_rate_a_per_s": admitted_a / a.seconds,
        "admitted_a_error_ratio": admitted_a / (a.quota * a.seconds) - 1.0,
        "steady_admitted_rate_a_per_s": steady_a / (a.seconds - steady_from),
        "steady_admitted_a_error_ratio": steady_a / (a.quota * (a.seconds - steady_from)) - 1.0,
        "expected_admitted_a": a.quota * a.seconds + a.burst + 1,
        "admitted_a_per_replica": per_replica_a,
        "b_lost": sum(n for s, n in b_counts.items() if s != "200"),
        "outcomes": outcome,
        "store_calls_per_checked_request": calls / checked if checked else None,
        "rejections_without_a_call_ratio": outcome["rejected_cached"] / max(1.0, outcome["rejected"] + outcome["rejected_cached"]),
        "client_wall_s": wall_s,
        "p99_latency_ms": {t: 1000 * percentile([r.latency_s for r in results if r.tenant == t], 0.99) for t in ("A", "B")},
        "replica_exit_codes": codes,
    }
    log(f"accuracy: A admitted {admitted_a} ({out['admitted_rate_a_per_s']:.2f}/s, {100 * out['admitted_a_error_ratio']:+.2f}%), "
        f"B lost {out['b_lost']}, store calls per checked request {out['store_calls_per_checked_request']:.3f}")  # fmt: skip
    return out


async def bursts(a: argparse.Namespace, redis: RedisServer) -> dict[str, Any]:
    """GCRA vs a fixed-window counter, offered 6x the quota across a window edge, through three clients."""
    import redis.asyncio as aioredis

    from flowctl.quota.gcra import Debit
    from flowctl.quota.store import RedisStore

    rule_interval_us = 1e6 / a.quota
    stores = [RedisStore(redis.url, timeout_s=1.0) for _ in range(3)]
    peers = [aioredis.Redis.from_url(redis.url) for _ in range(3)]
    for st in stores:
        await st.start()
    loop = asyncio.get_running_loop()
    offered_per_s = 6 * a.quota
    admitted: dict[str, list[float]] = {"gcra": [], "fixed_window": []}
    offered = {"gcra": 0, "fixed_window": 0}
    tenant = f"edge-{os.getpid()}"

    async def gcra(i: int, at_unix: float) -> None:
        v = await stores[i % 3].debit([Debit(f"flowctl:quota:bench:{tenant}", rule_interval_us, rule_interval_us * a.burst, 1.0)])
        if v.allowed:
            admitted["gcra"].append(at_unix)

    async def fixed(i: int, at_unix: float) -> None:
        # envoyproxy/ratelimit's algorithm: a counter per window, named for the window, INCRBY + EXPIRE
        window = int(time.time())
        key = f"bench:fw:{tenant}:{window}"
        pipe = peers[i % 3].pipeline(transaction=False)
        pipe.incrby(key, 1)
        pipe.expire(key, 1)
        count, _ = await pipe.execute()
        if int(count) <= a.quota:
            admitted["fixed_window"].append(at_unix)

    try:
        # idle first (full buckets), then start 0.5 s before a wall-clock second edge
        now = time.time()
        edge = float(int(now) + 3)
        start = edge - 0.5
        await asyncio.sleep(start - time.time())
        t0_loop, t0_unix = loop.time(), time.time()
        tasks = []
        n = int(offered_per_s * 1.0)
        for i in range(n):
            at = i / offered_per_s
            delay = t0_loop + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_unix = t0_unix + (loop.time() - t0_loop)
            tasks.append(asyncio.ensure_future(gcra(i, sent_unix)))
            tasks.append(asyncio.ensure_future(fixed(i, sent_unix)))
            offered["gcra"] += 1
            offered["fixed_window"] += 1
        await asyncio.gather(*tasks)
    finally:
        for st in stores:
            await st.close()
        for p in peers:
            await p.aclose()

    def max_in_window(times: list[float], w: float = 1.0) -> int:
        ts = sorted(times)
        best, j = 0, 0
        for i, t in enumerate(ts):
            while ts[j] <= t - w:
                j += 1
            best = max(best, i - j + 1)
        return best

    out: dict[str, Any] = {"quota_per_s": a.quota, "burst": a.burst, "offered_per_s": offered_per_s,
                           "span_s": [-0.5, 0.5], "edge_unix": edge, "clients": 3}  # fmt: skip
    for name, times in admitted.items():
        before = sum(1 for t in times if t < edge)
        out[name] = {
            "offered": offered[name],
            "admitted": len(times),
            "admitted_before_edge": before,
            "admitted_after_edge": len(times) - before,
            "max_in_any_1s": max_in_window(times),
            "extra_over_quota_in_any_1s": max_in_window(times) - a.quota,
        }
    log(f"bursts: most admitted in any 1 s: GCRA {out['gcra']['max_in_any_1s']} (quota {a.quota} + burst {a.burst}), "
        f"fixed window {out['fixed_window']['max_in_any_1s']}")  # fmt: skip
    return out


async def closed_loop(replica: Replica, n: int, tenant: str) -> list[float]:
    loop = asyncio.get_running_loop()
    lat = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as s:
        for _ in range(n):
            t0 = loop.time()
            async with s.get(replica.url + "/", headers={RULE_HEADER: tenant}) as resp:
                await resp.read()
            lat.append(loop.time() - t0)
    return lat


async def cost(a: argparse.Namespace, redis: RedisServer) -> dict[str, Any]:
    """Added latency per request with a quota (a tenant under it), against no quota; calls per request."""
    big = 1_000_000  # never binding: every request makes its store call
    with_q = (await start_replicas(1, store=redis.url, on_error="local", rules=[rule_text(big, 0)]))[0]
    without = (await start_replicas(1, store="", on_error="local", rules=[]))[0]
    over = (await start_replicas(1, store=redis.url, on_error="local", rules=["key=header:X-Tenant,rate=1/h"]))[0]
    runs: dict[str, list[dict[str, float]]] = {"quota": [], "none": []}
    try:
        for variant, rep in (("quota", with_q), ("none", without)):
            await closed_loop(rep, 300, "warm")  # connections, script load, JIT-free warm-up of caches
        for i in range(a.cost_runs):
            order = [("quota", with_q), ("none", without)] if i % 2 == 0 else [("none", without), ("quota", with_q)]
            for variant, rep in order:
                lat = await closed_loop(rep, a.cost_requests, f"t{i}")
                runs[variant].append({"p50_ms": 1000 * percentile(lat, 0.5), "p99_ms": 1000 * percentile(lat, 0.99)})
        async with aiohttp.ClientSession() as s:
            text = await scrape(s, with_q)
            store_p50_p99 = _hist_quantiles(text, "flowctl_quota_store_seconds")
            calls_under = metric(text, "flowctl_quota_requests_total", outcome="admitted") + metric(
                text, "flowctl_quota_requests_total", outcome="rejected")
            checked_under = sum(metric(text, "flowctl_quota_requests_total", outcome=o) for o in ("admitted", "rejected", "rejected_cached"))
            await closed_loop(over, 1, "hog")  # the one request its quota allows
            n_over = 1000
            t0 = time.monotonic()
            await closed_loop(over, n_over, "hog")  # all over: refused from the cache after the first refusal
            over_s = time.monotonic() - t0
            text_over = await scrape(s, over)
        calls_over = metric(text_over, "flowctl_quota_requests_total", outcome="admitted") + metric(
            text_over, "flowctl_quota_requests_total", outcome="rejected")
        cached_over = metric(text_over, "flowctl_quota_requests_total", outcome="rejected_cached")
    finally:
        codes = stop_replicas([with_q, without, over])
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("p50_ms", "p99_ms")} for v, rs in runs.items()}
    out = {
        "runs": runs,
        "requests_per_run": a.cost_requests,
        "median": med,
        "added_p50_ms": med["quota"]["p50_ms"] - med["none"]["p50_ms"],
        "added_p99_ms": med["quota"]["p99_ms"] - med["none"]["p99_ms"],
        "store_call_ms_p50_p99_from_histogram_buckets": store_p50_p99,
        "store_calls_per_request_under_quota": calls_under / checked_under if checked_under else None,
        "tenant_over": {"requests": n_over + 1, "store_calls": calls_over, "rejected_cached": cached_over,
                        "store_calls_per_request": calls_over / (n_over + 1), "seconds": over_s},  # fmt: skip
        "replica_exit_codes": codes,
    }
    log(f"cost: added p50 {out['added_p50_ms']:.3f} ms, p99 {out['added_p99_ms']:.3f} ms; calls/request under "
        f"{out['store_calls_per_request_under_quota']}, over {out['tenant_over']['store_calls_per_request']:.4f}")  # fmt: skip
    return out


def _hist_quantiles(text: str, name: str) -> dict[str, float | None]:
    """p50 and p99 upper bounds (ms) from a histogram's cumulative buckets."""
    buckets = []
    for line in text.splitlines():
        m = re.match(rf'^{name}_bucket\{{le="([^"]+)"\}} (\S+)$', line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    if not buckets or buckets[-1][1] == 0:
        return {"p50_le_ms": None, "p99_le_ms": None}
    total = buckets[-1][1]
    out: dict[str, float | None] = {}
    for q, key in ((0.5, "p50_le_ms"), (0.99, "p99_le_ms")):
        out[key] = next((1000 * le for le, c in buckets if c >= q * total), None)
    return out


async def faults(a: argparse.Namespace, redis: RedisServer, mode: str) -> dict[str, Any]:
    seconds = a.fault_seconds
    kill_at, restart_at = seconds / 3, 2 * seconds / 3
    replicas = await start_replicas(a.replicas, store=redis.url, on_error=mode, rules=[rule_text(a.quota, a.burst)])
    modes: list[tuple[float, int, str]] = []
    events: dict[str, float] = {}
    try:
        await asyncio.sleep(1.5)
        plan = schedule({"A": 3.0 * a.quota, "B": 0.5 * a.quota}, seconds)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        stop = asyncio.Event()

        async def poll_modes() -> None:
            async with aiohttp.ClientSession() as s:
                while not stop.is_set():
                    for i, r in enumerate(replicas):
                        try:
                            text = await scrape(s, r)
                        except aiohttp.ClientError:
                            continue
                        current = next((m for m in ("store", "local", "open", "closed")
                                        if metric(text, "flowctl_quota_mode", mode=m) == 1), "?")  # fmt: skip
                        last = next((x[2] for x in reversed(modes) if x[1] == i), None)
                        if current != last:
                            modes.append((loop.time() - t0, i, current))
                    await asyncio.sleep(0.05)

        async def chaos() -> None:
            await asyncio.sleep(kill_at)
            events["killed_s"] = loop.time() - t0
            await asyncio.to_thread(redis.kill)
            await asyncio.sleep(restart_at - (loop.time() - t0))
            events["restart_begun_s"] = loop.time() - t0
            await asyncio.to_thread(redis.start)
            events["restarted_s"] = loop.time() - t0

        poller = asyncio.ensure_future(poll_modes())
        chaos_task = asyncio.ensure_future(chaos())
        results = await offer(replicas, plan)
        await chaos_task
        stop.set()
        await poller
        alive = [r.proc.poll() is None for r in replicas]
    finally:
        codes = stop_replicas(replicas)
    killed, restarted = events["killed_s"], events["restarted_s"]
    phases = {"before": (0.0, killed), "down": (killed, restarted), "after": (restarted, float(seconds))}
    statuses = {ph: {t: counts(results, t, lo, hi) for t in ("A", "B")} for ph, (lo, hi) in phases.items()}
    down = [r for r in results if killed <= r.t_s < restarted]
    switch = {}
    back = {}
    for i in range(len(replicas)):
        switch[i] = next((t - killed for t, j, m in modes if j == i and m == mode and t >= killed), None)
        back[i] = next((t - restarted for t, j, m in modes if j == i and m == "store" and t >= restarted), None)
    bins = []
    width = 0.5
    k = 0
    while k * width < seconds:
        lo, hi = k * width, (k + 1) * width
        c = counts(results, "A", lo, hi)
        bins.append({"t_s": lo, "A_200_per_s": c.get("200", 0) / width, "B_200_per_s": counts(results, "B", lo, hi).get("200", 0) / width,
                     "5xx": sum(n for s, n in c.items() if s.startswith("5")) + sum(
                         n for s, n in counts(results, "B", lo, hi).items() if s.startswith("5"))})  # fmt: skip
        k += 1
    five_xx = {ph: sum(n for t in ("A", "B") for s, n in statuses[ph][t].items() if s.startswith("5")) for ph in phases}
    no_answer = {ph: sum(statuses[ph][t].get("0", 0) for t in ("A", "B")) for ph in phases}
    after_ok_from = None
    for b in bins:  # first bin after the restart from which A's admitted rate stays within 20% of the quota
        if b["t_s"] >= restarted and after_ok_from is None:
            later = [x for x in bins if x["t_s"] >= b["t_s"] and x["t_s"] + width <= seconds]
            if later and all(abs(x["A_200_per_s"] / a.quota - 1) <= 0.2 for x in later):
                after_ok_from = b["t_s"] - restarted
    down_s = restarted - killed
    out = {
        "mode": mode,
        "seconds": seconds,
        "events_s": events,
        "statuses": statuses,
        "five_xx": five_xx,
        "no_answer": no_answer,
        "slowest_answer_while_down_ms": 1000 * max((r.latency_s for r in down), default=0.0),
        "p99_answer_while_down_ms": 1000 * percentile([r.latency_s for r in down], 0.99),
        "mode_changes": [{"t_s": t, "replica": i, "mode": m} for t, i, m in modes],
        "declared_mode_after_kill_s": switch,
        "store_mode_after_restart_s": back,
        "a_rate_within_20pct_after_restart_from_s": after_ok_from,
        "a_admitted_rate_while_down_per_s": statuses["down"]["A"].get("200", 0) / down_s,
        "b_lost_while_down": sum(n for s, n in statuses["down"]["B"].items() if s != "200"),
        "bins": bins,
        "replicas_alive_at_end": alive,
        "replica_exit_codes": codes,
    }
    log(f"faults {mode}: 5xx {five_xx}, no answer {no_answer}, slowest while down {out['slowest_answer_while_down_ms']:.1f} ms, "
        f"mode {mode} after kill {switch}, store after restart {back}, A while down {out['a_admitted_rate_while_down_per_s']:.1f}/s")
    return out


# -- the scenario -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench quota", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--phases", default="accuracy,bursts,cost,faults", help="comma-separated: accuracy,bursts,cost,faults")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--quota", type=int, default=100, help="tenant quota, requests per second")
    p.add_argument("--burst", type=int, default=20)
    p.add_argument("--seconds", type=float, default=30.0, help="accuracy phase length")
    p.add_argument("--fault-seconds", type=float, default=12.0, help="length of each failure-mode run")
    p.add_argument("--modes", default="local,open,closed")
    p.add_argument("--cost-runs", type=int, default=6, help="alternated pairs of closed-loop runs")
    p.add_argument("--cost-requests", type=int, default=2000)
    p.add_argument("--json-out", default="bench/results/quota.json")
    return p


async def run(a: argparse.Namespace) -> dict[str, Any]:
    from bench.scenarios.common import machine_info

    binary = find_redis_server()
    if binary is None:
        raise SystemExit("bench quota: needs redis-server (apt-get install -y redis-server)")
    phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    out: dict[str, Any] = {
        "scenario": "quota",
        "command": "python -m bench quota " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["quota"] else sys.argv[1:]),
        "machine": machine_info(),
        "commit": _git("rev-parse", "HEAD"),
        "product_changes_on_top": _git("status", "--porcelain", "--", "flowctl", "sidecar"),
        "redis_server": subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip(),
    }
    with RedisServer(binary) as redis:
        if "accuracy" in phases:
            out["accuracy"] = await accuracy(a, redis)
        if "bursts" in phases:
            out["bursts"] = await bursts(a, redis)
        if "cost" in phases:
            out["cost"] = await cost(a, redis)
        if "faults" in phases:
            out["faults"] = {}
            for mode in [m.strip() for m in a.modes.split(",") if m.strip()]:
                if redis.proc is None:
                    redis.start()
                out["faults"][mode] = await faults(a, redis, mode)
    out["machine"]["loadavg_after"] = list(os.getloadavg())
    return out


def _git(*args: str) -> str:
    p = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return p.stdout.strip()


def _med(xs: Sequence[float | None]) -> float | None:
    ys = [x for x in xs if x is not None]
    return statistics.median(ys) if ys else None


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def render(runs: Sequence[dict[str, Any]], names: Sequence[str], paths: Sequence[str] = ()) -> str:
    """Markdown for one or more runs: each run's figures, and the median where there are several."""
    lines = ["# bench quota: quotas across replicas on a real redis-server", ""]
    lines.append("Produced by `python -m bench quota --report " + " ".join(paths or names) + "` from the runs below; "
                 "each run is `python -m bench quota` (the JSON files beside this page keep every figure). Timing "
                 "figures are medians (of alternated pairs within a run; across runs where there are several).")
    lines.append("")
    lines.append("| run | date | command | commit | load before / after | redis |")
    lines.append("|---|---|---|---|---|---|")
    for n, r in zip(names, runs):
        m = r["machine"]
        load = f"{m['loadavg'][0]:.2f} / {m.get('loadavg_after', [float('nan')])[0]:.2f}"
        dirty = " (+ local changes)" if r.get("product_changes_on_top") else ""
        lines.append(f"| {n} | {m['date']} | `{r['command']}` | {r['commit'][:7]}{dirty} | {load} | {r['redis_server'].split(' sha')[0]} |")
    lines += ["", f"Machine: {runs[0]['machine']['cpus']} CPUs ({runs[0]['machine']['cpu_model']}), kernel "
              f"{runs[0]['machine']['kernel']}, Python {runs[0]['machine']['python']}. Replicas, load generator and "
              "redis-server share these CPUs.", ""]  # fmt: skip
    acc = [r["accuracy"] for r in runs if "accuracy" in r]
    if acc:
        a0 = acc[0]
        lines += ["## Accuracy", "",
                  f"{a0['replicas']} replicas (in-process aiohttp apps, one process each) behind a round-robin open-loop "
                  f"client; tenant A offered {a0['offered_per_s']['A']:g}/s (3x), B {a0['offered_per_s']['B']:g}/s (0.5x); "
                  f"quota {a0['quota_per_s']}/s per tenant, burst {a0['burst']}, {a0['seconds']:g} s. "
                  f"Expected A admitted: quota x seconds + burst + 1 = {a0['expected_admitted_a']:g}.", "",
                  "| run | A admitted | A rate /s | vs quota | after the first 2 s | A per replica | B lost | store calls per counted request | refusals without a call |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for n, a in zip(names, acc):
            lines.append(f"| {n} | {a['statuses']['A'].get('200', 0)} | {a['admitted_rate_a_per_s']:.2f} | "
                         f"{100 * a['admitted_a_error_ratio']:+.2f}% | {100 * a['steady_admitted_a_error_ratio']:+.2f}% | "
                         f"{a['admitted_a_per_replica']} | {a['b_lost']} | {_fmt(a['store_calls_per_checked_request'], '.3f')} | "
                         f"{100 * a['rejections_without_a_call_ratio']:.1f}% |")  # fmt: skip
        if len(acc) > 1:
            lines.append(f"| median | | {_fmt(_med([a['admitted_rate_a_per_s'] for a in acc]))} | "
                         f"{_fmt(_med([100 * a['admitted_a_error_ratio'] for a in acc]), '+.2f')}% | "
                         f"{_fmt(_med([100 * a['steady_admitted_a_error_ratio'] for a in acc]), '+.2f')}% | | "
                         f"{_fmt(_med([a['b_lost'] for a in acc]), '.0f')} | | |")  # fmt: skip
        lines.append("")
    bur = [r["bursts"] for r in runs if "bursts" in r]
    if bur:
        b0 = bur[0]
        lines += ["## Bursts at a window edge", "",
                  f"Two idle tenants, each offered {b0['offered_per_s']}/s (6x) from 0.5 s before a wall-clock second "
                  f"edge to 0.5 s after it, through {b0['clients']} store clients (one per replica), no HTTP: flowctl's "
                  "GCRA script, and the peer, a fixed-window counter as envoyproxy/ratelimit keeps it (`INCRBY` + "
                  f"`EXPIRE` on a key named for the current second). Quota {b0['quota_per_s']}/s, burst {b0['burst']}: "
                  f"GCRA's bound in any 1 s window is {b0['quota_per_s'] + b0['burst']}.", "",
                  "| run | GCRA: most in any 1 s | extra over the quota | fixed window: most in any 1 s | extra | fixed window before / after the edge |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for n, b in zip(names, bur):
            g, f = b["gcra"], b["fixed_window"]
            lines.append(f"| {n} | {g['max_in_any_1s']} | {g['extra_over_quota_in_any_1s']} | {f['max_in_any_1s']} | "
                         f"{f['extra_over_quota_in_any_1s']} | {f['admitted_before_edge']} / {f['admitted_after_edge']} |")
        lines.append("")
    cst = [r["cost"] for r in runs if "cost" in r]
    if cst:
        lines += ["## Cost on loopback", "",
                  f"One replica with a never-binding rule (every request makes its store call) and one without, "
                  f"{len(cst[0]['runs']['quota'])} alternated pairs of {cst[0]['requests_per_run']} sequential requests "
                  "(closed loop, one connection); p50 and p99 are the medians over the pairs. A tenant over its quota: "
                  "1 admitted request, then 1000 refused.", "",
                  "| run | p50 without / with (ms) | added p50 | p99 without / with (ms) | added p99 | store calls per request, under quota | over quota (calls / requests) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for n, c in zip(names, cst):
            m = c["median"]
            o = c["tenant_over"]
            lines.append(f"| {n} | {m['none']['p50_ms']:.3f} / {m['quota']['p50_ms']:.3f} | {c['added_p50_ms']:+.3f} | "
                         f"{m['none']['p99_ms']:.3f} / {m['quota']['p99_ms']:.3f} | {c['added_p99_ms']:+.3f} | "
                         f"{_fmt(c['store_calls_per_request_under_quota'], '.3f')} | {o['store_calls']:.0f} / {o['requests']} |")  # fmt: skip
        if len(cst) > 1:
            lines.append(f"| median | | {_fmt(_med([c['added_p50_ms'] for c in cst]), '+.3f')} | | "
                         f"{_fmt(_med([c['added_p99_ms'] for c in cst]), '+.3f')} | | |")
        lines.append("")
    flt = [r["faults"] for r in runs if "faults" in r]
    if flt:
        lines += ["## Faults: redis-server killed -9, then restarted", "",
                  "The accuracy load (A 3x, B 0.5x) on 3 replicas per mode; redis-server killed -9 at a third of the run "
                  "and started again at two thirds. Mode changes are read from each replica's `flowctl_quota_mode` "
                  "every 50 ms. 5xx counts are of answers the client got (before / while down / after).", "",
                  "| run | mode | 5xx before / down / after | no answer | slowest answer while down (ms) | declared mode after the kill (s, per replica) | store mode after the restart (s, per replica) | A admitted /s while down | B lost while down | replicas alive |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for n, fs in zip(names, flt):
            for mode, f in fs.items():
                x = f["five_xx"]
                na = sum(f["no_answer"].values())
                sw = ", ".join(_fmt(v) for v in f["declared_mode_after_kill_s"].values())
                bk = ", ".join(_fmt(v) for v in f["store_mode_after_restart_s"].values())
                lines.append(f"| {n} | {mode} | {x['before']} / {x['down']} / {x['after']} | {na} | "
                             f"{f['slowest_answer_while_down_ms']:.1f} | {sw} | {bk} | {f['a_admitted_rate_while_down_per_s']:.1f} | "
                             f"{f['b_lost_while_down']} | {all(f['replicas_alive_at_end'])} |")  # fmt: skip
        lines.append("")
        lines += ["Reading the fault rows: phases are split by each request's intended send time, so a request sent "
                  "just before the kill and answered after it counts as before. In mode closed, 503 (reason "
                  "`quota_store`) is the declared answer while the store is down, and it stays the answer after the "
                  "restart until each replica's breaker lets a probe through (it stays open 0.5 s after its last failure) "
                  "or its heartbeat (once a second) finds the store: the store-mode column.", ""]  # fmt: skip
    if acc:
        lines += ["Store calls at 3x: a refused key is remembered until its retry time, but at 100/s that time is at "
                  "most 10 ms, about the gap between two of A's requests at one replica, so most refusals still make "
                  "their call. A tenant whose retry time is long (the cost phase's 1/h tenant) is refused without "
                  "calls: 2 calls for 1001 requests.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["replica"]:
        return run_replica(args[1:])
    if args[:1] == ["--report"]:
        names = args[1:]
        runs = []
        for name in names:
            with open(name) as f:
                runs.append(json.load(f))
        print(render(runs, [os.path.basename(n).removesuffix(".json") for n in names], names))
        return 0
    a = build_parser().parse_args(args)
    out = asyncio.run(run(a))
    os.makedirs(os.path.dirname(os.path.abspath(a.json_out)), exist_ok=True)
    with open(a.json_out, "w") as f:
        json.dump(out, f, indent=1, default=str)
    log(f"wrote {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
