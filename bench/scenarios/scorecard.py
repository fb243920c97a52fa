"""``python -m bench scorecard``: flowctl and its peers on one fixed matrix, one verdict table.

Variants under test: ``flowctl-inprocess`` (the upstream app with
``flowctl.aiohttp.setup(app)`` defaults), ``flowctl-sidecar`` (the sidecar
with its defaults, watching the upstream) and ``flowctl-haproxy`` (the same
sidecar with ``--engine haproxy``: HAProxy as its data plane; it runs in every
scenario the sidecar runs). Peers, measured in the same run:
``none`` (no limiter), ``kratos`` (CPU-gated BBR, 1 s cool-off, no loop-lag
trigger: ``bench.upstream.kratos_limiter``) and ``nginx-limit-conn``.

Every reference figure is measured in this run, never read from a file: per
(quota, work, handler) the unprotected upstream's *capacity* (highest rate with
p99 <= 3x the unloaded p99, ``common.measure_capacity``), its unloaded p50/p99,
and its *saturation* throughput: the median of 2xx answers per second of
completion time while it is offered 2x capacity (a long client timeout, so the
backlog is answered, not abandoned).

nginx tuning rule (no extra runs): ``limit_conn = ceil(capacity_rps x
unloaded_p50_s) + 1`` at the old quota (0.5 CPU for ``overload``, 1.0 CPU for
``step``): Little's law gives the concurrency the service holds at capacity
without queueing; one more keeps a request waiting in the upstream's socket
while the proxy hop turns the previous one around.

Each run is one load-generator process with a rate schedule: a 1 s ``warmup``
phase at 0.5x (left out of every figure), then the measured phases. Scenarios
and their targets are in docs/scorecard.md.

A phase that decides a false-shed target (a shed ratio <= 0.01 or <= 0.05, critical's goodput at
1x >= 0.99) holds at least ``Plan.min_requests`` (400) requests of the counted class, at this
run's measured capacity: it is made longer, never faster, until the load generator's own Poisson
draws (seed ``SEED``) put that many in it (``long_enough``). Overload phases stay ``Plan.seconds``
long. ``--quick`` keeps every phase short (a smoke test of the harness).

A row that is a ratio of counts carries them: ``k`` of ``n`` requests (shed of sent; critical's
answered in time of sent) and the Wilson 95% interval of ``k / n`` (``bench.stats``); the interval
treats requests as independent trials, which they are not quite (one service, one lifetime). Any
other row (a p99 ratio, goodput/saturation, a recovery time) carries ``n``, the requests its phase
sent, and no ``k``. ``--runs N`` repeats the whole run and reports the median and the worst of
each row (``bench.scorecard_median``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from bench.loadgen import WARMUP, LoadSpec, Phase, TrafficClass, arrivals_by_label
from bench.scenarios import common as c
from bench.scenarios.step import front, recovery
from bench.stats import wilson_interval
from bench.upstream import HANDLERS

FLOWCTL_VARIANTS = ("flowctl-inprocess", "flowctl-sidecar")  # bench matrix runs these
HAPROXY = "flowctl-haproxy"  # the sidecar's haproxy engine: every scenario the sidecar runs, not the matrix
SIDECARS = ("flowctl-sidecar", HAPROXY)
OURS = (*FLOWCTL_VARIANTS, HAPROXY)
LIMIT_1 = "haproxy-limit-1"  # the haproxy engine at --fixed-limit 1: the p99 bound of a concurrency cap
PEERS = ("none", "kratos", "nginx-limit-conn", LIMIT_1)
ALL_VARIANTS = OURS + PEERS
SPEED_DRIFT_MAX = 1.15  # the CPU speed moving more than this between start and end is reported
SCENARIOS = ("false_shed", "overload", "tight_quota", "gil_quota", "bursts", "step", "priority", "long_lived")
PRIORITY_CLASSES = (
    TrafficClass("critical", 0.5, ((c.PRIORITY_HEADER, "critical"),)),
    TrafficClass("sheddable", 0.5, ((c.PRIORITY_HEADER, "sheddable"),)),
)
SESSIONS = 50
SEED = 1  # every load run's arrivals (the phase lengths are counted with these draws)
MIN_PROBE_REQUESTS = 200  # a capacity probe's p99 is then its 2nd-3rd slowest answer, not its slowest
MIN_REQUESTS = 400  # in a phase that decides a false-shed target: a 1% target is decided by 4 requests, not 1
BURST_S = 2.0  # a bursts cycle: BURST_S at 4x, then BURST_S at 0.5x


@dataclass(frozen=True)
class Plan:
    """Durations and the handler/peer matrix of one scorecard run."""

    seconds: float  # each measured steady phase
    bursts_s: float
    step_before_s: float
    step_after_s: float
    probe_s: float
    unloaded_s: float
    max_probes: int
    saturation_s: float
    min_requests: int = MIN_REQUESTS  # per false-shed phase (0: every phase as long as ``seconds``)
    warmup_s: float = 1.0
    handlers: tuple[str, ...] = ("blocking", "yielding")
    tight_handlers: tuple[str, ...] = ("blocking",)
    step_loads: tuple[float, ...] = (1.5, 2.0)
    variants: tuple[str, ...] = ALL_VARIANTS  # unless --variants
    start_in_s: float = 0.6
    timeout_s: float = 2.0
    min_probe_requests: int = MIN_PROBE_REQUESTS  # per capacity probe (``common.measure_capacity``)


FULL = Plan(seconds=4.0, bursts_s=16.0, step_before_s=3.0, step_after_s=6.0, probe_s=1.5, unloaded_s=2.5, max_probes=5,
            saturation_s=2.0)  # fmt: skip
QUICK = Plan(seconds=1.5, bursts_s=4.0, step_before_s=1.5, step_after_s=2.0, probe_s=0.8, unloaded_s=1.5, max_probes=2,
             saturation_s=1.0, min_requests=0, warmup_s=0.5, handlers=("blocking",), step_loads=(2.0,),
             variants=OURS, min_probe_requests=0)  # fmt: skip


# ------------------------------------------------------------------ verdict rows


def verdict_row(scenario: str, variant: str, metric: str, value: float | None, target: float, better: str,
                *, strict: bool = False, n: int | None = None, k: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One row of the table; ``pass`` is False when the value is unknown (None). ``n``: the requests
    measured; ``k``: of those, the ones the value counts (the value is then ``k / n``, and the row
    carries its Wilson 95% ``interval``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        ok = False
    elif better == "lower":
        ok = value < target if strict else value <= target
    else:
        ok = value > target if strict else value >= target
    interval = list(wilson_interval(k, n)) if k is not None and n is not None else None
    return {"scenario": scenario, "variant": variant, "metric": metric, "value": value, "target": target, "better": better,
            "pass": ok, "k": k, "n": n, "interval": interval}  # fmt: skip


def count_row(scenario: str, variant: str, metric: str, k: int, n: int, target: float, better: str) -> dict[str, Any]:
    """A row whose value is ``k`` of ``n`` requests (0 when nothing was sent), with k, n and the interval."""
    return verdict_row(scenario, variant, metric, k / n if n else 0.0, target, better, n=n, k=k)


def shed_row(scenario: str, variant: str, metric: str, phase: dict[str, Any], target: float) -> dict[str, Any]:
    """A shed-ratio row of one phase's (or class's) load-generator stats: shed (429/503) of sent."""
    return count_row(scenario, variant, metric, int(phase["rejected"]), int(phase["sent"]), target, "lower")


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


# ------------------------------------------------------------------ references (measured here)


@dataclass
class Reference:
    """The unprotected service at one (quota, work, handler): capacity, unloaded latency, saturation."""

    cpus: float
    work_ms: float
    handler: str
    capacity: c.Capacity
    saturation_rps: float
    answered_by_second: list[int]
    idle_cores: float | None = None  # the app's own CPU with no load (its samplers), cores
    answer_cpu_ms: float | None = None  # CPU per answer of its cheapest route (/healthz), ms

    def as_dict(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "work_ms": self.work_ms, "handler": self.handler, **self.capacity.as_dict(),
                "saturation_rps": self.saturation_rps, "saturation_answered_by_second": self.answered_by_second,
                "saturation_rule": "median 2xx answers per completion second, offered 2x capacity, timeout 30 s",
                "idle_cores": self.idle_cores, "answer_cpu_ms": self.answer_cpu_ms}  # fmt: skip

    def in_process_bound(self, offered_rps: float) -> float | None:
        """The most goodput/saturation any limiter *inside* the group can reach at ``offered_rps``.

        It must answer every request it sheds, in the same quota, and no answer costs less CPU
        than the cheapest route's (``answer_cpu_ms``). At saturation the group spends its quota
        ``Q`` (cores) on its idle work ``F`` and ``saturation_rps`` completions of cost ``c =
        (Q - F) / saturation_rps``. Goodput ``N`` with ``offered - N`` sheds at cost ``y`` fits
        when ``F + N c + (offered - N) y <= Q``: ``N <= (Q - F - offered y) / (c - y)``. Optimistic
        (no throttling lost, no margin, sheds at the floor): a goodput target above it is out of
        reach for an in-process limiter on this machine. None: not measured."""
        f, y_ms, sat = self.idle_cores, self.answer_cpu_ms, self.saturation_rps
        if f is None or y_ms is None or not sat:
            return None
        cost = (self.cpus - f) / sat
        y = y_ms / 1000.0
        if cost <= y:
            return None
        return max(0.0, (self.cpus - f - offered_rps * y) / (cost - y)) / sat


class Run:
    """One scorecard run: the plan, the work size, the references, the rows and the raw detail."""

    def __init__(self, plan: Plan, iters_per_ms: float, variants: Sequence[str]) -> None:
        self.plan = plan
        self.iters_per_ms = iters_per_ms
        self.variants = list(variants)
        self.refs: dict[tuple[float, float, str], Reference] = {}
        self.rows: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def log(self, msg: str) -> None:
        c.log(f"[{time.monotonic() - self.t0:5.0f} s] {msg}")

    async def reference(self, cpus: float, work_ms: float, handler: str, *, answer_cost: bool = False) -> Reference:
        """The unprotected service's figures at this quota (measured once per run). ``answer_cost``:
        also its idle CPU and the CPU per answer of its cheapest route (``Reference.in_process_bound``)."""
        key = (cpus, work_ms, handler)
        known = self.refs.get(key)
        if known is not None and (known.answer_cpu_ms is not None or not answer_cost):
            return known
        if known is not None:  # measured for another scenario, without the answer cost: add it
            async with c.upstream("none", cpus=cpus, work_cpu_ms=work_ms) as up:
                await c.drive(up, "/healthz", 20.0, 1.0, start_in_s=self.plan.start_in_s)  # a fresh process is slow at first
                idle, answer = await self._answer_cost(up, 3.0 * known.capacity.capacity_rps, settle_s=0.5)
            self.refs[key] = known = replace(known, idle_cores=idle, answer_cpu_ms=answer)
            return known
        p = self.plan
        self.log(f"reference: {handler} {work_ms:g} ms at {cpus:g} CPU (capacity search, then 2x for saturation)")
        path = HANDLERS[handler]
        async with c.upstream("none", cpus=cpus, work_cpu_ms=work_ms) as up:
            # a second of light traffic first: the first requests of a fresh process are slow (imports, caches)
            await c.drive(up, path, 20.0, 1.0, start_in_s=p.start_in_s)
            cap = await c.measure_capacity(up, path, cpus=cpus, work_ms=work_ms, handler=handler, probe_s=p.probe_s,
                                           unloaded_s=p.unloaded_s, max_probes=p.max_probes, start_in_s=p.start_in_s,
                                           unloaded_rps=0.2 * cpus * 1000.0 / work_ms, min_probe_requests=p.min_probe_requests)  # fmt: skip
            await asyncio.sleep(0.5)
            lg, _ = await c.drive(up, path, 2.0 * cap.capacity_rps, p.saturation_s, timeout_s=30.0, start_in_s=p.start_in_s)
            idle = answer = None
            if answer_cost:
                idle, answer = await self._answer_cost(up, 3.0 * cap.capacity_rps)
        answered = list(lg["answered_by_second"])
        # whole seconds while the backlog lasted: from the second one to the one before the last answer
        busy = answered[1:-1] or answered
        sat = float(sorted(busy)[len(busy) // 2]) if busy else 0.0
        ref = Reference(cpus, work_ms, handler, cap, sat, answered, idle, answer)
        self.refs[key] = ref
        self.log(f"  capacity {cap.capacity_rps:.1f} rps, saturation {sat:.1f} answers/s, unloaded p50 "
                 f"{cap.unloaded_p50_ms:.1f} ms p99 {cap.unloaded_p99_ms:.1f} ms")  # fmt: skip
        return ref

    async def _answer_cost(self, up: c.Running, rate_rps: float, settle_s: float = 1.0) -> tuple[float | None, float | None]:
        """The upstream group's idle CPU (cores, over 1 s with no load) and its CPU per answer of
        ``/healthz`` (ms) offered ``rate_rps``: the floor of what answering a shed costs in-process."""
        await asyncio.sleep(settle_s)  # the saturation backlog is answered; a fresh process settles
        t0, u0 = time.monotonic(), c.group_usage_s(up)
        await asyncio.sleep(1.0)
        t1, u1 = time.monotonic(), c.group_usage_s(up)
        lg, _ = await c.drive(up, "/healthz", rate_rps, self.plan.saturation_s, start_in_s=self.plan.start_in_s)
        t2, u2 = time.monotonic(), c.group_usage_s(up)
        answers = lg["measured"]["ok"]
        if u0 is None or u1 is None or u2 is None or not answers:
            return None, None
        idle = (u1 - u0) / (t1 - t0)
        answer_ms = 1000.0 * max(0.0, (u2 - u1) - idle * (t2 - t1)) / answers
        self.log(f"  idle CPU {idle:.3f} cores; /healthz at {rate_rps:.0f} rps: {answer_ms:.3f} ms CPU per answer")
        return idle, answer_ms

    def nginx_limit(self, ref: Reference) -> int:
        """The tuning rule of the module docstring."""
        return max(1, math.ceil(ref.capacity.capacity_rps * ref.capacity.unloaded_p50_ms / 1000.0)) + 1

    @contextlib.asynccontextmanager
    async def serve(self, variant: str, cpus: float, work_ms: float, limit_conn: int = 1,
                    code_dir: str | None = None) -> AsyncIterator[c.Running]:  # fmt: skip
        """What the load hits for ``variant``, on a fresh upstream at ``cpus``; the upstream and the
        sidecar run the code of the checkout ``code_dir`` when given (default: this one)."""
        in_process = {"flowctl-inprocess": "flowctl", "kratos": "kratos"}.get(variant, "none")
        async with c.upstream(in_process, cpus=cpus, work_cpu_ms=work_ms, code_dir=code_dir) as up:
            if variant in SIDECARS or variant == LIMIT_1:
                extra = {HAPROXY: ("--engine", "haproxy"),
                         LIMIT_1: ("--engine", "haproxy", "--algorithm", "fixed", "--fixed-limit", "1")}.get(variant, ())
                async with c.sidecar(up, extra_args=extra, code_dir=code_dir) as sc:
                    yield sc
            elif variant == "nginx-limit-conn":
                async with front("nginx-limit-conn", up, limit_conn) as fr:
                    yield fr
            else:
                yield up

    async def load(self, run: c.Running, path: str, base_rps: float, phases: Sequence[Phase], *,
                   classes: tuple[TrafficClass, ...] = (TrafficClass(),),
                   at_offset: Sequence[tuple[float, Any]] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
        p = self.plan
        seconds = sum(ph.seconds for ph in phases)
        return await c.drive(run, path, base_rps, seconds, classes=classes, timeout_s=p.timeout_s, start_in_s=p.start_in_s,
                             at_offset=at_offset, seed=SEED, phases=tuple(phases))  # fmt: skip

    def keep(self, scenario: str, variant: str, cond: dict[str, Any], lg: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        """Raw detail of one load run, for the JSON (per-phase stats, timeline, monitor samples)."""
        keys = ("t_s", "container_cpu_utilization", "container_throttled_ratio", "host_cpu_utilization", "inflight",
                "max_inflight", "shed_total", "hot", "limiter_cpu_utilization", "limit_cores", "shed_by_reason", "period_margin",
                "period_overhead_s", "cpu_per_request_s", "min_rt_s", "limiter_usable_cores",
                "limiter_cpu_utilization_smoothed", "haproxy_maxconn", "haproxy_rooms", "haproxy_engaged",
                "haproxy_queue", "haproxy_shed_total", "haproxy_period")  # fmt: skip
        self.runs.append({
            "scenario": scenario, "variant": variant, **cond,
            "phases": lg["phases"], "measured": lg["measured"], "timeline": lg["timeline"],
            "events_at_s": lg.get("events_at_s", []), "loadgen": lg["loadgen"], "errors_by_kind": lg.get("errors_by_kind", {}),
            "samples": [{k: s[k] for k in keys if k in s} for s in samples],
        })  # fmt: skip

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        v = row["value"]
        shown = "-" if v is None else f"{v:.3g}"
        bound = row.get("bound")
        self.log(f"  {row['scenario']:11s} {row['variant']:18s} {row['metric']:34s} {shown:>8s} "
                 f"({'<=' if row['better'] == 'lower' else '>='} {row['target']:g}) {'PASS' if row['pass'] else 'fail'}"
                 + ("" if bound is None else f" (bound {bound:.3g})"))  # fmt: skip

    def pick(self, allowed: Sequence[str]) -> list[str]:
        return [v for v in self.variants if v in allowed]


def _warm(p: Plan) -> Phase:
    return Phase(p.warmup_s, 0.5, WARMUP)


# ------------------------------------------------------------------ phase lengths


def count_in(phases: Sequence[Phase], rate_rps: float, label: str, *, classes: tuple[TrafficClass, ...] = (TrafficClass(),),
             traffic_class: str | None = None) -> int:  # fmt: skip
    """The requests (of ``traffic_class``, if named) the load generator will send in the phases
    labelled ``label`` of this schedule at ``rate_rps``: its own draws, seed ``SEED``."""
    spec = LoadSpec(url="http://127.0.0.1/", rate_rps=rate_rps, duration_s=sum(ph.seconds for ph in phases), classes=classes,
                    seed=SEED, phases=tuple(phases))  # fmt: skip
    return arrivals_by_label(spec, traffic_class).get(label, 0)


def long_enough(before: Sequence[Phase], phase: Phase, rate_rps: float, plan: Plan, *,
                classes: tuple[TrafficClass, ...] = (TrafficClass(),), traffic_class: str | None = None) -> Phase:  # fmt: skip
    """``phase`` (after ``before``), at least as long as given and long enough to hold
    ``plan.min_requests`` requests (of ``traffic_class``) at ``rate_rps``: longer, never faster."""
    if not plan.min_requests:
        return phase
    share = 1.0 if traffic_class is None else sum(x.weight for x in classes if x.name == traffic_class) / sum(x.weight for x in classes)
    seconds = max(phase.seconds, plan.min_requests / (phase.multiplier * rate_rps * share))
    for _ in range(100):
        out = replace(phase, seconds=seconds)
        if count_in([*before, out], rate_rps, phase.label, classes=classes, traffic_class=traffic_class) >= plan.min_requests:
            return out
        seconds *= 1.03
    raise ValueError(f"no length of {phase.label} holds {plan.min_requests} requests at {rate_rps:g} rps")


def false_shed_phases(plan: Plan, capacity_rps: float) -> list[Phase]:
    """Warm-up, then 0.5x and 0.9x of capacity, each long enough for ``plan.min_requests``."""
    phases = [_warm(plan)]
    for multiplier in (0.5, 0.9):
        phases.append(long_enough(phases, Phase(plan.seconds, multiplier, f"{multiplier:g}x"), capacity_rps, plan))
    return phases


def bursts_phases(plan: Plan, capacity_rps: float) -> list[Phase]:
    """Warm-up, then cycles of ``BURST_S`` at 4x and ``BURST_S`` at 0.5x ("calm"): at least
    ``plan.bursts_s`` of them, and enough for ``plan.min_requests`` in the calm phases together."""
    cycles = max(1, int(plan.bursts_s // (2 * BURST_S)))
    if plan.min_requests:
        cycles = max(cycles, math.ceil(plan.min_requests / (0.5 * capacity_rps * BURST_S)))

    def build(n: int) -> list[Phase]:
        return [_warm(plan)] + [Phase(BURST_S, 4.0, "burst"), Phase(BURST_S, 0.5, "calm")] * n

    while plan.min_requests and count_in(build(cycles), capacity_rps, "calm") < plan.min_requests:
        cycles += 1
    return build(cycles)


def step_phases(plan: Plan, rate_rps: float) -> list[Phase]:
    """Warm-up, "before" (long enough for ``plan.min_requests``), then "after" the quota change,
    all at ``rate_rps``; the change comes at the end of "before"."""
    phases = [Phase(plan.warmup_s, 1.0, WARMUP)]
    phases.append(long_enough(phases, Phase(plan.step_before_s, 1.0, "before"), rate_rps, plan))
    return [*phases, Phase(plan.step_after_s, 1.0, "after")]


def priority_phases(plan: Plan, capacity_rps: float) -> list[Phase]:
    """Warm-up, 1x (long enough for ``plan.min_requests`` critical requests), then 3x."""
    phases = [_warm(plan)]
    phases.append(long_enough(phases, Phase(plan.seconds, 1.0, "1x"), capacity_rps, plan, classes=PRIORITY_CLASSES,
                              traffic_class="critical"))  # fmt: skip
    return [*phases, Phase(plan.seconds, 3.0, "3x")]


def long_lived_phases(plan: Plan, capacity_rps: float) -> list[Phase]:
    """Warm-up, then 0.9x long enough for ``plan.min_requests``."""
    return [_warm(plan), long_enough([_warm(plan)], Phase(plan.seconds, 0.9, "0.9x"), capacity_rps, plan)]


# ------------------------------------------------------------------ scenarios


async def false_shed(r: Run) -> None:
    """Poisson at 0.5x then 0.9x capacity (one service lifetime), yielding and blocking: shed ratio <= 0.01."""
    p = r.plan
    for handler in p.handlers:
        ref = await r.reference(0.5, 5.0, handler)
        cap = ref.capacity.capacity_rps
        phases = false_shed_phases(p, cap)
        for v in r.pick(("flowctl-inprocess", *SIDECARS, "kratos")):
            r.log(f"false_shed {handler} {v}: 0.5x then 0.9x of {cap:.0f} rps, {phases[1].seconds:.1f} s and {phases[2].seconds:.1f} s")
            async with r.serve(v, 0.5, 5.0) as run:
                lg, samples = await r.load(run, HANDLERS[handler], cap, phases)
            r.keep("false_shed", v, {"handler": handler, "capacity_rps": cap}, lg, samples)
            for lb in ("0.5x", "0.9x"):
                r.add(shed_row("false_shed", v, f"shed_ratio {lb} {handler}", lg["phases"][lb], 0.01))


async def _overload_like(r: Run, scenario: str, cpus: float, work_ms: float, handlers: Sequence[str], peers: Sequence[str]) -> None:
    """4x capacity: goodput/saturation >= 0.75 and admitted p99 <= 4x unloaded p99."""
    p = r.plan
    for handler in handlers:
        ref = await r.reference(cpus, work_ms, handler, answer_cost="flowctl-inprocess" in r.variants)
        cap = ref.capacity.capacity_rps
        for v in r.pick(OURS + tuple(peers)):
            limit = r.nginx_limit(ref)
            r.log(f"{scenario} {handler} {v}: 4x of {cap:.0f} rps at {cpus:g} CPU, {work_ms:g} ms, {p.seconds:g} s"
                  + (f" (limit_conn {limit})" if v == "nginx-limit-conn" else ""))  # fmt: skip
            async with r.serve(v, cpus, work_ms, limit) as run:
                lg, samples = await r.load(run, HANDLERS[handler], cap, [_warm(p), Phase(p.seconds, 4.0, "4x")])
            r.keep(scenario, v, {"handler": handler, "cpus": cpus, "work_ms": work_ms, "capacity_rps": cap,
                                 "limit_conn": limit if v == "nginx-limit-conn" else None}, lg, samples)  # fmt: skip
            m = lg["phases"]["4x"]
            row = verdict_row(scenario, v, f"goodput/saturation 4x {handler}", _ratio(m["goodput_rps"], ref.saturation_rps),
                              0.75, "higher", n=m["sent"])  # fmt: skip
            if v in ("flowctl-inprocess", "kratos"):  # limiters that answer their sheds inside the group
                row["bound"] = ref.in_process_bound(m["offered_rps"])
            r.add(row)
            r.add(verdict_row(scenario, v, f"p99/unloaded_p99 4x {handler}",
                              _ratio(m["admitted_p99_ms"], ref.capacity.unloaded_p99_ms), 4.0, "lower", n=m["sent"]))  # fmt: skip
        _limit_1_bound(r, scenario, f"p99/unloaded_p99 4x {handler}")


def _limit_1_bound(r: Run, scenario: str, metric: str) -> None:
    """The haproxy engine's p99 row gets, as its bound, the p99 of the same engine at a fixed limit of 1 in
    this run (``LIMIT_1``: one default request in service at a time): the least concurrency a limiter that
    only caps concurrency can run."""
    rows = {row["variant"]: row for row in r.rows if row["scenario"] == scenario and row["metric"] == metric}
    if HAPROXY in rows and LIMIT_1 in rows and rows[LIMIT_1]["value"] is not None:
        rows[HAPROXY]["bound"] = rows[LIMIT_1]["value"]


async def overload(r: Run) -> None:
    await _overload_like(r, "overload", 0.5, 5.0, r.plan.handlers, ("none", "kratos", "nginx-limit-conn", LIMIT_1))


async def tight_quota(r: Run) -> None:
    await _overload_like(r, "tight_quota", 0.3, 2.0, r.plan.tight_handlers, ("none", "kratos", LIMIT_1))


async def gil_quota(r: Run) -> None:
    """A 1.5-CPU quota (no cpuset) that one Python process can use only 1 core of: 4x as ``overload``."""
    await _overload_like(r, "gil_quota", 1.5, 5.0, r.plan.handlers, ("none", LIMIT_1))


async def bursts(r: Run) -> None:
    """2 s at 4x then 2 s at 0.5x, repeated: admitted p99 <= 4x unloaded; shed in the 0.5x phases <= 0.05."""
    p = r.plan
    handler = "yielding" if "yielding" in p.handlers else p.handlers[0]
    ref = await r.reference(0.5, 5.0, handler)
    cap = ref.capacity.capacity_rps
    phases = bursts_phases(p, cap)
    cycles = (len(phases) - 1) // 2
    for v in r.pick(("flowctl-inprocess", *SIDECARS, "none", "kratos")):
        r.log(f"bursts {handler} {v}: {cycles} x ({BURST_S:g} s at 4x, {BURST_S:g} s at 0.5x) of {cap:.0f} rps")
        async with r.serve(v, 0.5, 5.0) as run:
            lg, samples = await r.load(run, HANDLERS[handler], cap, phases)
        r.keep("bursts", v, {"handler": handler, "capacity_rps": cap, "cycles": cycles}, lg, samples)
        r.add(verdict_row("bursts", v, f"p99/unloaded_p99 {handler}", _ratio(lg["measured"]["admitted_p99_ms"],
                          ref.capacity.unloaded_p99_ms), 4.0, "lower", n=lg["measured"]["sent"]))  # fmt: skip
        r.add(shed_row("bursts", v, f"shed_ratio calm phases {handler}", lg["phases"]["calm"], 0.05))


async def step(r: Run) -> None:
    """Quota 1.0 -> 0.5 mid-run at 1.5x and 2x the post-step capacity: recovery <= 5 s, shed before <= 0.01."""
    p = r.plan
    handler = "blocking"
    after = await r.reference(0.5, 5.0, handler)
    bound_ms = 4.0 * after.capacity.unloaded_p99_ms
    limit = r.nginx_limit(await r.reference(1.0, 5.0, handler)) if "nginx-limit-conn" in r.variants else 1
    for load in p.step_loads:
        rate = load * after.capacity.capacity_rps
        phases = step_phases(p, rate)
        step_at = phases[0].seconds + phases[1].seconds
        seconds = step_at + phases[2].seconds
        # the unprotected service never recovers at either load: measured once, at the highest
        for v in r.pick(("flowctl-inprocess", *SIDECARS, "nginx-limit-conn") + (("none",) if load == max(p.step_loads) else ())):
            r.log(f"step {v}: {rate:.0f} rps ({load:g}x post-step capacity), quota 1.0 -> 0.5 at {step_at:g} s of {seconds:g} s"
                  + (f" (limit_conn {limit})" if v == "nginx-limit-conn" else ""))  # fmt: skip
            async with r.serve(v, 1.0, 5.0, limit) as run:
                w = run.workload
                lg, samples = await r.load(run, HANDLERS[handler], rate, phases,
                                           at_offset=[(step_at, lambda w=w: w.set_cpus(0.5))])  # fmt: skip
            r.keep("step", v, {"handler": handler, "load": load, "rate_rps": rate, "step_at_s": step_at, "bound_ms": bound_ms,
                               "limit_conn": limit if v == "nginx-limit-conn" else None}, lg, samples)  # fmt: skip
            step_s = lg["events_at_s"][0] if lg.get("events_at_s") else step_at
            rec = recovery(lg["timeline"], step_s, seconds, bound_ms)
            r.add(verdict_row("step", v, f"recovery_s {load:g}x", rec, 5.0, "lower", n=lg["phases"]["after"]["sent"]))
            r.add(shed_row("step", v, f"shed_ratio before step {load:g}x", lg["phases"]["before"], 0.01))


async def priority(r: Run) -> None:
    """50/50 critical/sheddable at 1x then 3x (one lifetime): critical goodput/offered, sheddable shed first."""
    p = r.plan
    handler = "yielding" if "yielding" in p.handlers else p.handlers[0]
    ref = await r.reference(0.5, 5.0, handler)
    cap = ref.capacity.capacity_rps
    phases = priority_phases(p, cap)
    for v in r.pick(("flowctl-inprocess", *SIDECARS, "none")):
        r.log(f"priority {handler} {v}: 50/50 critical/sheddable at 1x ({phases[1].seconds:.1f} s) then 3x of {cap:.0f} rps")
        async with r.serve(v, 0.5, 5.0) as run:
            lg, samples = await r.load(run, HANDLERS[handler], cap, phases, classes=PRIORITY_CLASSES)
        r.keep("priority", v, {"handler": handler, "capacity_rps": cap}, lg, samples)
        for lb, target in (("3x", 0.95), ("1x", 0.99)):
            crit = lg["phases"][lb]["classes"]["critical"]
            # goodput/offered over one phase is answered-in-time of sent
            r.add(count_row("priority", v, f"critical goodput/offered {lb}", int(crit["good"]), int(crit["sent"]), target, "higher"))
        cl = lg["phases"]["3x"]["classes"]
        r.add(verdict_row("priority", v, "sheddable minus critical shed 3x", cl["sheddable"]["shed_ratio"] - cl["critical"]["shed_ratio"],
                          0.0, "higher", strict=True, n=lg["phases"]["3x"]["sent"]))  # fmt: skip


async def _hold_sessions(base_url: str, kind: str, n: int, opened: list[int], stop: asyncio.Event) -> None:
    """Open ``n`` WebSockets (``/ws``) or SSE streams (``/sse``) and hold them until ``stop``; count the opened ones."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            try:
                if kind == "ws":
                    async with session.ws_connect(base_url + "/ws", timeout=aiohttp.ClientWSTimeout(ws_close=1.0)) as ws:
                        opened.append(1)
                        await stop.wait()
                        await ws.close()
                else:
                    # as a browser's EventSource asks (the haproxy engine routes streams by it)
                    async with session.get(base_url + "/sse", headers={"Accept": "text/event-stream"},
                                           timeout=aiohttp.ClientTimeout(total=None)) as resp:
                        if resp.status != 200:
                            return
                        opened.append(1)
                        reader = asyncio.create_task(_drain(resp))
                        await stop.wait()
                        reader.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await reader
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                return

        await asyncio.gather(*(one() for _ in range(n)))


async def _drain(resp: aiohttp.ClientResponse) -> None:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        async for _ in resp.content.iter_any():
            pass


async def long_lived(r: Run) -> None:
    """50 WebSockets (in-process) or SSE streams (sidecar) held open plus 0.9x plain traffic: shed <= 0.01."""
    p = r.plan
    handler = "yielding" if "yielding" in p.handlers else p.handlers[0]
    ref = await r.reference(0.5, 5.0, handler)
    cap = ref.capacity.capacity_rps
    phases = long_lived_phases(p, cap)
    for v, kind in (("flowctl-inprocess", "ws"), ("flowctl-sidecar", "sse"), ("flowctl-haproxy", "sse")):
        if v not in r.variants:
            continue
        r.log(f"long_lived {handler} {v}: {SESSIONS} {kind} sessions held, plain traffic at 0.9x of {cap:.0f} rps")
        async with r.serve(v, 0.5, 5.0) as run:
            opened: list[int] = []
            stop = asyncio.Event()
            holder = asyncio.create_task(_hold_sessions(run.base_url, kind, SESSIONS, opened, stop))
            await asyncio.sleep(1.0)
            try:
                lg, samples = await r.load(run, HANDLERS[handler], cap, phases)
            finally:
                stop.set()
                await holder
        r.keep("long_lived", v, {"handler": handler, "capacity_rps": cap, "sessions": kind, "sessions_opened": len(opened)},
               lg, samples)  # fmt: skip
        r.log(f"  {len(opened)} of {SESSIONS} {kind} sessions were open")
        r.add(shed_row("long_lived", v, f"shed_ratio plain 0.9x +{SESSIONS} {kind}", lg["phases"]["0.9x"], 0.01))


RUNNERS = {"false_shed": false_shed, "overload": overload, "tight_quota": tight_quota, "gil_quota": gil_quota, "bursts": bursts, "step": step,
           "priority": priority, "long_lived": long_lived}  # fmt: skip


# ------------------------------------------------------------------ output


BOUND_LEGEND = ("bound: measured in this run, shown on a failing row and wherever the target is out of reach of "
                "that kind of limiter (the bound on the wrong side of the target). On a goodput row of an in-process "
                "limiter, the most goodput/saturation any limiter inside the group could reach (every shed answered "
                "at the CPU cost of the app's cheapest route); on a p99 row of flowctl-haproxy, the p99 of the same "
                f"engine at a fixed limit of 1 ({LIMIT_1}): the least concurrency a limiter that only caps "
                "concurrency can run")  # fmt: skip


def _bound_note(row: dict[str, Any]) -> str:
    """The row's measured bound when the row fails (a red row carries its bound: how far from what that
    kind of limiter can reach it is) or when the bound is on the wrong side of the target (the row is out
    of reach for that kind of limiter: ``Reference.in_process_bound``, ``_limit_1_bound``), else ""."""
    bound = row.get("bound")
    if bound is None:
        return ""
    out_of_reach = bound > row["target"] if row.get("better") == "lower" else bound < row["target"]
    return f"{bound:.2f}" if out_of_reach or row.get("pass") is False else ""


def _g(x: float) -> str:
    return f"{x:.2g}" if x < 0.1 else f"{x:.3g}"


def counts_text(row: dict[str, Any]) -> str:
    """What a row was measured on: "k/n, lo-hi" (its 95% interval) for a ratio of counts, "n N"
    (requests measured) for any other row, "" when unknown."""
    k, n, interval = row.get("k"), row.get("n"), row.get("interval")
    if k is not None and n is not None and interval is not None:
        return f"{k}/{n}, {_g(interval[0])}-{_g(interval[1])}"
    return "" if n is None else f"n {n}"


def op_text(row: dict[str, Any]) -> str:
    """The target as text: "<= 0.01", ">= 0.75", "> 0"."""
    op = "<=" if row["better"] == "lower" else (">" if row["metric"].startswith("sheddable") else ">=")
    return f"{op} {row['target']:g}"


def value_text(row: dict[str, Any]) -> str:
    return "never" if row["value"] is None else f"{row['value']:.3g}"


def table(rows: list[dict[str, Any]], variants: Sequence[str]) -> str:
    """The verdict table: one line per (scenario, metric), one column per variant (value and PASS/fail)."""
    keys = list(dict.fromkeys((r["scenario"], r["metric"]) for r in rows))
    cells = {(r["scenario"], r["metric"], r["variant"]): r for r in rows}
    shown = [v for v in variants if any(r["variant"] == v for r in rows)]
    width = max([len(f"{s} {m}") for s, m in keys] + [10])
    head = f"{'scenario metric':{width}s}  {'target':>8s}  " + "  ".join(f"{v:>18s}" for v in shown)
    lines = [head, "-" * len(head)]
    for s, m in keys:
        first = next(r for r in rows if r["scenario"] == s and r["metric"] == m)
        tgt = op_text(first).replace(" ", "")
        out = []
        for v in shown:
            r = cells.get((s, m, v))
            if r is None:
                out.append(f"{'':>18s}")
            else:
                note = _bound_note(r)
                out.append(f"{value_text(r) + (' PASS' if r['pass'] else ' fail') + (f' b{note}' if note else ''):>18s}")
        lines.append(f"{s + ' ' + m:{width}s}  {tgt:>8s}  " + "  ".join(out))
    if any(_bound_note(r) for r in rows):
        lines += ["", "b<x>: " + BOUND_LEGEND]
    return "\n".join(lines)


COUNTS_LEGEND = ("In brackets, what a row was measured on: k/n and the Wilson 95% interval of k/n for a ratio of "
                 "counts (shed of sent; critical answered within 1 s of sent), n requests sent in the phase for any "
                 "other row")  # fmt: skip


def verdict_table(rows: Sequence[dict[str, Any]], cell: Callable[[dict[str, Any]], str]) -> list[str]:
    """A Markdown table, one line per (scenario, metric), one column per variant (in ``ALL_VARIANTS``
    order) holding ``cell(row)``."""
    keys = list(dict.fromkeys((r["scenario"], r["metric"]) for r in rows))
    cells = {(r["scenario"], r["metric"], r["variant"]): r for r in rows}
    shown = [v for v in ALL_VARIANTS if any(r["variant"] == v for r in rows)]
    lines = ["| scenario | metric | target | " + " | ".join(shown) + " |", "|---|---|---|" + "---|" * len(shown)]
    for s, metric in keys:
        first = next(cells[(s, metric, v)] for v in shown if (s, metric, v) in cells)
        vals = ["" if (s, metric, v) not in cells else cell(cells[(s, metric, v)]) for v in shown]
        lines.append(f"| {s} | {metric} | {op_text(first)} | " + " | ".join(vals) + " |")
    return lines


def verdict_text(row: dict[str, Any]) -> str:
    """Value and verdict, and the row's measured bound when the target is out of its reach."""
    note = _bound_note(row)
    return f"{value_text(row)} {'pass' if row['pass'] else '**fail**'}" + (f" (bound {note})" if note else "")


def run_cell(row: dict[str, Any]) -> str:
    """One run's cell: value, verdict, bound, and what it was measured on."""
    counts = counts_text(row)
    return verdict_text(row) + (f" ({counts})" if counts else "")


def markdown(out: dict[str, Any]) -> str:
    """The verdict table as Markdown, headed by the date, the machine load and the command."""
    rows = out["rows"]
    m = out["machine"]
    drift = out.get("cpu_speed_end_over_start")
    speed = "" if drift is None else f" CPU speed at the end / at the start {drift:.2f} (burn() calibration)."
    code = out.get("code") or {}
    at = "" if not code.get("commit") else f" Code: commit {str(code['commit'])[:10]}" + (
        f" with changes to {', '.join(code['changed'])}" if code.get("changed") else "") + "."
    quick = (" `--quick`: short phases (a false-shed phase holds far fewer than 400 requests), a smoke test of the "
             "harness; its figures mean nothing.") if out.get("quick") else ""  # fmt: skip
    lines = [(f"`{out['command']}`, started {out['started']}, {out['wall_s']:.0f} s; {m['cpus']} CPUs ({m['cpu_model']}), "
              f"load average {m['loadavg'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after (a shared machine: other jobs "
              f"ran).{speed}{at}{quick}"),
             "", *verdict_table(rows, run_cell), "", COUNTS_LEGEND + "."]  # fmt: skip
    if any(_bound_note(r) for r in rows):
        lines += ["", "(bound x): " + BOUND_LEGEND + " (`Reference.in_process_bound`, `_limit_1_bound` in bench/scenarios/scorecard.py)."]
    refs = out.get("references", {})
    if refs:
        lines += ["", "| reference (unprotected upstream) | capacity rps | saturation answers/s | unloaded p50 ms | unloaded p99 ms | nginx limit_conn |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for k, ref in refs.items():
            lines.append(f"| {k} | {ref['capacity_rps']:.1f} | {ref['saturation_rps']:.0f} | {ref['unloaded_p50_ms']:.1f} | "
                         f"{ref['unloaded_p99_ms']:.1f} | {out.get('nginx_limit_conn', {}).get(k, '')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], variants: Sequence[str], path: str, title: str) -> None:
    """One panel per (scenario, metric): a bar per variant (green pass, red fail), the target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["scenario"], r["metric"]) for r in rows))
    if not keys:
        return
    ncol = 4
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.9 * nrow), squeeze=False)
    shown = [v for v in variants if any(r["variant"] == v for r in rows)]
    for ax, (s, m) in zip(axes.flat, keys):
        sel = {r["variant"]: r for r in rows if r["scenario"] == s and r["metric"] == m}
        names = [v for v in shown if v in sel]
        vals = [sel[v]["value"] for v in names]
        finite = [x for x in vals if x is not None]
        target = sel[names[0]]["target"]
        top = max(finite + [target]) * 1.15 or 1.0
        for i, v in enumerate(names):
            val = vals[i]
            color = "tab:green" if sel[v]["pass"] else "tab:red"
            ax.bar(i, top if val is None else val, color=color, alpha=0.35 if val is None else 0.85,
                   hatch="//" if val is None else None, edgecolor="black", linewidth=1.5 if v in OURS else 0.3)  # fmt: skip
            ax.text(i, (top if val is None else val), "never" if val is None else f"{val:.2g}", ha="center", va="bottom", fontsize=7)
        ax.axhline(target, color="black", linestyle="--", linewidth=1)
        ax.set_ylim(0, top * 1.12)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("flowctl-", "fc-").replace("nginx-limit-conn", "nginx") for n in names], fontsize=7, rotation=20)
        ax.set_title(f"{s}: {m}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench scorecard", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", dest="json_out", default=os.path.join(c.RESULTS_DIR, "scorecard.json"))
    p.add_argument("--plot", help="PNG path (default: the JSON path with .png)")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny durations, blocking handler only (about 2 min)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of: " + ",".join(SCENARIOS))
    p.add_argument("--variants", help="comma list of: " + ",".join(ALL_VARIANTS) + " (default: all; --quick: the flowctl ones)")
    p.add_argument("--runs", type=int, default=1,
                   help="run the whole scorecard N times (each run's files as <json stem>-run<i>.*), then write the "
                        "median and the worst of each row to --json and its .md (bench.scorecard_median)")  # fmt: skip
    return p


async def run(a: argparse.Namespace, command: str) -> dict[str, Any]:
    c.pin_self()
    plan = QUICK if a.quick else FULL
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    variants = [v.strip() for v in a.variants.split(",") if v.strip()] if a.variants else list(plan.variants)
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    for v in variants:
        if v not in ALL_VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(ALL_VARIANTS)}")
    nginx = "nginx-limit-conn" in variants and bool({"overload", "step"} & set(scenarios))
    c.check_environment(nginx=nginx)
    if HAPROXY in variants:
        from sidecar.haproxy.process import find_haproxy

        if find_haproxy() is None:
            raise c.EnvironmentMissing(f"{HAPROXY} needs haproxy (apt-get install -y haproxy), or leave it out with --variants")
    machine = c.machine_info()
    started = time.time()
    from bench.upstream import calibrate_iters_per_ms

    r = Run(plan, calibrate_iters_per_ms(), variants)
    r.log(f"{command}: scenarios {scenarios}, variants {variants}; load average {machine['loadavg']}")
    for s in scenarios:
        await RUNNERS[s](r)
    wall_s = time.monotonic() - r.t0
    machine["loadavg_after"] = list(os.getloadavg())
    # The VM's CPU speed moves (1.6x seen). Requests burn CPU *time* (bench.upstream.burn_cpu), so
    # their share of the quota holds; what still moves with the speed is wall-clock latency and the
    # load generator's and the sidecar's own CPU.
    iters_end = calibrate_iters_per_ms()
    drift = iters_end / r.iters_per_ms
    if not 1 / SPEED_DRIFT_MAX <= drift <= SPEED_DRIFT_MAX:
        r.log(f"WARNING: the CPU ran {drift:.2f}x as fast at the end as at the start: latencies moved with it; "
              "compare figures within this run")  # fmt: skip
    return {
        "scenario": "scorecard",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": wall_s,
        "quick": bool(a.quick),
        "command": command,
        "code": code_version(),
        "machine": machine,
        "plan": plan.__dict__,
        "scenarios": scenarios,
        "variants": variants,
        "iters_per_ms": r.iters_per_ms,
        "iters_per_ms_end": iters_end,
        "cpu_speed_end_over_start": drift,
        "references": {f"{cpus:g}cpu/{work:g}ms/{h}": ref.as_dict() for (cpus, work, h), ref in r.refs.items()},
        "nginx_limit_conn": {f"{cpus:g}cpu/{work:g}ms/{h}": r.nginx_limit(ref) for (cpus, work, h), ref in r.refs.items()},
        "rows": r.rows,
        "runs": r.runs,
    }


def code_version() -> dict[str, Any]:
    """The commit measured and the files changed on top of it (``bench matrix``'s rule)."""
    from bench.scenarios.matrix import code_version as matrix_code_version  # matrix imports this module

    return matrix_code_version()


def run_path(json_out: str, index: int, runs: int) -> str:
    """Where run ``index`` (from 1) of ``runs`` writes its JSON: ``json_out`` itself for a single run."""
    stem, ext = os.path.splitext(json_out)
    return json_out if runs == 1 else f"{stem}-run{index}{ext or '.json'}"


def write_run(out: dict[str, Any], json_out: str, plot_out: str | None = None) -> None:
    """One run's JSON, its PNG (``plot_out`` or beside the JSON) and Markdown, and its table on stdout."""
    c.write_json(out, json_out)
    png = plot_out or os.path.splitext(json_out)[0] + ".png"
    m = out["machine"]
    title = (f"flowctl scorecard {out['started']} ({'quick' if out['quick'] else 'full'}), load average "
             f"{m['loadavg'][0]:.2f} -> {m['loadavg_after'][0]:.2f}, {out['wall_s']:.0f} s")  # fmt: skip
    plot(out["rows"], ALL_VARIANTS, png, title)
    c.log(f"wrote {png}")
    md = os.path.splitext(json_out)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown(out))
    c.log(f"wrote {md}")
    print(f"\n== {title} ==")
    print(table(out["rows"], ALL_VARIANTS))
    flow = [row for row in out["rows"] if row["variant"] in OURS]
    print(f"\nflowctl rows passing: {sum(row['pass'] for row in flow)} of {len(flow)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(args)
    if a.runs < 1:
        raise SystemExit("--runs must be at least 1")
    command = "python -m bench scorecard" + "".join(" " + shlex.quote(x) for x in args)
    paths: list[str] = []
    outs: list[dict[str, Any]] = []
    for i in range(1, a.runs + 1):
        try:
            out = asyncio.run(run(a, command))
        except c.EnvironmentMissing as exc:
            print(f"bench scorecard: {exc}", file=sys.stderr)
            return 2
        if a.runs > 1:
            out["run"] = {"index": i, "of": a.runs}
        paths.append(run_path(a.json_out, i, a.runs))
        write_run(out, paths[-1], a.plot if a.runs == 1 else None)
        outs.append(out)
    if a.runs > 1:
        from bench.scorecard_median import write_median  # it imports this module

        write_median(outs, paths, a.json_out, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
