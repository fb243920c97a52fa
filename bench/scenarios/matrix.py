"""``python -m bench matrix``: the admission policy on sampled shapes it was never tuned on.

A *shape* is a service and a traffic pattern: the CPU quota, the CPU work per request, the
handler (``blocking``, ``yielding``, or ``mixed`` CPU and I/O: ``bench.upstream.HANDLERS``)
and the load pattern (steady Poisson, or bursts of one period). Shapes are drawn with a
seeded RNG as a Latin hypercube: with N shapes each of N equal slices of the quota range
(uniform) and of the work range (log-uniform: 1-2 ms is as likely as 12-24 ms) holds one
shape, paired at random; handlers and patterns are dealt in equal shares, shuffled. The work
range ends where the quota would serve fewer than ``min_rate_rps`` requests a second, and a
draw predicted to take longer than the plan's budget is paired again (``sample_shapes``): the
default 8 shapes fit 20 minutes here.

Every shape's references are measured in this run, as the scorecard measures them
(``scorecard.Run.reference``): the unprotected upstream's capacity (highest rate with p99 <=
3x the unloaded p99), unloaded p50/p99, saturation throughput, and the idle CPU and the
cheapest answer's CPU that bound what a limiter inside the group can reach
(``scorecard.Reference.in_process_bound``).

Each variant then serves one lifetime per shape: a warm-up at 0.5x, the false-shed cells in
rising order (0.5x, 0.9x), then each overload cell (2, 4, 8x) after a 1 s calm gap at 0.2x.
A false-shed cell holds at least ``min_requests`` (400) requests: its phase is long enough
for that many Poisson arrivals of this run's seed (counted up front with the load
generator's own draws), never a higher rate. An overload cell lasts ``overload_s``, or long
enough for ``min_admitted`` answers at saturation when that is longer: its p99 is then not
its single slowest answer's.
In a *bursts* shape every cell alternates half a period at its load and half a period at
0.2x (the calm rate): a false-shed cell never offers more than its load, and its shed ratio
counts both halves; an overload cell's goodput and p99 are those of the requests sent in its
bursts (goodput can then exceed saturation: a burst's requests may be answered in the calm
half after it, which the p99 target sees).

Targets per cell (``TARGETS``): at <= 0.9x, shed ratio <= 1% (``false_shed``); at >= 2x,
admitted p99 <= 4x the unloaded p99 (``p99``) and goodput (2xx within 1 s) >= 0.75 of
saturation (``goodput``). For the limiters that answer their sheds inside the group
(``flowctl-inprocess``, ``kratos``) the goodput reference is the measured in-process bound
when it is below saturation: 0.75 of what any limiter in the group could reach.

Variants: ``flowctl-inprocess`` and ``flowctl-sidecar`` as the scorecard starts them, at
every load; the peers ``kratos`` and ``none`` at 0.9x and 4x (``PEER_LOADS``).

A candidate beside main in one run: ``--code cand=/path/to/checkout`` and the variant
``flowctl-inprocess@cand`` (or ``flowctl-sidecar@cand``) runs the upstream and the sidecar from that
checkout, on the same shapes, references and arrivals as the plain variant, one lifetime after the
other (``split_variant``). One run then compares the two under the same machine speed and
references, which separate runs do not (``python -m bench matrix-compare --pair cand RUN.json``).

The summary gives, per (variant, target), k of n cells passing with the Wilson 95% interval
(``bench.stats.wilson_interval``). The interval treats cells as independent trials; the
cells of one shape share a reference and a service, so read it as optimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bench.loadgen import WARMUP, LoadSpec, Phase, arrivals_by_label
from bench.scenarios import common as c
from bench.scenarios import scorecard as sc
from bench.stats import wilson_interval
from bench.upstream import HANDLERS

FLOWCTL_VARIANTS = sc.FLOWCTL_VARIANTS
PEERS = ("kratos", "none")
VARIANTS = FLOWCTL_VARIANTS + PEERS
IN_PROCESS = ("flowctl-inprocess", "kratos")  # limiters that answer their sheds inside the group
LOADS = (0.5, 0.9, 2.0, 4.0, 8.0)
PEER_LOADS = (0.9, 4.0)
FALSE_SHED_MAX_LOAD = 0.9  # a cell at or under this load is a false-shed cell; above it, an overload cell
HANDLER_CHOICES = ("blocking", "yielding", "mixed")
PATTERNS = ("steady", "bursts")
QUOTA_RANGE = (0.2, 1.0)  # cores
WORK_RANGE_MS = (1.0, 25.0)
BURST_PERIOD_RANGE_S = (0.3, 3.0)
CALM = 0.2  # x capacity: between bursts, and in the gap before each overload cell
CAPACITY_GUESS = 0.5  # capacity / (quota / work): the time estimate before a reference (medians 0.48-0.52 where the
# quota serves under 100 requests/s, whose cells are the long ones; 0.56-0.73 above)
LAGGED_MS = 5.0  # a cell whose sends ran later than this at p99 was limited by the load generator's core
P99_FEW_ADMITTED = 100  # a p99 over fewer admitted requests is the slowest one's: the report names such cells
MIN_UNLOADED_REQUESTS = 60  # the unloaded p99 (the p99 target's denominator) comes from at least this many
MIN_ADMITTED = 300  # answers an overload cell is sized for: its p99 is then about its 3rd slowest, not its slowest


@dataclass(frozen=True)
class Target:
    """One verdict per cell: ``metric`` against ``limit``, lower or higher being better."""

    name: str
    limit: float
    better: str  # "lower" | "higher"
    overload: bool  # judged at loads above FALSE_SHED_MAX_LOAD, else at or under it
    rule: str


TARGETS = (
    Target("false_shed", 0.01, "lower", False, "shed ratio <= 0.01 at <= 0.9x"),
    Target("p99", 4.0, "lower", True, "admitted p99 / unloaded p99 <= 4 at >= 2x"),
    Target("goodput", 0.75, "higher", True,
           "goodput / saturation >= 0.75 at >= 2x (in-process: of the measured in-process bound when lower)"),
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """The size of one matrix run."""

    shapes: int
    loads: tuple[float, ...]
    peer_loads: tuple[float, ...]
    min_requests: int  # per false-shed cell
    overload_s: float  # seconds of each overload cell at least (bursts: and at least 2 periods)
    gap_s: float  # calm seconds before each overload cell
    warmup_s: float
    reference: sc.Plan  # the scorecard's reference durations, start-in and client timeout
    min_rate_rps: float  # shapes keep quota x 1000 / work_ms >= this (see sample_shapes)
    budget_per_shape_s: float | None  # a draw predicted to take longer (all variants) is paired again (sample_shapes)
    min_unloaded_requests: int = MIN_UNLOADED_REQUESTS
    min_admitted: int = 0  # an overload cell is long enough for this many answers at saturation (schedule)


DEFAULT = Plan(shapes=8, loads=LOADS, peer_loads=PEER_LOADS, min_requests=400, overload_s=2.5, gap_s=1.0, warmup_s=1.0,
               reference=sc.FULL, min_rate_rps=70.0, budget_per_shape_s=18.0 * 60 / 8,
               min_admitted=MIN_ADMITTED)  # fmt: skip
QUICK = Plan(shapes=1, loads=(0.9, 4.0), peer_loads=(0.9, 4.0), min_requests=50, overload_s=1.5, gap_s=0.5, warmup_s=0.5,
             reference=sc.QUICK, min_rate_rps=60.0, budget_per_shape_s=None, min_unloaded_requests=20)  # fmt: skip


# ------------------------------------------------------------------ shapes


@dataclass(frozen=True)
class Shape:
    """One sampled service and traffic pattern."""

    index: int
    cpus: float
    work_ms: float
    handler: str
    pattern: str  # "steady" | "bursts"
    burst_period_s: float | None = None

    @property
    def label(self) -> str:
        tail = "steady" if self.burst_period_s is None else f"bursts {self.burst_period_s:g} s"
        return f"{self.cpus:g} CPU, {self.work_ms:g} ms {self.handler}, {tail}"

    def guess_capacity_rps(self) -> float:
        return CAPACITY_GUESS * self.cpus * 1000.0 / self.work_ms

    def full_use_rps(self) -> float:
        """Requests a second at full use of the quota: the guess of the saturation (over the measured
        one by a median 1.09x, 0.97-1.36x for 8 shapes in 10, at most 1.85x: 147 references)."""
        return self.cpus * 1000.0 / self.work_ms


def sample_shapes(n: int, seed: int, *, min_rate_rps: float = DEFAULT.min_rate_rps,
                  cost: Callable[[Sequence[Shape]], float] | None = None, budget: float | None = None,
                  tries: int = 200) -> list[Shape]:  # fmt: skip
    """``n`` shapes from the ranges, as a Latin hypercube over (quota, log work); reproducible from ``seed``.

    Work is drawn log-uniformly from 1 ms up to ``min(25, quota x 1000 / min_rate_rps)`` ms: a
    shape whose quota serves fewer than ``min_rate_rps`` requests a second at full use (heavy
    work at a tight quota) would need minutes for a 400-request cell at 0.5x. ``min_rate_rps``
    0 samples the whole range. With ``cost`` and ``budget``, a draw that costs more is paired
    again (the same quota and work slices, matched anew; up to ``tries`` times, then the
    cheapest); a draw within the budget is kept as drawn."""
    if n < 1:
        raise ValueError("need at least one shape")
    rng = random.Random(seed)

    def strata() -> list[float]:
        xs = [(i + rng.random()) / n for i in range(n)]
        rng.shuffle(xs)
        return xs

    uq, uw = strata(), strata()
    handlers = [HANDLER_CHOICES[i % len(HANDLER_CHOICES)] for i in range(n)]
    patterns = [PATTERNS[i % len(PATTERNS)] for i in range(n)]
    rng.shuffle(handlers)
    rng.shuffle(patterns)
    lo_q, hi_q = QUOTA_RANGE
    lo_w, hi_w = WORK_RANGE_MS
    lo_p, hi_p = BURST_PERIOD_RANGE_S
    periods = [round(math.exp(rng.uniform(math.log(lo_p), math.log(hi_p))), 2) if p == "bursts" else None for p in patterns]

    def build() -> list[Shape]:
        out = []
        for i in range(n):
            cpus = round(lo_q + uq[i] * (hi_q - lo_q), 2)
            top = hi_w if min_rate_rps <= 0 else max(lo_w, min(hi_w, cpus * 1000.0 / min_rate_rps))
            work = round(math.exp(math.log(lo_w) + uw[i] * (math.log(top) - math.log(lo_w))), 1)
            out.append(Shape(i + 1, cpus, work, handlers[i], patterns[i], periods[i]))
        return out

    shapes = build()
    if cost is None or budget is None:
        return shapes
    best, best_cost = shapes, cost(shapes)
    for _ in range(tries):
        if best_cost <= budget:
            break
        rng.shuffle(uw)
        shapes = build()
        if (c := cost(shapes)) < best_cost:
            best, best_cost = shapes, c
    return best


# ------------------------------------------------------------------ the load schedule of one lifetime


@dataclass(frozen=True)
class CellWindow:
    """Where one load sits in a lifetime's schedule: its label(s) and its seconds from the first send."""

    load: float
    label: str  # the phases at the load (a false-shed cell: also its calm halves)
    start_s: float
    end_s: float

    @property
    def overload(self) -> bool:
        return self.load > FALSE_SHED_MAX_LOAD


@dataclass
class Schedule:
    phases: list[Phase] = field(default_factory=list)
    cells: list[CellWindow] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(ph.seconds for ph in self.phases)


def _label(load: float) -> str:
    return f"{load:g}x"


def _count(phases: Sequence[Phase], rate_rps: float, seed: int, label: str) -> int:
    seconds = sum(ph.seconds for ph in phases)
    spec = LoadSpec(url="http://127.0.0.1/", rate_rps=rate_rps, duration_s=seconds, seed=seed, phases=tuple(phases))
    return arrivals_by_label(spec).get(label, 0)


def schedule(shape: Shape, loads: Sequence[float], capacity_rps: float, plan: Plan, seed: int | None,
             saturation_rps: float | None = None) -> Schedule:  # fmt: skip
    """The phases of one lifetime (multiples of ``capacity_rps``) and where each cell sits.

    With ``seed``, each false-shed cell is lengthened until that seed's Poisson draws put at
    least ``plan.min_requests`` requests in it; without, its length is the expected one. With
    ``saturation_rps`` (answers/s), each overload cell lasts long enough for ``plan.min_admitted``
    answers at ``min(load x capacity, saturation)`` in its bursts (at least ``plan.overload_s``);
    without (the draw's time prediction, before any reference), ``plan.overload_s``."""
    s = Schedule([Phase(plan.warmup_s, 0.5, WARMUP)])
    period = shape.burst_period_s
    for load in sorted(loads):
        label = _label(load)
        if load > FALSE_SHED_MAX_LOAD:
            s.phases.append(Phase(plan.gap_s, CALM, "gap"))
            start = s.seconds
            secs = plan.overload_s
            if saturation_rps and plan.min_admitted:
                answered_rps = min(load * capacity_rps, saturation_rps) / (1 if period is None else 2)
                secs = max(secs, plan.min_admitted / answered_rps)
            if period is None:
                s.phases.append(Phase(secs, load, label))
            else:
                for _ in range(max(2, math.ceil(secs / period))):
                    s.phases += [Phase(period / 2, load, label), Phase(period / 2, CALM, label + " calm")]
            s.cells.append(CellWindow(load, label, start, s.seconds))
            continue
        start = s.seconds
        before = list(s.phases)
        if period is None:
            secs = plan.min_requests / (load * capacity_rps)
            s.phases = before + [Phase(secs, load, label)]
            while seed is not None and _count(s.phases, capacity_rps, seed, label) < plan.min_requests:
                secs *= 1.03
                s.phases = before + [Phase(secs, load, label)]
        else:
            per_period = (load + CALM) * capacity_rps * period / 2
            n = max(1, math.ceil(plan.min_requests / per_period))
            s.phases = before + [Phase(period / 2, load, label), Phase(period / 2, CALM, label)] * n
            while seed is not None and _count(s.phases, capacity_rps, seed, label) < plan.min_requests:
                n += 1
                s.phases = before + [Phase(period / 2, load, label), Phase(period / 2, CALM, label)] * n
        s.cells.append(CellWindow(load, label, start, s.seconds))
    return s


def split_variant(variant: str) -> tuple[str, str | None]:
    """``flowctl-sidecar@cand`` -> ``("flowctl-sidecar", "cand")``: the variant, and the label of the
    checkout whose code it runs (``--code``; None: this one)."""
    base, sep, label = variant.partition("@")
    return base, (label if sep else None)


def variant_loads(variant: str, plan: Plan) -> tuple[float, ...]:
    base = split_variant(variant)[0]
    return plan.loads if base in FLOWCTL_VARIANTS else tuple(x for x in plan.loads if x in plan.peer_loads)


# ------------------------------------------------------------------ verdicts


def verdict(target: Target, value: float | None) -> bool:
    """Pass or fail; an unknown value (None, NaN) fails."""
    if value is None or math.isnan(value):
        return False
    return value <= target.limit if target.better == "lower" else value >= target.limit


def severity(cell: dict[str, Any]) -> float:
    """How far a cell is from its limit, as a factor (> 1: failed; unknown: infinite)."""
    v, lim = cell["value"], cell["limit"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return math.inf
    if cell["better"] == "lower":
        return v / lim if lim else math.inf
    return lim / v if v > 0 else math.inf


def reasons_between(samples: Sequence[dict[str, Any]], start_s: float, end_s: float,
                    key: str = "shed_by_reason") -> dict[str, int] | None:  # fmt: skip
    """Sheds by reason (or another of the state's cumulative counters, ``key``: ``shed_by_stage``,
    ``engagements``) during [start_s, end_s] (seconds from the first send), from the monitor's
    cumulative counts (sampled every 0.5 s: a boundary is good to that). None: no limiter state."""
    seen = [s for s in samples if isinstance(s.get(key), dict)]
    if not seen:
        return None
    before: dict[str, Any] = next((s[key] for s in reversed(seen) if s["t_s"] <= start_s), {})
    after = next((s[key] for s in reversed(seen) if s["t_s"] <= end_s + 0.5), before)
    out = {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in sorted(set(after) | set(before))}
    return {k: n for k, n in out.items() if n}


def cells_of(shape: Shape, variant: str, ref: sc.Reference, sched: Schedule, lg: dict[str, Any] | None,
             samples: Sequence[dict[str, Any]], error: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The verdict cells of one lifetime (``lg`` None: it failed to run, every cell fails with ``error``)."""
    out = []
    for w in sched.cells:
        st: dict[str, Any] = lg["phases"].get(w.label, {}) if lg else {}
        lag = st.get("send_lag_p99_ms")
        base = {"shape": shape.index, "variant": variant, "load": w.load, "pattern": shape.pattern,
                "requests": int(st.get("sent", 0)), "shed": st.get("rejected"), "shed_by_reason": reasons_between(samples, w.start_s, w.end_s),
                # which stage shed, engaged or not, and what engaged the limiter (flowctl variants)
                "shed_by_stage": reasons_between(samples, w.start_s, w.end_s, "shed_by_stage"),
                "engagements": reasons_between(samples, w.start_s, w.end_s, "engagements"),
                "shed_ratio": st.get("shed_ratio"), "offered_rps": st.get("offered_rps"), "timeouts": st.get("timeouts"),
                "errors": st.get("errors"), "admitted_p99_ms": st.get("admitted_p99_ms"), "goodput_rps": st.get("goodput_rps"),
                "send_lag_p99_ms": lag, "harness_lagged": lag is not None and lag > LAGGED_MS, "error": error}  # fmt: skip
        for t in TARGETS:
            if t.overload != w.overload:
                continue
            value: float | None = None
            extra: dict[str, Any] = {}
            if st and t.name == "false_shed":
                value = float(st["shed_ratio"])
            elif st and t.name == "p99":
                p99 = st.get("admitted_p99_ms")
                value = None if p99 is None else p99 / ref.capacity.unloaded_p99_ms
            elif st and t.name == "goodput":
                reference = ref.saturation_rps
                if split_variant(variant)[0] in IN_PROCESS:
                    bound = ref.in_process_bound(float(st["offered_rps"]))
                    extra["bound"] = bound
                    if bound is not None and bound < 1.0:
                        reference = ref.saturation_rps * bound
                extra["goodput_over_saturation"] = st["goodput_rps"] / ref.saturation_rps if ref.saturation_rps else None
                value = st["goodput_rps"] / reference if reference > 0 else None
            out.append({**base, "target": t.name, "value": value, "limit": t.limit, "better": t.better,
                        "pass": verdict(t, value), **extra})  # fmt: skip
    return out


def summarize(cells: Sequence[dict[str, Any]], variants: Sequence[str]) -> list[dict[str, Any]]:
    """Per (variant, target): k of n cells passing, the fraction and its Wilson 95% interval."""
    out = []
    for v in variants:
        for t in TARGETS:
            sel = [x for x in cells if x["variant"] == v and x["target"] == t.name]
            if not sel:
                continue
            k = sum(1 for x in sel if x["pass"])
            lo, hi = wilson_interval(k, len(sel))
            out.append({"variant": v, "target": t.name, "passed": k, "cells": len(sel), "fraction": k / len(sel),
                        "interval": [lo, hi]})  # fmt: skip
    return out


def worst(cells: Sequence[dict[str, Any]], n: int = 5, variants: Sequence[str] = FLOWCTL_VARIANTS) -> list[dict[str, Any]]:
    """The ``n`` cells of ``variants`` farthest from (or over) their limits, worst first."""
    sel = [x for x in cells if split_variant(x["variant"])[0] in variants]
    return sorted(sel, key=lambda x: (-severity(x), x["shape"], x["variant"], x["load"]))[:n]


# ------------------------------------------------------------------ running


class Eta:
    """Elapsed and remaining time: predictions per unit of work, scaled by how the done ones went."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.predicted_done = 0.0
        self.remaining: dict[str, float] = {}

    def plan(self, key: str, seconds: float) -> None:
        self.remaining[key] = seconds

    def done(self, key: str) -> None:
        self.predicted_done += self.remaining.pop(key, 0.0)

    def text(self) -> str:
        elapsed = time.monotonic() - self.t0
        factor = elapsed / self.predicted_done if self.predicted_done > 0 else 1.0
        left = factor * sum(self.remaining.values())
        return f"elapsed {elapsed / 60:.1f} min, ETA {left / 60:.1f} min"


REFERENCE_BASE_S = 25.0  # a reference's seconds: this, plus REFERENCE_RPS_S over the rate at full use
REFERENCE_RPS_S = 2527.0  # (the unloaded phase and the probes are sized by requests; fitted to 99 references)
LIFETIME_OVERHEAD_S = 2.5  # starting the service and the load generator, the last answers (1-5 s measured)


def reference_guess_s(shape: Shape) -> float:
    """The seconds ``shape``'s reference is expected to take: 73 s where the quota serves 53
    requests a second at full use, 30 s at 550 (residual SD 7.6 s over 99 references)."""
    return REFERENCE_BASE_S + REFERENCE_RPS_S / shape.full_use_rps()


def predicted_s(shape: Shape, plan: Plan, variants: Sequence[str], capacity_rps: float | None = None, *,
                reference: bool = True, saturation_rps: float | None = None) -> float:  # fmt: skip
    """The seconds ``shape`` is expected to take (its reference unless not ``reference``, and a
    lifetime per variant), at ``capacity_rps`` and ``saturation_rps``, or the guesses from its quota
    and work (the draw, ``sample_shapes``, before any reference: the capacity guess and full use)."""
    if capacity_rps is None:
        capacity_rps = shape.guess_capacity_rps()
        saturation_rps = shape.full_use_rps() if saturation_rps is None else saturation_rps
    lifetimes = sum(LIFETIME_OVERHEAD_S + schedule(shape, variant_loads(v, plan), capacity_rps, plan, None,
                                                   saturation_rps).seconds for v in variants)  # fmt: skip
    return (reference_guess_s(shape) if reference else 0.0) + lifetimes


class Matrix:
    """One matrix run: the plan, the shapes, the references and the cells."""

    def __init__(self, plan: Plan, seed: int, variants: Sequence[str], iters_per_ms: float,
                 only: Sequence[int] = (), codes: dict[str, str] | None = None) -> None:  # fmt: skip
        self.plan = plan
        self.seed = seed
        self.variants = list(variants)
        self.bases = list(dict.fromkeys(split_variant(v)[0] for v in variants))
        self.codes = dict(codes or {})  # label -> checkout directory (``--code``)
        self.iters_per_ms = iters_per_ms
        budget = None if plan.budget_per_shape_s is None else plan.budget_per_shape_s * plan.shapes
        # The draw is judged with every variant, so that a run of a few variants measures the same shapes
        # as the full run of its seed (a candidate compared with a full run, cell by cell).
        self.shapes = sample_shapes(plan.shapes, seed, min_rate_rps=plan.min_rate_rps, budget=budget,
                                    cost=lambda shapes: sum(predicted_s(s, plan, VARIANTS) for s in shapes))  # fmt: skip
        if only:  # a few shapes of the same draw (``--only``): the full run's shapes and arrivals
            unknown = sorted(set(only) - {s.index for s in self.shapes})
            if unknown:
                raise ValueError(f"no shape {', '.join(map(str, unknown))} in a draw of {len(self.shapes)}")
            keep = set(only)
            self.shapes = [s for s in self.shapes if s.index in keep]
        self.refs: dict[int, sc.Reference] = {}
        self.ref_wall_s: dict[int, float] = {}
        self.cells: list[dict[str, Any]] = []
        self.lifetimes: list[dict[str, Any]] = []
        self.eta = Eta()
        for shape in self.shapes:
            self._predict(shape, None, reference=True)

    def _predict(self, shape: Shape, capacity_rps: float | None, *, reference: bool,
                 saturation_rps: float | None = None) -> None:  # fmt: skip
        if reference:
            self.eta.plan(f"{shape.index}/reference", reference_guess_s(shape))
        for v in self.variants:
            self.eta.plan(f"{shape.index}/{v}", predicted_s(shape, self.plan, (v,), capacity_rps, reference=False,
                                                            saturation_rps=saturation_rps))  # fmt: skip

    def log(self, msg: str) -> None:
        c.log(msg)

    def seed_of(self, shape: Shape) -> int:
        """The load generator's seed for this shape: the same arrivals for every variant with the same loads."""
        return self.seed * 1000 + shape.index

    async def reference(self, shape: Shape) -> sc.Reference:
        """The scorecard's reference measurement; the unloaded phase long enough for a p99 of
        ``min_unloaded_requests`` (at the scorecard's unloaded rate, 0.2 x quota / work)."""
        p = self.plan.reference
        unloaded_rps = 0.2 * shape.cpus * 1000.0 / shape.work_ms
        plan = replace(p, unloaded_s=max(p.unloaded_s, self.plan.min_unloaded_requests / unloaded_rps))
        run = sc.Run(plan, self.iters_per_ms, self.bases)
        t0 = time.monotonic()
        ref = await run.reference(shape.cpus, shape.work_ms, shape.handler, answer_cost=bool(set(IN_PROCESS) & set(self.bases)))
        self.refs[shape.index] = ref
        self.ref_wall_s[shape.index] = time.monotonic() - t0
        return ref

    async def lifetime(self, shape: Shape, variant: str, ref: sc.Reference) -> None:
        """One service lifetime of ``variant`` on ``shape``: every cell of its loads."""
        loads = variant_loads(variant, self.plan)
        cap = ref.capacity.capacity_rps
        seed = self.seed_of(shape)
        sched = schedule(shape, loads, cap, self.plan, seed, ref.saturation_rps)
        p = self.plan.reference
        runner = sc.Run(p, self.iters_per_ms, self.bases)
        base, label = split_variant(variant)
        lg: dict[str, Any] | None = None
        samples: list[dict[str, Any]] = []
        error = None
        t0 = time.monotonic()
        try:
            async with runner.serve(base, shape.cpus, shape.work_ms, code_dir=self.codes[label] if label else None) as run:
                lg, samples = await c.drive(run, HANDLERS[shape.handler], cap, sched.seconds, timeout_s=p.timeout_s,
                                            start_in_s=p.start_in_s, seed=seed, phases=tuple(sched.phases))  # fmt: skip
        except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.log(f"  {variant} on shape {shape.index} did not run: {error}")
        cells = cells_of(shape, variant, ref, sched, lg, samples, error)
        self.cells += cells
        self.lifetimes.append({
            "shape": shape.index, "variant": variant, "loads": list(loads), "seconds": sched.seconds, "seed": seed,
            "wall_s": time.monotonic() - t0,
            "cells": [asdict(w) for w in sched.cells], "error": error,
            "phases": {k: {f: v for f, v in st.items() if f != "classes"} for k, st in (lg or {}).get("phases", {}).items()},
            "loadgen": (lg or {}).get("loadgen"), "errors_by_kind": (lg or {}).get("errors_by_kind"),
            "shed_by_reason": next((s["shed_by_reason"] for s in reversed(samples) if s.get("shed_by_reason") is not None), None),
        })  # fmt: skip
        for x in cells:
            v = x["value"]
            shown = "-" if v is None else f"{v:.3g}"
            op = "<=" if x["better"] == "lower" else ">="
            why = f" {x['shed_by_reason']}" if x["shed_by_reason"] else ""
            self.log(f"    {_label(x['load']):>4s} {x['target']:10s} {shown:>8s} ({op} {x['limit']:g}) "
                     f"{'PASS' if x['pass'] else 'fail'}  {x['requests']} requests{why}")  # fmt: skip

    async def run(self) -> None:
        n = len(self.shapes)
        for shape in self.shapes:
            self.log(f"shape {shape.index}/{n}: {shape.label}: reference; {self.eta.text()}")
            ref = await self.reference(shape)
            self.eta.done(f"{shape.index}/reference")
            self._predict(shape, ref.capacity.capacity_rps, reference=False, saturation_rps=ref.saturation_rps)
            for v in shape_order(self.variants, shape.index):
                loads = variant_loads(v, self.plan)
                self.log(f"shape {shape.index}/{n} {v}: cells {', '.join(_label(x) for x in loads)} of "
                         f"{ref.capacity.capacity_rps:.1f} rps; {self.eta.text()}")  # fmt: skip
                await self.lifetime(shape, v, ref)
                self.eta.done(f"{shape.index}/{v}")


def shape_order(variants: Sequence[str], index: int) -> list[str]:
    """The order in which shape ``index`` (1-based, of the draw) runs ``variants``: as given on odd
    shapes, reversed on even ones. At thousands of requests/s a lifetime that runs second in its shape
    measures slower (docs/decisions.md, 2026-12-07); alternating puts each side of a ``--code`` pair
    first on half the shapes, so the order does not pick the winner. By the draw's number, so
    ``--only`` keeps it."""
    return list(variants) if index % 2 else list(reversed(variants))


# ------------------------------------------------------------------ output


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _cell_text(cell: dict[str, Any]) -> str:
    v = cell["value"]
    if cell["target"] == "false_shed":
        text = "-" if v is None else f"{100 * v:.2g}%"
    elif cell["target"] == "p99":
        text = "-" if v is None else f"{v:.3g}x"
    else:
        text = _fmt(v, ".2f")
    return text if cell["pass"] else f"**{text}**"


def summary_table(summary: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| variant | target | passed | fraction | 95% interval |", "|---|---|---|---|---|"]
    for s in summary:
        lo, hi = s["interval"]
        lines.append(f"| {s['variant']} | {s['target']} | {s['passed']} of {s['cells']} | {s['fraction']:.2f} | {lo:.2f}-{hi:.2f} |")
    return lines


def markdown(out: dict[str, Any]) -> str:
    """The summary, the worst cells, the shapes with their references and every cell, as Markdown."""
    m = out["machine"]
    shapes = {s["index"]: s for s in out["shapes"]}
    lines = [f"`{out['command']}`, started {out['started']}, {out['wall_s'] / 60:.1f} min; {m['cpus']} CPUs ({m['cpu_model']}), "
             f"load average {m['loadavg'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after. Seed {out['seed']}, "
             f"{len(out['shapes'])} shapes. Code: commit {str(out['code']['commit'])[:10]}"
             + (f" with changes to {', '.join(out['code']['changed'])}" if out["code"]["changed"] else "") + ".",
             "", "Targets: " + "; ".join(t["rule"] for t in out["targets"]) + ".",
             "Interval: Wilson 95%, cells taken as independent (they are not quite: one shape's cells share a service).",
             "", *summary_table(out["summary"])]  # fmt: skip
    lines += ["", "Worst flowctl cells (value against limit):", "",
              "| shape | variant | load | target | value | limit | requests | shed_by_reason |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for x in out["worst"]:
        lines.append(f"| {x['shape']}: {shapes[x['shape']]['label']} | {x['variant']} | {_label(x['load'])} | {x['target']} | "
                     f"{_fmt(x['value'])} | {x['limit']:g} | {x['requests']} | {x['shed_by_reason'] or ''} |")  # fmt: skip
    lines += ["", "| shape | capacity rps | saturation /s | unloaded p50 / p99 ms | in-process bound at 4x |", "|---|---|---|---|---|"]
    for s in out["shapes"]:
        r = s["reference"]
        lines.append(f"| {s['index']}: {s['label']} | {r['capacity_rps']:.1f} | {r['saturation_rps']:.0f} | "
                     f"{r['unloaded_p50_ms']:.1f} / {r['unloaded_p99_ms']:.1f} | {_fmt(s.get('in_process_bound_4x'), '.2f')} |")  # fmt: skip
    variants = out["variants"]
    lines += ["", "Every cell (false_shed: shed ratio; overload: p99 over unloaded, goodput ratio; bold: fails):", "",
              "| shape | load | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]  # fmt: skip
    by: dict[tuple[int, float, str], list[dict[str, Any]]] = {}
    for x in out["cells"]:
        by.setdefault((x["shape"], x["load"], x["variant"]), []).append(x)
    for s in out["shapes"]:
        for load in sorted({x["load"] for x in out["cells"] if x["shape"] == s["index"]}):
            row = [" / ".join(_cell_text(x) for x in by.get((s["index"], load, v), [])) for v in variants]
            lines.append(f"| {s['index']} | {_label(load)} | " + " | ".join(row) + " |")
    lagged = sorted({(x["shape"], x["variant"], x["load"], x["send_lag_p99_ms"]) for x in out["cells"] if x["harness_lagged"]})
    if lagged:
        lines += ["", f"The load generator sent late (send lag p99 > {LAGGED_MS:g} ms, counted in the latencies) in: "
                  + ", ".join(f"shape {s} {v} {_label(load)} ({lag:.0f} ms)" for s, v, load, lag in lagged) + "."]  # fmt: skip
    few = sorted({(x["shape"], x["variant"], x["load"], x["requests"] - x["shed"]) for x in out["cells"]
                  if x["target"] == "p99" and x["value"] is not None and x["requests"] - x["shed"] < P99_FEW_ADMITTED})
    if few:
        lines += ["", f"A p99 over fewer than {P99_FEW_ADMITTED} admitted requests is the slowest request's (one slow "
                  "request decides the cell) in: " + ", ".join(f"shape {s} {v} {_label(load)} ({n} admitted)"
                                                                 for s, v, load, n in few) + "."]  # fmt: skip
    errors = sorted({(x["shape"], x["variant"], x["error"]) for x in out["cells"] if x["error"]})
    if errors:
        lines += ["", "Did not run (counted as failed): " + "; ".join(f"shape {s} {v}: {e}" for s, v, e in errors) + "."]
    return "\n".join(lines) + "\n"


def code_version(directory: str = c.REPO) -> dict[str, Any]:
    """The commit measured (of the checkout ``directory``), and the files of the product or the
    harness changed on top of it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    status = git("status", "--porcelain", "--", "flowctl", "sidecar", "bench", ":!bench/results").splitlines()
    return {"commit": git("rev-parse", "HEAD").strip() or None, "changed": [line[3:] for line in status if len(line) > 3]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench matrix", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--shapes", type=int, help=f"how many shapes (default {DEFAULT.shapes}; --quick: {QUICK.shapes})")
    p.add_argument("--seed", type=int, default=1, help="draws the shapes and the arrivals")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: one shape, 0.9x and 4x, short cells (fewer than 400 requests each)")  # fmt: skip
    p.add_argument("--json", dest="json_out", help="default: bench/results/matrix-seed<S>[-quick].json; the Markdown beside it")
    p.add_argument("--variants", help="comma list of: " + ",".join(VARIANTS) + " (default: all); VARIANT@LABEL runs "
                   "the code of the checkout --code gives LABEL")  # fmt: skip
    p.add_argument("--code", action="append", default=[], metavar="LABEL=DIR",
                   help="a checkout (e.g. a git worktree of a candidate branch) whose flowctl, sidecar and bench.upstream "
                   "the variants named VARIANT@LABEL run, beside this checkout's in the same run; repeatable")  # fmt: skip
    p.add_argument("--only", help="comma list of shape numbers (1-based) of the seed's draw to measure, e.g. 6,8: the same "
                   "shapes and arrivals as the full run, for screening a change on the cells that decide it")  # fmt: skip
    p.add_argument("--loads", help="comma list of multiples of capacity (default: " + ",".join(f"{x:g}" for x in LOADS) + ")")
    p.add_argument("--min-rate", type=float, help=f"shapes keep quota x 1000 / work_ms >= this (default {DEFAULT.min_rate_rps:g}; "
                   "0: the whole range)")  # fmt: skip
    return p


def parse_only(text: str | None, shapes: int) -> tuple[int, ...]:
    """``--only``'s shape numbers (empty: every shape); each must be one of the draw's 1..``shapes``."""
    if not text:
        return ()
    try:
        only = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise SystemExit(f"--only: shape numbers, e.g. 6,8; got {text!r}") from None
    if not only or min(only) < 1 or max(only) > shapes:
        raise SystemExit(f"--only: shape numbers from 1 to {shapes}; got {text!r}")
    return only


def parse_codes(specs: Sequence[str]) -> dict[str, str]:
    """``--code LABEL=DIR`` options -> {label: absolute directory}; each a checkout with ``flowctl/``
    and ``bench/``."""
    codes: dict[str, str] = {}
    for spec in specs:
        label, sep, directory = spec.partition("=")
        if not sep or not label or not directory or not all(ch.isalnum() or ch in "-_." for ch in label):
            raise SystemExit(f"--code: LABEL=DIR with a label of letters, digits, '-', '_' or '.'; got {spec!r}")
        directory = os.path.abspath(directory)
        if not all(os.path.isdir(os.path.join(directory, d)) for d in ("flowctl", "bench", "sidecar")):
            raise SystemExit(f"--code {label}: {directory} is not a flowctl checkout (no flowctl/, sidecar/ or bench/)")
        if label in codes:
            raise SystemExit(f"--code: label {label!r} given twice")
        codes[label] = directory
    return codes


def parse_variants(text: str | None, codes: dict[str, str]) -> list[str]:
    """``--variants`` -> the variant names, each a known variant, or VARIANT@LABEL with a ``--code`` LABEL."""
    variants = [v.strip() for v in text.split(",") if v.strip()] if text else list(VARIANTS)
    for v in variants:
        base, label = split_variant(v)
        if base not in VARIANTS:
            raise SystemExit(f"unknown variant {base!r}; choose from {', '.join(VARIANTS)}")
        if label is not None and label not in codes:
            raise SystemExit(f"variant {v!r}: no --code {label}=DIR")
    if len(set(variants)) != len(variants):
        raise SystemExit("--variants: a variant given twice")
    return variants


def _plan_from(a: argparse.Namespace) -> Plan:
    plan = QUICK if a.quick else DEFAULT
    if a.shapes is not None:
        if a.shapes < 1:
            raise SystemExit("--shapes must be at least 1")
        plan = replace(plan, shapes=a.shapes)
    if a.loads:
        loads = tuple(sorted({float(x) for x in a.loads.split(",") if x.strip()}))
        if not loads or min(loads) <= 0:
            raise SystemExit("--loads: positive multiples of capacity")
        plan = replace(plan, loads=loads)
    if a.min_rate is not None:
        plan = replace(plan, min_rate_rps=a.min_rate)
    return plan


async def run(a: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    plan = _plan_from(a)
    codes = parse_codes(a.code)
    variants = parse_variants(a.variants, codes)
    only = parse_only(a.only, plan.shapes)
    c.pin_self()
    c.check_environment()
    machine = c.machine_info()
    started = time.time()
    from bench.upstream import calibrate_iters_per_ms

    mx = Matrix(plan, a.seed, variants, calibrate_iters_per_ms(), only, codes)
    mx.log(f"matrix{' --quick' if a.quick else ''}: seed {a.seed}, {len(mx.shapes)} shapes, variants {variants}, loads "
           f"{', '.join(_label(x) for x in plan.loads)}; load average {machine['loadavg']}; first estimate {mx.eta.text()}")  # fmt: skip
    for s in mx.shapes:
        mx.log(f"  shape {s.index}: {s.label}")
    await mx.run()
    wall_s = time.monotonic() - mx.eta.t0
    machine["loadavg_after"] = list(os.getloadavg())
    iters_end = calibrate_iters_per_ms()
    shapes = []
    for s in mx.shapes:
        ref = mx.refs[s.index]
        shapes.append({**asdict(s), "label": s.label, "reference": ref.as_dict(), "reference_wall_s": mx.ref_wall_s[s.index],
                       "in_process_bound_4x": ref.in_process_bound(4.0 * ref.capacity.capacity_rps)})  # fmt: skip
    return {
        "scenario": "matrix",
        "seed": a.seed,
        "command": "python -m bench matrix" + "".join(" " + shlex.quote(x) for x in argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": wall_s,
        "quick": bool(a.quick),
        "machine": machine,
        "code": code_version(),
        "codes": {label: {"dir": d, **code_version(d)} for label, d in codes.items()},
        "iters_per_ms": mx.iters_per_ms,
        "cpu_speed_end_over_start": iters_end / mx.iters_per_ms,
        "plan": asdict(plan),
        "targets": [asdict(t) for t in TARGETS],
        "variants": variants,
        "only": list(only),
        "shapes": shapes,
        "cells": mx.cells,
        "summary": summarize(mx.cells, variants),
        "worst": worst(mx.cells),
        "lifetimes": mx.lifetimes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(args)
    try:
        out = asyncio.run(run(a, args))
    except c.EnvironmentMissing as exc:
        print(f"bench matrix: {exc}", file=sys.stderr)
        return 2
    path = a.json_out or os.path.join(c.RESULTS_DIR, f"matrix-seed{a.seed}{'-quick' if a.quick else ''}.json")
    c.write_json(out, path)
    md = os.path.splitext(path)[0] + ".md"
    text = markdown(out)
    with open(md, "w") as f:
        f.write(text)
    c.log(f"wrote {md}")
    print("\n".join(summary_table(out["summary"])))
    print(f"\n{len(out['shapes'])} shapes, {len(out['cells'])} cells, {out['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
