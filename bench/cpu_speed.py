"""Speed of the CPU readers: one container sample, and the CPU cost of sampling every 100 ms.

Run: ``.venv/bin/python -m bench.cpu_speed`` (as root it also measures a
freshly created leaf cgroup with a 0.5-CPU quota, removed afterwards).
Prints medians; ``--json FILE`` also writes them. Targets (issue 2): one
sample of all container signals <= 50 µs median; sampling at 100 ms <= 0.5%
of one core. Figures swing with other load on the machine: compare medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from flowctl.cpu import make_signal
from flowctl.cpu.sampler import Sampler

CG = "/sys/fs/cgroup"


def per_call_us(fn: object, n: int) -> list[float]:
    """Durations in µs of ``n`` calls of ``fn()``, each timed on its own."""
    assert callable(fn)
    out: list[float] = []
    pc = time.perf_counter_ns
    for _ in range(n):
        t0 = pc()
        fn()
        out.append((pc() - t0) / 1000)
    return out


def summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median": statistics.median(xs), "p90": xs[int(0.9 * (len(xs) - 1))], "p99": xs[int(0.99 * (len(xs) - 1))]}


def bench_sample(s: Sampler, n: int) -> dict[str, object]:
    s.sample()
    s.sample()
    sample = summary(per_call_us(s.sample, n))
    limits = summary(per_call_us(s.refresh_limits, max(50, n // 100)))
    r = s.reading
    return {"sample_us": sample, "read_limits_us": limits, "limit_cores": r.limit_cores,
            "signals": [k for k in ("utilization", "usage_cores", "throttled_ratio", "pressure_ratio")
                        if getattr(r, k) is not None],
            "limit_source": s.limits.source if s.limits else None}


async def _idle(duration_s: float) -> None:
    await asyncio.sleep(duration_s)


async def _sampling(s: Sampler, duration_s: float) -> None:
    async with s:
        await asyncio.sleep(duration_s)


def cpu_cost(make: object, duration_s: float, rounds: int) -> dict[str, object]:
    """Process CPU time per wall second with a 100 ms sampler running vs an idle loop, alternating."""
    assert callable(make)
    with_s: list[float] = []
    idle: list[float] = []
    samples: list[int] = []
    for _ in range(rounds):
        for kind in ("idle", "sampler"):
            c0, w0 = time.process_time(), time.monotonic()
            if kind == "idle":
                asyncio.run(_idle(duration_s))
            else:
                s = make()
                asyncio.run(_sampling(s, duration_s))
                samples.append(s.samples_total)
            ratio = (time.process_time() - c0) / (time.monotonic() - w0)
            (idle if kind == "idle" else with_s).append(ratio)
    return {
        "duration_s": duration_s,
        "rounds": rounds,
        "samples_per_round": samples,
        "core_pct_with_sampler": [round(100 * x, 4) for x in with_s],
        "core_pct_idle_loop": [round(100 * x, 4) for x in idle],
        "core_pct_median": 100 * statistics.median(with_s),
        "core_pct_median_minus_idle": 100 * (statistics.median(with_s) - statistics.median(idle)),
    }


@contextmanager
def leaf_group() -> Iterator[str | None]:
    """A leaf group in cpu+cpuacct with quota 0.5 holding nothing (root only), removed after."""
    if os.geteuid() != 0 or not os.access(f"{CG}/cpu", os.W_OK):
        yield None
        return
    name = f"flowctl-bench-{uuid.uuid4().hex[:8]}"
    made = []
    try:
        for c in ("cpu", "cpuacct"):
            os.mkdir(f"{CG}/{c}/{name}")
            made.append(f"{CG}/{c}/{name}")
        with open(f"{CG}/cpu/{name}/cpu.cfs_quota_us", "w") as f:
            f.write("50000")
        yield f"{CG}/cpu/{name}"
    finally:
        for d in reversed(made):
            os.rmdir(d)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_speed", description=__doc__)
    p.add_argument("--samples", type=int, default=20000, help="timed samples per view (default 20000)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per CPU-cost round (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="alternating idle/sampler rounds (default 3)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)

    load = open("/proc/loadavg").read().split()[:3]
    res: dict[str, object] = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "loadavg_before": load}
    views: dict[str, object] = {}
    s = make_signal("container")
    views["container (this process)"] = bench_sample(s, args.samples)
    s.close()
    with leaf_group() as path:
        if path is not None:
            s = make_signal("container", cgroup_path=path)
            views["container (leaf group, quota 0.5)"] = bench_sample(s, args.samples)
            s.close()
            res["cpu_cost"] = cpu_cost(lambda: make_signal("container", cgroup_path=path, interval_s=0.1),
                                       args.duration, args.rounds)
        else:
            res["cpu_cost"] = cpu_cost(lambda: make_signal("container", interval_s=0.1), args.duration, args.rounds)
    s = make_signal("host")
    views["host"] = bench_sample(s, args.samples)
    s.close()
    res["views"] = views
    res["loadavg_after"] = open("/proc/loadavg").read().split()[:3]

    print(f"flowctl CPU reader speed (Python {res['python']}, {res['cpus']} CPUs, loadavg before {' '.join(load)}, "
          f"after {' '.join(res['loadavg_after'])})")  # type: ignore[arg-type]
    for name, v in views.items():
        assert isinstance(v, dict)
        sm, lm = v["sample_us"], v["read_limits_us"]
        print(f"  {name:36s} one sample: median {sm['median']:6.1f} µs (p90 {sm['p90']:.1f}, p99 {sm['p99']:.1f}); "
              f"limits re-read: median {lm['median']:.0f} µs; signals: {', '.join(v['signals'])}")
    cc = res["cpu_cost"]
    assert isinstance(cc, dict)
    print(f"  sampling every 100 ms: {cc['core_pct_median']:.3f}% of one core median "
          f"({cc['core_pct_median_minus_idle']:.3f}% above an idle asyncio loop), "
          f"{cc['rounds']} rounds of {cc['duration_s']:.0f} s: {cc['core_pct_with_sampler']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
