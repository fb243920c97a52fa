"""Soak: the sidecar and an in-process app held at 2x overload; do memory, fds and in-flight stay flat?

``python -m bench soak --seconds N --json OUT [--plot PNG]`` starts two targets side by side:

- ``sidecar``: ``python -m sidecar`` (BBR on the upstream's container CPU) in front of a
  ``bench.upstream`` with no limiter;
- ``inprocess``: a ``bench.upstream`` with flowctl's aiohttp integration (``bbr-container``).

Each gets an open-loop load (``bench.loadgen``) at ``overload`` (default 2) x its capacity,
measured first with both running: its 200s per second under 8 closed-loop clients for
5 s (an open-loop probe past capacity would measure a collapse instead), so "2x" holds on
a machine that others share (``--capacity`` fixes it instead). Every ``--every`` seconds it records, per target, the RSS and open fds of the limiting
process (the sidecar; the app) and the in-flight count from its ``/metrics``
(``flowctl_inflight``). After the load stops it waits up to ``--settle`` s for in-flight to
reach 0.

JSON: ``{"targets": {"sidecar": {...}, "inprocess": {...}}, ...}`` with, per target,
``rss_growth_ratio`` (mean RSS over the last window / over the window right after warm-up;
the window is a minute, or less in runs shorter than 2 minutes + warm-up), ``fd_growth``
(the same windows' fd means, difference), ``inflight_after``, ``crashed`` (a process exited
during the run), the load's own counts, and the time series.

No cgroups are created: the numbers are about growth over time, not throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.loadgen import LoadSpec, run_load_process_async
from bench.scenarios.common import REPO, calibrate_work_iters, free_port, machine_info, wait_http

__all__ = ["growth", "main", "run_soak"]


@dataclass
class _Target:
    name: str
    url: str  # where the load goes
    metrics_url: str  # /metrics with flowctl_inflight
    pid: int  # the process whose RSS and fds are recorded
    procs: list[asyncio.subprocess.Process]
    series: list[dict[str, float | None]] = field(default_factory=list)
    crashed: bool = False


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _inflight(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("flowctl_inflight{") or line.startswith("flowctl_inflight "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _spawn(*cmd: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdin=asyncio.subprocess.DEVNULL)


async def _stop(procs: Sequence[asyncio.subprocess.Process]) -> None:
    for p in reversed(procs):
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await p.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()


def _upstream_cmd(port: int, variant: str, work_iters: int) -> list[str]:
    return [sys.executable, "-m", "bench.upstream", "--port", str(port), "--variant", variant,
            "--work-iters", str(work_iters), "--io-ms", "0", "--backlog", "1024"]  # fmt: skip


async def _measure_capacity(url: str, seconds: float = 5.0, clients: int = 8) -> float:
    """Completions per second of ``url`` under ``clients`` closed-loop clients (each sends when answered)."""
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with s.get(url) as r:
                    await r.read()
                    done += r.status == 200

        t0 = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done / (time.monotonic() - t0)


@contextlib.asynccontextmanager
async def _targets(work_ms: float) -> AsyncIterator[list[_Target]]:
    started: list[asyncio.subprocess.Process] = []
    iters = calibrate_work_iters(work_ms)  # once, here: both apps burn the same CPU per request
    try:
        up_port, sc_port, admin_port, app_port = free_port(), free_port(), free_port(), free_port()
        up = await _spawn(*_upstream_cmd(up_port, "none", iters))
        started.append(up)
        app = await _spawn(*_upstream_cmd(app_port, "bbr-container", iters))
        started.append(app)
        await wait_http(f"http://127.0.0.1:{up_port}/healthz", proc=up)
        sc = await _spawn(sys.executable, "-m", "sidecar", "--listen", f"127.0.0.1:{sc_port}",
                          "--upstream", f"http://127.0.0.1:{up_port}", "--admin", f"127.0.0.1:{admin_port}",
                          "--watch", f"pid:{up.pid}", "--view", "container", "--log-level", "warning")  # fmt: skip
        started.append(sc)
        await wait_http(f"http://127.0.0.1:{admin_port}/healthz", proc=sc)
        await wait_http(f"http://127.0.0.1:{app_port}/healthz", proc=app)
        yield [
            _Target("sidecar", f"http://127.0.0.1:{sc_port}/cpu-yielding", f"http://127.0.0.1:{admin_port}/metrics",
                    sc.pid, [up, sc]),
            _Target("inprocess", f"http://127.0.0.1:{app_port}/cpu-yielding", f"http://127.0.0.1:{app_port}/metrics",
                    app.pid, [app]),
        ]  # fmt: skip
    finally:
        await _stop(started)


async def _record(t: _Target, session: aiohttp.ClientSession, t0: float) -> dict[str, float | None]:
    if any(p.returncode is not None for p in t.procs):
        t.crashed = True
    inflight: float | None = None
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        async with session.get(t.metrics_url, timeout=aiohttp.ClientTimeout(total=5)) as r:
            inflight = _inflight(await r.text())
    rss = _rss_bytes(t.pid)
    row = {"t_s": round(time.monotonic() - t0, 2), "rss_bytes": rss, "fds": _fds(t.pid), "inflight": inflight}
    t.series.append(row)
    return row


def growth(series: Sequence[dict[str, float | None]], seconds: float, warmup_s: float) -> dict[str, Any]:
    """RSS ratio and fd difference: the last window's means vs the window right after warm-up."""
    window_s = max(1.0, min(60.0, (seconds - warmup_s) / 2))
    base = [r for r in series if warmup_s <= (r["t_s"] or 0) < warmup_s + window_s]
    last = [r for r in series if seconds - window_s <= (r["t_s"] or 0) <= seconds]

    def mean(rows: list[dict[str, float | None]], key: str) -> float | None:
        vals = [float(v) for r in rows if (v := r[key]) is not None]
        return statistics.fmean(vals) if vals else None

    rss0, rss1, fd0, fd1 = mean(base, "rss_bytes"), mean(last, "rss_bytes"), mean(base, "fds"), mean(last, "fds")
    return {
        "window_s": window_s,
        "warmup_s": warmup_s,
        "rss_base_bytes": rss0,
        "rss_last_bytes": rss1,
        "rss_growth_ratio": (rss1 / rss0) if rss0 and rss1 else None,
        "fd_base": fd0,
        "fd_last": fd1,
        "fd_growth": (fd1 - fd0) if fd0 is not None and fd1 is not None else None,
    }


async def run_soak(seconds: float, *, every_s: float = 5.0, work_ms: float = 2.0, overload: float = 2.0,
                   settle_s: float = 10.0, warmup_s: float | None = None, capacity_rps: float = 0.0) -> dict[str, Any]:
    """Run both targets under load for ``seconds`` and return the result (see the module docstring)."""
    warm = warmup_s if warmup_s is not None else min(60.0, seconds / 6)
    out: dict[str, Any] = {"machine": machine_info(), "seconds": seconds, "work_ms": work_ms, "overload": overload,
                           "every_s": every_s, "targets": {}}  # fmt: skip
    async with _targets(work_ms) as targets, aiohttp.ClientSession() as session:
        if capacity_rps:
            capacities = [capacity_rps] * len(targets)
        else:  # both at once, as they will run: each one's share of the machine
            capacities = list(await asyncio.gather(*(_measure_capacity(t.url) for t in targets)))
        rates = [overload * max(c, 1.0) for c in capacities]
        out.update(capacity_measured=not capacity_rps, capacity_rps={t.name: c for t, c in zip(targets, capacities)},
                   rate_rps={t.name: r for t, r in zip(targets, rates)})  # fmt: skip
        t0 = time.monotonic()
        loads = [
            asyncio.create_task(run_load_process_async(LoadSpec(url=t.url, rate_rps=rate, duration_s=seconds,
                                                                timeout_s=2.0, seed=i + 1)))
            for i, (t, rate) in enumerate(zip(targets, rates))
        ]  # fmt: skip
        done = asyncio.gather(*loads)
        while not done.done():
            for t in targets:
                await _record(t, session, t0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), every_s)
        results = await done
        # After the load: give in-flight requests time to finish (timeouts, drains), then read it.
        for t in targets:
            deadline = time.monotonic() + settle_s
            row = await _record(t, session, t0)
            while row["inflight"] != 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                row = await _record(t, session, t0)
        for t, load in zip(targets, results):
            body = growth(t.series, seconds, warm)
            body.update(
                inflight_after=t.series[-1]["inflight"],
                crashed=t.crashed or any(p.returncode is not None for p in t.procs),
                load={k: load.get(k) for k in ("sent", "ok", "rejected", "other_status", "timeouts", "errors", "offered_rps",
                                               "ok_rps", "shed_ratio", "admitted_p50_ms", "admitted_p99_ms")},
                series=t.series,
            )
            out["targets"][t.name] = body
    out["machine"]["loadavg_after"] = list(os.getloadavg())
    return out


def plot(result: dict[str, Any], path: str) -> None:
    """RSS, open fds and in-flight over time, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for name, body in result["targets"].items():
        s = body["series"]
        ts = [r["t_s"] for r in s]
        axes[0].plot(ts, [(r["rss_bytes"] or 0) / 2**20 for r in s], label=name)
        axes[1].plot(ts, [r["fds"] or 0 for r in s], label=name)
        axes[2].plot(ts, [r["inflight"] if r["inflight"] is not None else float("nan") for r in s], label=name)
    for ax, label in zip(axes, ("RSS (MiB)", "open fds", "in-flight")):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    axes[2].set_xlabel("seconds")
    rates = ", ".join(f"{n} {r:.0f}" for n, r in result["rate_rps"].items())
    fig.suptitle(f"soak: {result['seconds']:g} s at {result['overload']:g}x capacity (req/s: {rates}), "
                 f"{result['machine']['date']}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--json", dest="json_out", default=None, help="write the result here")
    p.add_argument("--plot", default=None, help="PNG of RSS, fds and in-flight over time")
    p.add_argument("--every", type=float, default=5.0, help="recording interval, seconds")
    p.add_argument("--work-ms", type=float, default=2.0, help="CPU per request of the app's handler")
    p.add_argument("--overload", type=float, default=2.0, help="offered load / capacity")
    p.add_argument("--capacity", type=float, default=0.0, help="capacity in req/s (0: measure it first)")
    p.add_argument("--settle", type=float, default=10.0, help="after the load, wait this long for in-flight 0")
    a = p.parse_args(argv)
    result = asyncio.run(run_soak(a.seconds, every_s=a.every, work_ms=a.work_ms, overload=a.overload, settle_s=a.settle,
                                  capacity_rps=a.capacity))
    summary = {n: {k: b[k] for k in ("rss_growth_ratio", "fd_growth", "inflight_after", "crashed")}
               for n, b in result["targets"].items()}  # fmt: skip
    print(json.dumps(summary, indent=1))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(result, f, indent=1)
    if a.plot:
        plot(result, a.plot)
    return 0 if not any(b["crashed"] for b in result["targets"].values()) else 1
