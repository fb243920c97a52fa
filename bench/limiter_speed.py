"""``python -m bench limiter [--json OUT]``: the cost of one ``acquire()`` + release.

The default ``Limiter`` (Bbr) on the real container CPU signal (a
``flowctl.cpu`` Sampler, sampled twice so it holds a real reading, not
started: its reading is *held* for the measurement). Three cases:

- ``acquire_release_ns_median``: admitting, signal held below the threshold,
  ``--held`` tokens in flight so every acquire runs the full check (in-flight
  is above the learned limit, the CPU is read and found cool);
- ``acquire_release_ns_median_shedding``: the same limiter with the signal
  held above the threshold: every acquire is shed (Reason, Retry-After,
  counters, cool-off), and the rejection's release is a no-op;
- ``acquire_release_ns_median_idle``: admitting with nothing else in flight;
- ``acquire_release_ns_median_loop_lag_trigger``: the first case with an
  event-loop lag monitor attached as a bypass trigger (as flowctl.aiohttp does).
- ``admit_success_ns_median``: the first case through the slot API
  (``admit(slot)`` + ``success(slot, start)``, no Token: what
  ``flowctl.aiohttp``'s guard calls per request).

Time is taken over batches of ``--batch`` pairs with ``perf_counter_ns``; the
figure is the median over all batches of the per-pair mean (robust to other
processes stealing the CPU for a moment). The empty-loop cost per pair is
reported separately and *not* subtracted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from flowctl.limiter import Limiter, Rejection, Token
from flowctl.signal import CpuSignal, StaticSignal

__all__ = ["main", "measure"]


def _container_signal() -> tuple[CpuSignal, dict[str, Any]]:
    """The real container Sampler with a real reading (or a static stand-in, said so)."""
    try:
        from flowctl.cpu import make_signal

        sampler = make_signal("container")
        sampler.sample()
        end = time.monotonic() + 0.2
        while time.monotonic() < end:  # a little work so the interval has usage
            sum(range(1000))
        reading = sampler.sample()
        return sampler, {"kind": type(sampler).__name__, "name": sampler.name, "real_reading": dataclasses.asdict(reading)}
    except Exception as exc:  # pragma: no cover - depends on the machine
        sig = StaticSignal("container", utilization=0.5, utilization_smoothed=0.5)
        return sig, {"kind": "StaticSignal", "name": "container", "fallback_because": repr(exc)}


def _hold(signal: CpuSignal, utilization: float) -> None:
    """Hold the signal's reading at ``utilization`` (fast and smoothed) for the measurement."""
    held = dataclasses.replace(signal.reading, utilization=utilization, utilization_smoothed=utilization)
    signal.reading = held  # type: ignore[misc]  # Sampler and StaticSignal keep it as a plain attribute


def measure(pair: Callable[[], None], *, batches: int, batch: int) -> tuple[float, list[float]]:
    """Median over batches of the mean ns per call of ``pair``; and all batch means."""
    clock = time.perf_counter_ns
    means: list[float] = []
    rng = range(batch)
    for _ in range(batches):
        t0 = clock()
        for _ in rng:
            pair()
        means.append((clock() - t0) / batch)
    return statistics.median(means), means


def _empty() -> None:
    return None


def run(*, batches: int, batch: int, held: int, warmup_s: float) -> dict[str, Any]:
    signal, signal_info = _container_signal()
    real = signal.reading
    limiter = Limiter(signal)
    acquire = limiter.acquire

    def pair() -> None:
        acquire().success()

    # Cool: learn a limit from real traffic first (Bbr needs completed buckets).
    _hold(signal, 0.5)
    end = time.monotonic() + warmup_s
    while time.monotonic() < end:
        pair()
    idle_ns, _ = measure(pair, batches=batches, batch=batch)

    tokens = [acquire() for _ in range(held)]
    assert all(isinstance(t, Token) for t in tokens)
    snap = limiter.snapshot()
    admit_ns, admit_batches = measure(pair, batches=batches, batch=batch)
    assert limiter.inflight == held

    slot, admit, success = limiter.slot(), limiter.admit, limiter.success

    def slot_pair() -> None:
        success(slot, admit(slot))  # type: ignore[arg-type]  # admitting: a float start

    slot_ns, _ = measure(slot_pair, batches=batches, batch=batch)
    assert limiter.inflight == held

    # The aiohttp set-up: an event-loop lag monitor as a bypass trigger, polled per acquire
    # (armed, not firing: the loop is never late here).
    from flowctl.looplag import LoopLagMonitor

    lag = LoopLagMonitor(threshold_s=0.05)
    lag.arm(time.monotonic() + 3600.0)  # a probe pending, never late: check computes the lag and passes
    limiter.add_trigger(lag)
    lag_ns, _ = measure(pair, batches=batches, batch=batch)
    limiter.remove_trigger(lag)

    _hold(signal, 0.95)
    probe = acquire()
    assert isinstance(probe, Rejection), f"expected shedding, got {probe!r}"
    shed_ns, shed_batches = measure(pair, batches=batches, batch=batch)
    shed_snap = limiter.snapshot()

    for t in tokens:
        t.success()
    signal.reading = real  # type: ignore[misc]
    loop_ns, _ = measure(_empty, batches=batches, batch=batch)

    return {
        "acquire_release_ns_median": round(admit_ns, 1),
        "acquire_release_ns_median_shedding": round(shed_ns, 1),
        "acquire_release_ns_median_idle": round(idle_ns, 1),
        "acquire_release_ns_median_loop_lag_trigger": round(lag_ns, 1),
        "admit_success_ns_median": round(slot_ns, 1),
        "acquire_release_ns_p90_batch": round(statistics.quantiles(admit_batches, n=10)[-1], 1),
        "acquire_release_ns_p90_batch_shedding": round(statistics.quantiles(shed_batches, n=10)[-1], 1),
        "empty_loop_ns_per_call": round(loop_ns, 1),
        "goal_ns": 2000,
        "held_inflight": held,
        "max_inflight_learned": snap.max_inflight,
        "min_rt_s_learned": snap.min_rt_s,
        "algorithm": snap.algorithm,
        "shed_total": sum(shed_snap.shed_by_reason.values()),
        "signal": signal_info,
        "batches": batches,
        "batch": batch,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": list(os.getloadavg()),
        "note": "medians of per-batch means on a shared machine; other processes may have been running",
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench limiter", description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    p.add_argument("--batches", type=int, default=2000, help="timed batches per case (default 2000)")
    p.add_argument("--batch", type=int, default=200, help="acquire+release pairs per batch (default 200)")
    p.add_argument("--held", type=int, default=8, help="tokens kept in flight while measuring (default 8)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="seconds of traffic before measuring (default 1)")
    args = p.parse_args(argv)
    res = run(batches=args.batches, batch=args.batch, held=args.held, warmup_s=args.warmup_s)
    for key in (
        "acquire_release_ns_median",
        "acquire_release_ns_median_shedding",
        "acquire_release_ns_median_idle",
        "acquire_release_ns_median_loop_lag_trigger",
        "admit_success_ns_median",
        "empty_loop_ns_per_call",
    ):
        print(f"{key:40s} {res[key]:10.1f} ns")
    print(f"signal: {res['signal'].get('kind')} {res['signal'].get('name')}; loadavg {res['loadavg_at_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)
            f.write("\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


