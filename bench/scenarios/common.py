"""What every scenario shares: launching the upstream in a cgroup, the sidecar, CPU monitoring,
capacity search, and turning a load-generator result into a variant row.

Process layout on this 2-core machine: the upstream runs under
``flowctl.workload.launch(cpus=..., cpuset="0")`` (CPU 0, CFS quota); the
load generator, the sidecar and this orchestrator are pinned to CPU 1, so
the generator never steals the upstream's core, and the host view (all of
/proc/stat) still counts everything, as it would on a real node.

The monitor here reads the kernel files itself (host /proc/stat, the
upstream group's cpuacct.usage and quota): the benchmark does not trust the
code under test for the numbers it reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.loadgen import LoadSpec, Phase, TrafficClass, run_load_process_async
from bench.ports import free_port as free_port  # re-exported: scenarios call c.free_port()
from bench.ports import free_ports

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(REPO, "bench", "results")
UPSTREAM_CPU = 0
AUX_CPUS = (1,)
# The sidecar in front of an unprotected upstream: variant -> (--view, extra sidecar options). "bare"
# is the sidecar's BBR rule without its in-flight ceiling and period gate (CPU gate and limit only).
SIDECAR_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sidecar-bbr-container": ("container", ()),
    "sidecar-bbr-host": ("host", ()),
    "sidecar-bare-container": ("container", ("--queue-allowance", "off", "--period-gate", "false")),
    "sidecar-bare-host": ("host", ("--queue-allowance", "off", "--period-gate", "false")),
}
ALL_VARIANTS = ("none", "fixed", "bbr-host", "bbr-container", "bbr-lxcfs", "gradient", "flowctl", "kratos", "kratos-host",
                "kratos-lxcfs", *SIDECAR_VARIANTS)  # fmt: skip
LXCFS_VARIANTS = ("bbr-lxcfs", "kratos-lxcfs")
PRIORITY_HEADER = "X-Priority"


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


BENCH_NICE = -10
UPSTREAM_CPU_SHARES = 8192


def pin_self() -> None:
    """Pin the orchestrator to the auxiliary CPU(s), away from the upstream's core, at nice -10.

    Children (load generator, sidecar, nginx, the upstream) inherit the
    niceness: on a shared machine other jobs then disturb the measurement less.
    It changes no limit: the upstream's CFS quota stays the only cap on it.
    """
    cpus = {c for c in AUX_CPUS if c < (os.cpu_count() or 1)}
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) > BENCH_NICE:
            os.setpriority(os.PRIO_PROCESS, 0, BENCH_NICE)


def aux_cpus() -> list[int]:
    return [c for c in AUX_CPUS if c < (os.cpu_count() or 1)]


class EnvironmentMissing(RuntimeError):
    """Root, cgroups or a tool the scenario needs is missing (one clear message)."""


def lxcfs_installed() -> bool:
    return any(os.path.exists(os.path.join(d, "lxcfs")) for d in ("/usr/bin", "/usr/sbin", "/bin"))


def check_environment(*, lxcfs: bool = False, nginx: bool = False) -> None:
    """Raise EnvironmentMissing with one clear message when the benchmark cannot run here."""
    if os.geteuid() != 0:
        raise EnvironmentMissing("the benchmarks create cgroups: run them as root (e.g. `sudo make demo`)")
    for c in ("cpu", "cpuacct"):
        if not (os.path.isdir(f"/sys/fs/cgroup/{c}") or os.path.exists("/sys/fs/cgroup/cgroup.controllers")):
            raise EnvironmentMissing(f"no cgroup {c} controller under /sys/fs/cgroup: cannot limit the upstream's CPU")
    if lxcfs and not lxcfs_installed():
        raise EnvironmentMissing("the lxcfs variants need lxcfs (apt-get install -y lxcfs)")
    if nginx and not any(os.path.exists(os.path.join(d, "nginx")) for d in ("/usr/sbin", "/usr/bin")):
        raise EnvironmentMissing("the nginx peer needs nginx (apt-get install -y nginx)")


def machine_info() -> dict[str, Any]:
    """Date, CPU model, kernel, load average: printed with every result."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cgroup_cpu_version": cgroup_cpu_version(),
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
    }


def cgroup_cpu_version() -> int | None:
    """The cgroup version whose hierarchy has this process's cpu controller (1, 2, or None if unknown)."""
    from flowctl.cpu.mounts import discover

    return discover().version


def calibrate_work_iters(work_ms: float) -> int:
    """burn() iterations for ``work_ms`` of CPU, measured on thread CPU time here (once per run)."""
    from bench.upstream import calibrate_iters_per_ms

    return int(calibrate_iters_per_ms() * work_ms)


# ------------------------------------------------------------------ processes


@dataclass
class Running:
    """A started upstream (and optional proxy in front of it)."""

    base_url: str  # where the load goes (upstream, or the proxy in front)
    upstream_url: str
    state_url: str | None
    state_kind: str  # "upstream" | "sidecar" | "none"
    pid: int
    workload: Any
    cgroup_paths: dict[str, str] = field(default_factory=dict)


async def wait_http(url: str, timeout_s: float = 20.0, proc: Any = None) -> None:
    """Wait until ``url`` answers (any status)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc is not None and getattr(proc, "returncode", None) is not None:
                raise RuntimeError(f"process for {url} exited with {proc.returncode}")
            try:
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as r:
                    await r.read()
                    return
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                last = exc
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s: {last!r}")


@contextlib.asynccontextmanager
async def upstream(
    variant: str,
    *,
    cpus: float,
    work_iters: int = 0,
    work_cpu_ms: float | None = None,
    lxcfs: bool = False,
    extra_args: Sequence[str] = (),
    code_dir: str | None = None,
) -> AsyncIterator[Running]:
    """Run ``bench.upstream`` in ``variant`` under a CFS quota of ``cpus``, on CPU 0 when the quota
    fits in one CPU (above one, unpinned: a one-CPU cpuset would hide what the quota means); each
    request burns ``work_iters`` iterations, or ``work_cpu_ms`` of CPU time when given. ``code_dir``:
    another checkout whose code the upstream runs (a candidate beside main in one run); default ours."""
    from flowctl.workload import launch

    port = free_port()
    work = ["--work-cpu-ms", str(work_cpu_ms)] if work_cpu_ms is not None else ["--work-iters", str(work_iters)]
    cmd = [sys.executable, "-m", "bench.upstream", "--port", str(port), "--variant", variant, *work, *extra_args]
    name = f"flowctl-bench-{uuid.uuid4().hex[:8]}"
    cpuset = str(UPSTREAM_CPU) if (os.cpu_count() or 1) > 1 and cpus <= 1.0 else None
    # cwd: `python -m bench.upstream` finds the packages (bench, flowctl) from the working directory.
    cm = launch(cmd, cpus=cpus, cpuset=cpuset, lxcfs=lxcfs, name=name, cwd=code_dir or REPO)
    w = await cm.__aenter__()
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_http(url + "/healthz", proc=w)
        paths = dict(getattr(w, "cgroup_paths", {}) or {})
        # A high weight (not a limit) so other jobs on a shared machine cannot take the
        # upstream's 0.5 CPU away from it: the quota stays the only cap.
        shares_dir = _cg_dir(paths, "cpu")
        if shares_dir and os.path.exists(os.path.join(shares_dir, "cpu.shares")):
            with contextlib.suppress(OSError), open(os.path.join(shares_dir, "cpu.shares"), "w") as f:
                f.write(str(UPSTREAM_CPU_SHARES))
        elif shares_dir and os.path.exists(os.path.join(shares_dir, "cpu.weight")):  # v2: the kernel's shares->weight map
            with contextlib.suppress(OSError), open(os.path.join(shares_dir, "cpu.weight"), "w") as f:
                f.write(str(1 + (UPSTREAM_CPU_SHARES - 2) * 9999 // 262142))
        yield Running(url, url, url + "/_bench/state", "upstream", w.pid, w, paths)
    finally:
        await cm.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def sidecar(up: Running, *, view: str = "container", extra_args: Sequence[str] = (),
                  code_dir: str | None = None) -> AsyncIterator[Running]:  # fmt: skip
    """Run the flowctl sidecar (BBR on the upstream's ``view`` CPU) in front of ``up``, on the aux CPU;
    from the checkout ``code_dir`` when given (see ``upstream``). On uvloop (``--uvloop on``, the bench
    extra installs it), as the image ships it: on asyncio's loop the sidecar's CPU per request is higher,
    and at thousands of requests/s it and the load generator, which share the aux CPU, fall behind."""
    port, admin = free_ports(2)  # distinct: the sidecar refuses an admin port equal to its listen port
    cmd = [sys.executable, "-m", "sidecar", "--listen", f"127.0.0.1:{port}", "--upstream", up.upstream_url,
           "--admin", f"127.0.0.1:{admin}", "--watch", f"pid:{up.pid}", "--view", view,
           "--priority-header", PRIORITY_HEADER, "--log-level", "warning", "--uvloop", "on", *extra_args]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=code_dir or REPO, preexec_fn=_pin_child)
    try:
        await wait_http(f"http://127.0.0.1:{admin}/healthz", proc=proc)
        await wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        yield Running(f"http://127.0.0.1:{port}", up.upstream_url, f"http://127.0.0.1:{admin}/debug/limiter", "sidecar",
                      up.pid, up.workload, up.cgroup_paths)  # fmt: skip
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


def _pin_child() -> None:
    cpus = set(aux_cpus())
    if cpus:
        os.sched_setaffinity(0, cpus)


# ------------------------------------------------------------------ monitoring


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _host_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = f.readline().split()
    vals = [int(x) for x in parts[1:9]]  # user nice system idle iowait irq softirq steal
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def _cg_dir(paths: dict[str, str], controller: str) -> str | None:
    for k, v in paths.items():
        if controller in k.split(","):
            return v
    return paths.get(controller)


def group_usage_s(run: Running) -> float | None:
    """The CPU seconds the run's upstream group has used so far (cpuacct v1 or cpu.stat v2), None: unknown."""
    ns = Monitor(run)._cpu_sample().get("_usage_ns")
    return None if ns is None else ns / 1e9


class Monitor:
    """Samples host and container CPU (from kernel files) and the limiter state every ``interval_s``."""

    def __init__(self, run: Running, interval_s: float = 0.5) -> None:
        self.run = run
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def _cpu_sample(self) -> dict[str, Any]:
        busy, total = _host_times()
        out: dict[str, Any] = {"wall": time.time(), "mono": time.monotonic(), "_host": (busy, total)}
        cpu = _cg_dir(self.run.cgroup_paths, "cpu")
        acct = _cg_dir(self.run.cgroup_paths, "cpuacct")
        if cpu and os.path.exists(os.path.join(cpu, "cpu.max")):  # v2 group (also on a hybrid host)
            acct = None
            self._v2_sample(cpu, out)
            return out
        if acct:
            out["_usage_ns"] = _read_int(os.path.join(acct, "cpuacct.usage"))
        if cpu:
            q = _read_int(os.path.join(cpu, "cpu.cfs_quota_us"))
            p = _read_int(os.path.join(cpu, "cpu.cfs_period_us"))
            out["limit_cores"] = (q / p) if q and p and q > 0 else None
            with contextlib.suppress(OSError), open(os.path.join(cpu, "cpu.stat")) as f:
                st = dict(line.split() for line in f if line.strip())
                out["_periods"] = int(st.get("nr_periods", 0))
                out["_throttled"] = int(st.get("nr_throttled", 0))
        if not acct and not cpu and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            d = self.run.cgroup_paths.get("unified") or next(iter(self.run.cgroup_paths.values()), None)
            if d:
                self._v2_sample(d, out)
        return out

    @staticmethod
    def _v2_sample(d: str, out: dict[str, Any]) -> None:
        """usage, periods and throttling from cpu.stat, the limit from cpu.max, PSI some from cpu.pressure."""
        with contextlib.suppress(OSError), open(os.path.join(d, "cpu.stat")) as f:
            st = dict(line.split() for line in f if line.strip())
            out["_usage_ns"] = int(st.get("usage_usec", 0)) * 1000
            out["_periods"] = int(st.get("nr_periods", 0))
            out["_throttled"] = int(st.get("nr_throttled", 0))
        with contextlib.suppress(OSError, ValueError), open(os.path.join(d, "cpu.max")) as f:
            mx, per = f.read().split()
            out["limit_cores"] = None if mx == "max" else int(mx) / int(per)
        with contextlib.suppress(OSError, ValueError, IndexError), open(os.path.join(d, "cpu.pressure")) as f:
            some = f.readline().split()
            out["_pressure_us"] = int(dict(kv.split("=") for kv in some[1:])["total"])

    async def _state(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        if not self.run.state_url:
            return {}
        try:
            async with session.get(self.run.state_url, timeout=aiohttp.ClientTimeout(total=max(0.2, self.interval_s))) as r:
                data: dict[str, Any] = await r.json(content_type=None)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError):
            return {"state_error": True}
        return extract_state(data)

    async def _loop(self) -> None:
        prev = self._cpu_sample()
        async with aiohttp.ClientSession() as session:
            while True:
                await asyncio.sleep(self.interval_s)
                cur = self._cpu_sample()
                row: dict[str, Any] = {"wall": cur["wall"], "limit_cores": cur.get("limit_cores")}
                dt = cur["mono"] - prev["mono"]
                hb = cur["_host"][0] - prev["_host"][0]
                ht = cur["_host"][1] - prev["_host"][1]
                row["host_cpu_utilization"] = hb / ht if ht > 0 else None
                if cur.get("_usage_ns") is not None and prev.get("_usage_ns") is not None and dt > 0:
                    cores = (cur["_usage_ns"] - prev["_usage_ns"]) / 1e9 / dt
                    row["container_usage_cores"] = cores
                    lim = cur.get("limit_cores")
                    row["container_cpu_utilization"] = cores / lim if lim else None
                if "_periods" in cur and "_periods" in prev:
                    dp = cur["_periods"] - prev["_periods"]
                    row["container_throttled_ratio"] = (cur["_throttled"] - prev["_throttled"]) / dp if dp > 0 else 0.0
                if "_pressure_us" in cur and "_pressure_us" in prev and dt > 0:
                    row["container_pressure_ratio"] = (cur["_pressure_us"] - prev["_pressure_us"]) / 1e6 / dt
                row.update(await self._state(session))
                self.samples.append(row)
                prev = cur

    async def __aenter__(self) -> Monitor:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def extract_state(data: dict[str, Any]) -> dict[str, Any]:
    """Pick in-flight, max_inflight, shed counts and the limiter's own CPU reading from a state JSON.

    Accepts the upstream's ``/_bench/state`` (``snapshot`` = LimiterSnapshot.as_dict())
    and the sidecar's admin state (a snapshot at top level or under ``limiter``).
    """
    snap = data.get("snapshot") or data.get("limiter") or data
    out: dict[str, Any] = {}
    if not isinstance(snap, dict):
        return out
    for k in ("inflight", "max_inflight", "min_rt_s", "max_pass_per_s", "hot", "engaged", "period_margin",
              "period_overhead_s", "cpu_per_request_s", "chance_inflight", "engagements"):
        if k in snap:
            out[k] = snap[k]
    if isinstance(snap.get("shed_by_stage"), dict):  # flat, as shed_by_reason: "period/engaged" -> count
        out["shed_by_stage"] = {f"{stage}/{state}": int(n) for stage, states in snap["shed_by_stage"].items()
                                if isinstance(states, dict) for state, n in states.items()}  # fmt: skip
    counts: dict[str, int] = {}
    _sum_outcomes(snap.get("requests"), counts)
    shed = counts.get("shed", 0)
    admitted = counts.get("admitted", 0)
    out["shed_total"] = shed
    out["admitted_total"] = admitted
    if isinstance(snap.get("shed_by_reason"), dict):
        reasons: dict[str, int] = {}
        for res in snap["shed_by_reason"].values():
            if isinstance(res, dict):
                for trig, n in res.items():
                    if isinstance(n, (int, float)):
                        reasons[str(trig)] = reasons.get(str(trig), 0) + int(n)
        out["shed_by_reason"] = reasons
    cpu = snap.get("cpu")
    if isinstance(cpu, dict):
        out["limiter_cpu_utilization"] = cpu.get("utilization")
        out["limiter_cpu_utilization_smoothed"] = cpu.get("utilization_smoothed")
        out["limiter_usable_cores"] = cpu.get("usable_cores")
    if "signal_name" in snap:
        out["signal_name"] = snap["signal_name"]
    lag = data.get("loop_lag")
    if isinstance(lag, dict):
        out["loop_lag_max_s"] = lag.get("max_s")
    hx = data.get("proxy", {}).get("haproxy") if isinstance(data.get("proxy"), dict) else None
    if isinstance(hx, dict):  # the sidecar's haproxy engine: what it set, and HAProxy's queue
        out["haproxy_maxconn"] = hx.get("maxconn")
        out["haproxy_rooms"] = hx.get("rooms")
        out["haproxy_engaged"] = hx.get("engaged")
        out["haproxy_queue"] = hx.get("queue")
        out["haproxy_shed_total"] = hx.get("shed_total")
        gate = hx.get("period_gate")
        if isinstance(gate, dict):  # the period gate beside HAProxy: pacing, the caps, freezes that engaged
            out["haproxy_period"] = {k: gate.get(k) for k in ("pacing", "caps", "margin", "freezes_engaged", "reads")}
    return out


def _sum_outcomes(node: Any, counts: dict[str, int]) -> None:
    """Sum the leaves of nested ``requests`` (resource -> priority -> outcome -> n) by outcome."""
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                counts[str(k)] = counts.get(str(k), 0) + int(v)
            else:
                _sum_outcomes(v, counts)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict) and "outcome" in item:
                n = int(item.get("count") or item.get("value") or 0)
                counts[str(item["outcome"])] = counts.get(str(item["outcome"]), 0) + n
            else:
                _sum_outcomes(item, counts)


# ------------------------------------------------------------------ load and results


async def drive(
    run: Running,
    path: str,
    rate_rps: float,
    seconds: float,
    *,
    classes: tuple[TrafficClass, ...] = (TrafficClass(),),
    progress: bool = False,
    timeout_s: float = 2.0,
    start_in_s: float = 1.5,
    at_offset: Sequence[tuple[float, Callable[[], Any]]] = (),
    monitor_interval_s: float = 0.5,
    seed: int = 1,
    phases: tuple[Phase, ...] = (),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the load generator (a separate process on the aux CPU) while monitoring.

    ``at_offset`` callbacks run at those offsets from the first intended send
    (the step scenario's quota change). ``phases``: a rate schedule (multiples
    of ``rate_rps``; ``seconds`` should be their sum). Returns (loadgen result, monitor
    samples with ``t_s`` relative to the first send).
    """
    start_at = time.time() + start_in_s
    spec = LoadSpec(url=run.base_url + path, rate_rps=rate_rps, duration_s=seconds, classes=classes,
                    progress=progress, timeout_s=timeout_s, start_at=start_at, seed=seed,
                    events=tuple((off, "quota change") for off, _ in at_offset), phases=phases)  # fmt: skip

    fired_at: list[float] = []

    async def fire(off: float, fn: Callable[[], Any]) -> None:
        await asyncio.sleep(max(0.0, start_at + off - time.time()))
        res = fn()
        if asyncio.iscoroutine(res):
            await res
        fired_at.append(time.time())

    async with Monitor(run, monitor_interval_s) as mon:
        timers = [asyncio.create_task(fire(off, fn)) for off, fn in at_offset]
        try:
            result = await run_load_process_async(spec, cpus=aux_cpus(), priority_header=PRIORITY_HEADER)
        finally:
            for t in timers:
                if not t.done():
                    t.cancel()
            for t in timers:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    anchor = float(result.get("started_at", start_at))  # the load generator's real first intended send
    result["events_at_s"] = [t - anchor for t in fired_at]
    samples = []
    for s in mon.samples:
        row = dict(s)
        row["t_s"] = s["wall"] - anchor
        del row["wall"]
        samples.append(row)
    return result, samples


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def window(samples: list[dict[str, Any]], start_s: float, end_s: float) -> list[dict[str, Any]]:
    return [s for s in samples if start_s <= s["t_s"] <= end_s + 0.6]


def variant_row(
    variant: str,
    lg: dict[str, Any],
    samples: list[dict[str, Any]],
    *,
    capacity_rps: float,
    unloaded_p99_ms: float,
    seconds: float,
    multiplier: float | None = None,
) -> dict[str, Any]:
    """The machine-readable result of one variant run (field names fixed by the benchmark issue)."""
    win = window(samples, 0.0, seconds)
    good = float(lg["goodput_rps"])
    adm = lg["admitted_p99_ms"]
    shed_series = []
    prev_shed = None
    prev_t = None
    for s in samples:
        if s.get("shed_total") is not None and prev_shed is not None and prev_t is not None and s["t_s"] > prev_t:
            shed_series.append({"t_s": s["t_s"], "shed_rps": (s["shed_total"] - prev_shed) / (s["t_s"] - prev_t)})
        if s.get("shed_total") is not None:
            prev_shed, prev_t = s["shed_total"], s["t_s"]
    row: dict[str, Any] = {
        "variant": variant,
        "multiplier": multiplier,
        "offered_rps": lg["offered_rps"],
        "capacity_rps": capacity_rps,
        "goodput_rps": good,
        "goodput_ratio": good / capacity_rps if capacity_rps > 0 else None,
        "admitted_p99_ms": adm,
        "unloaded_p99_ms": unloaded_p99_ms,
        "rejected_p99_ms": lg["rejected_p99_ms"],
        "shed_ratio": lg["shed_ratio"],
        "timeouts": lg["timeouts"],
        "host_cpu_utilization_mean": _mean([s.get("host_cpu_utilization") for s in win]),
        "container_cpu_utilization_mean": _mean([s.get("container_cpu_utilization") for s in win]),
        # extras
        "admitted_p50_ms": lg["admitted_p50_ms"],
        "admitted_p999_ms": lg["admitted_p999_ms"],
        "admitted_p99_over_unloaded": (adm / unloaded_p99_ms) if adm is not None and unloaded_p99_ms else None,
        "rejected_p50_ms": lg["rejected_p50_ms"],
        "ok_rps": lg["ok_rps"],
        "sent": lg["sent"],
        "ok": lg["ok"],
        "rejected": lg["rejected"],
        "errors": lg["errors"],
        "other_status": lg["other_status"],
        "errors_by_kind": lg.get("errors_by_kind", {}),
        "container_usage_cores_mean": _mean([s.get("container_usage_cores") for s in win]),
        "container_throttled_ratio_mean": _mean([s.get("container_throttled_ratio") for s in win]),
        "container_pressure_ratio_mean": _mean([s.get("container_pressure_ratio") for s in win]),
        "limit_cores": _mean([s.get("limit_cores") for s in win]),
        "limiter_cpu_utilization_mean": _mean([s.get("limiter_cpu_utilization") for s in win]),
        "max_inflight_mean": _mean([s.get("max_inflight") for s in win]),
        "shed_by_reason": next((s["shed_by_reason"] for s in reversed(samples) if s.get("shed_by_reason") is not None), None),
        "loadgen": lg["loadgen"],
        "classes": lg.get("classes", {}),
        "timeline": lg["timeline"],
        "samples": samples,
        "shed_rate": shed_series,
    }
    return row


# ------------------------------------------------------------------ capacity


@dataclass
class Capacity:
    capacity_rps: float
    unloaded_p99_ms: float
    unloaded_p50_ms: float
    probes: list[dict[str, Any]]
    cpus: float
    handler: str

    def as_dict(self) -> dict[str, Any]:
        return {"capacity_rps": self.capacity_rps, "unloaded_p99_ms": self.unloaded_p99_ms,
                "unloaded_p50_ms": self.unloaded_p50_ms, "cpus": self.cpus, "handler": self.handler,
                "criterion": "highest rate with admitted p99 <= 3x unloaded p99, >=99% 2xx, no timeouts",
                "probes": self.probes}  # fmt: skip


async def measure_capacity(
    run: Running,
    path: str,
    *,
    cpus: float,
    work_ms: float,
    handler: str,
    probe_s: float = 4.0,
    unloaded_s: float | None = None,
    max_probes: int = 9,
    start_in_s: float = 1.5,
    unloaded_rps: float | None = None,
    min_probe_requests: int = 0,
) -> Capacity:
    """Capacity: the highest rate whose p99 stays under 3x the unloaded p99 (upstream with no limiter).

    The unloaded figures come from ``unloaded_s`` at ``unloaded_rps`` (default 10% of the estimate).
    Each probe lasts ``probe_s``, or long enough for ``min_probe_requests`` at its rate (a p99 of
    50 requests is their maximum: seen 136 and 190 rps for the same service in two runs). The rate
    grows by 1.4x until a probe fails, then bisects to 8%; the last pass is probed again, and when
    it fails that time the bisection goes on below it (within ``max_probes`` plus a few), never
    back to the pass before it, which can be 1.4x lower.
    """
    unloaded_s = unloaded_s if unloaded_s is not None else max(3.0, 2.0 * probe_s)
    est = max(1.0, cpus * 1000.0 / max(work_ms, 0.1))
    low_rate = unloaded_rps if unloaded_rps is not None else max(5.0, 0.1 * est)
    lg, _ = await drive(run, path, low_rate, unloaded_s, start_in_s=start_in_s)
    unloaded_p99 = lg["admitted_p99_ms"] or 1.0
    unloaded_p50 = lg["admitted_p50_ms"] or 1.0
    bound = 3.0 * unloaded_p99
    log(f"capacity[{handler} @ {cpus} CPU]: unloaded ({low_rate:.0f} rps) p50 {unloaded_p50:.1f} ms, p99 {unloaded_p99:.1f} ms; bound {bound:.1f} ms")
    probes: list[dict[str, Any]] = [{"rate_rps": low_rate, "p99_ms": unloaded_p99, "ok_ratio": lg["ok"] / max(1, lg["sent"]),
                                     "timeouts": lg["timeouts"], "pass": True, "unloaded": True}]  # fmt: skip

    async def probe(rate: float) -> tuple[bool, float]:
        await asyncio.sleep(0.5)
        seconds = max(probe_s, min_probe_requests / rate)
        r, _ = await drive(run, path, rate, seconds, start_in_s=start_in_s)
        p99 = r["admitted_p99_ms"] or float("inf")
        ok_ratio = r["ok"] / max(1, r["sent"])
        ok = p99 <= bound and ok_ratio >= 0.99 and r["timeouts"] == 0
        probes.append({"rate_rps": rate, "seconds": seconds, "sent": r["sent"], "p99_ms": p99, "ok_ratio": ok_ratio,
                       "timeouts": r["timeouts"], "ok_rps": r["ok_rps"], "pass": ok})  # fmt: skip
        log(f"  probe {rate:7.1f} rps ({r['sent']} sent): p99 {p99:8.1f} ms, ok {ok_ratio:.3f}, timeouts {r['timeouts']} -> {'pass' if ok else 'fail'}")
        return ok, float(r["ok_rps"])

    lo, hi = low_rate, None
    lo_ok_rps = float(lg["ok_rps"])
    passed = [(lo, lo_ok_rps)]  # rates that passed, lowest first
    rate = 0.4 * est
    n = 0
    while n < max_probes and hi is None:
        n += 1
        ok, ok_rps = await probe(rate)
        if ok:
            lo, lo_ok_rps = rate, ok_rps
            passed.append((lo, lo_ok_rps))
            rate *= 1.4
        else:
            hi = rate
    limit = max_probes
    for _ in range(3):  # a pass just under a fail is confirmed by a second probe: one probe's p99 is noisy
        while n < limit and hi is not None and hi / lo > 1.08:
            n += 1
            mid = (lo + hi) / 2.0
            ok, ok_rps = await probe(mid)
            if ok:
                lo, lo_ok_rps = mid, ok_rps
                passed.append((lo, lo_ok_rps))
            else:
                hi = mid
        if hi is None or len(passed) <= 2:
            break
        ok, _ = await probe(lo)
        if ok:
            break
        hi = passed.pop()[0]  # not confirmed: the capacity is under it, but not under the pass before it
        lo, lo_ok_rps = passed[-1]
        limit = n + 2
    cap = Capacity(lo, unloaded_p99, unloaded_p50, probes, cpus, handler)
    log(f"capacity[{handler} @ {cpus} CPU] = {lo:.1f} rps (answered {lo_ok_rps:.1f}/s), unloaded p99 {unloaded_p99:.1f} ms")
    return cap


def load_capacity(path: str, handler: str, cpus: float) -> Capacity | None:
    """A capacity measured by an earlier run (``capacity`` section of a result JSON), if it matches."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    caps = data.get("capacities") or {}
    c = caps.get(handler) if isinstance(caps, dict) else None
    if c is None and data.get("handler") == handler:
        c = data.get("capacity")
    if not c or abs(float(c.get("cpus", cpus)) - cpus) > 1e-9:
        return None
    return Capacity(float(c["capacity_rps"]), float(c["unloaded_p99_ms"]), float(c.get("unloaded_p50_ms", 0.0)),
                    list(c.get("probes", [])), cpus, handler)  # fmt: skip


def work_iters_from(path: str | None) -> int | None:
    """The work size of an earlier result, so that its capacities apply to this run."""
    if not path:
        return None
    try:
        with open(path) as f:
            v = json.load(f).get("work_iters")
    except (OSError, ValueError):
        return None
    return int(v) if v else None


def write_json(data: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"), default=str)  # compact: results are committed
    os.replace(tmp, path)
    log(f"wrote {path}")


def run_scenario(
    name: str,
    parser: Any,
    run: Callable[[Any], Any],
    argv: Sequence[str] | None,
) -> int:
    """A scenario's ``main``: parse ``argv``, run, write the JSON and (unless ``--no-report``) the report.

    Returns 2 with one line on stderr when the machine lacks what the scenario needs.
    """
    a = parser.parse_args(argv)
    try:
        out = asyncio.run(run(a))
    except EnvironmentMissing as exc:
        print(f"bench {name}: {exc}", file=sys.stderr)
        return 2
    write_json(out, a.json_out)
    if not a.no_report:
        from bench import report

        report.report_file(a.json_out)
    return 0
