"""What multiprocess mode costs a worker: one ``MultiprocessPublisher.publish()`` (done once a second).

One command (it sets ``PROMETHEUS_MULTIPROC_DIR`` to a temporary directory and re-runs itself, because
prometheus_client reads the variable at import)::

    .venv/bin/python -m bench.multiprocess_publish [--resources 10] [--calls 200]

An app with ``--resources`` routes under ``flowctl.aiohttp.setup(app)`` in multiprocess mode, a
real Limiter on a static CPU signal; between two calls every resource gets one admitted request
(so every counter and histogram moves). Prints the median and p90 of ``publish()`` in microseconds.
The per-request path is the same as in one process: publishing happens off it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence


def measure(resources: int, calls: int) -> tuple[float, float]:
    from aiohttp import web

    import flowctl.aiohttp as fa
    from flowctl.limiter import Limiter
    from flowctl.signal import StaticSignal

    async def ok(request: web.Request) -> web.Response:
        return web.Response()

    limiter = Limiter(StaticSignal("container", utilization=0.3, utilization_smoothed=0.3, limit_cores=0.5))
    app = web.Application()
    names = [f"r{i}" for i in range(resources)]
    for name in names:
        app.router.add_get("/" + name, ok, name=name)
    state = fa.setup(app, limiter=limiter, loop_lag=False, multiprocess=True)
    assert state.publisher is not None
    slots = [(limiter.slot(n, None), state.durations.child(n)) for n in names]

    def traffic() -> None:
        for slot, hist in slots:
            start = limiter.admit(slot)
            assert isinstance(start, float)  # a cool static signal: always admitted
            hist.observe(limiter.success(slot, start))

    traffic()
    state.publisher.publish()
    took: list[float] = []
    for _ in range(calls):
        traffic()
        t0 = time.perf_counter()
        state.publisher.publish()
        took.append(time.perf_counter() - t0)
    took.sort()
    return statistics.median(took) * 1e6, took[int(0.9 * (len(took) - 1))] * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.multiprocess_publish", description=__doc__.split("\n\n")[0])
    p.add_argument("--resources", type=int, default=10)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args(argv)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        with tempfile.TemporaryDirectory() as d:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": d}
            cmd = [sys.executable, "-m", "bench.multiprocess_publish", "--resources", str(args.resources), "--calls", str(args.calls)]
            return subprocess.run(cmd, env=env, check=False).returncode
    median_us, p90_us = measure(args.resources, args.calls)
    load = os.getloadavg()[0]
    print(f"publish() with {args.resources} resources: median {median_us:.0f} us, p90 {p90_us:.0f} us "
          f"({args.calls} calls; load average {load:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
