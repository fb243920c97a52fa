"""``flowctl demo cpu``: one CPU burner, three views of it, and the numbers side by side.

A burner runs in a ``--cpus``-limited group (with lxcfs views when lxcfs is
available). Once a second this samples the host view (/proc/stat, what
cgroup-blind tools read), the cgroup view (the group's own files, via
``flowctl.cpu``) and the lxcfs view (read *inside* the group by
``flowctl inspect``, because lxcfs answers for the process that reads).
Then it prints a verdict table, optionally plots the three lines, and shows
what a program inside sees with and without lxcfs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from flowctl.cpu import make_signal
from flowctl.errors import ConfigError, FlowctlError, LxcfsError
from flowctl.workload.lxcfs import find_lxcfs_binary, system_lxcfs
from flowctl.workload.probe import InsideView, probe_inside
from flowctl.workload.process import launch
from flowctl.workload.spec import parse_cpus, parse_size

__all__ = ["DemoResult", "DemoSample", "register", "run_cpu_demo", "verdict_text"]

SETUP_FAILED_EXIT = 125


@dataclass(frozen=True, slots=True)
class DemoSample:
    """One second of the demo. Ratios are fractions; None = unknown (first sample, view missing)."""

    t_s: float
    host_utilization: float | None
    host_cpus: float | None
    host_usage_cores: float | None
    cgroup_utilization: float | None
    cgroup_usage_cores: float | None
    cgroup_limit_cores: float | None
    cgroup_throttled_ratio: float | None
    lxcfs_utilization: float | None = None
    lxcfs_cpus: float | None = None
    cgroup_pressure_ratio: float | None = None


@dataclass(slots=True)
class DemoResult:
    """Everything the demo measured; ``summary`` holds the means over the samples."""

    cpus: float
    memory_bytes: int
    seconds: float
    lxcfs: bool
    lxcfs_note: str
    samples: list[DemoSample] = field(default_factory=list)
    cgroup_version: int | None = None
    summary: dict[str, float | None] = field(default_factory=dict)
    inside: list[InsideView] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus, "memory_bytes": self.memory_bytes, "seconds": self.seconds,
            "lxcfs": self.lxcfs, "lxcfs_note": self.lxcfs_note, "cgroup_version": self.cgroup_version,
            "summary": self.summary,
            "samples": [asdict(s) for s in self.samples],
            "inside": [asdict(v) for v in self.inside],
        }


def register(sub: Any) -> None:
    """Add ``demo`` and its ``cpu`` subcommand."""
    demo: argparse.ArgumentParser = sub.add_parser("demo", help="short live demonstrations (demo cpu)")
    demo_sub = demo.add_subparsers(dest="demo", metavar="DEMO")
    p = demo_sub.add_parser(
        "cpu",
        help="burn CPU in a limited group and show what host, cgroup and lxcfs say",
        description="Run a CPU burner in a --cpus-limited cgroup and compare the host, cgroup and lxcfs views.",
    )
    p.add_argument("--cpus", default="0.5", metavar="N", help="CPU quota of the burner's group (default 0.5)")
    p.add_argument("--memory", default="256M", metavar="SIZE", help="memory limit of the group (default 256M)")
    p.add_argument("--seconds", type=float, default=10.0, metavar="S", help="how long to sample (default 10)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="sampling interval (default 1)")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG of the utilization lines (needs matplotlib)")
    p.add_argument("--no-lxcfs", action="store_true", help="do not use lxcfs even if it is installed")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object instead of tables")
    p.set_defaults(func=_cpu_command)

    def _usage(_args: argparse.Namespace) -> int:
        demo.print_help(sys.stderr)
        return 2

    demo.set_defaults(func=_usage)


def _cpu_command(args: argparse.Namespace) -> int:
    try:
        cpus = parse_cpus(args.cpus)
        memory = parse_size(args.memory)
        if not (math.isfinite(args.seconds) and args.seconds >= 1):
            raise ConfigError(f"invalid --seconds {args.seconds!r}: at least 1")
        if not (math.isfinite(args.interval) and 0.1 <= args.interval <= args.seconds):
            raise ConfigError(f"invalid --interval {args.interval!r}: between 0.1 and --seconds")
        if args.plot:
            _require_matplotlib()
    except ConfigError as exc:
        print(f"flowctl demo cpu: error: {exc}", file=sys.stderr)
        return 2
    tty = sys.stderr.isatty()
    try:
        result = asyncio.run(run_cpu_demo(
            cpus=cpus, memory_bytes=memory, seconds=args.seconds, interval_s=args.interval,
            use_lxcfs=not args.no_lxcfs, progress=None if args.json else (lambda s: _progress(s, cpus, tty)),
        ))
    except FlowctlError as exc:
        if tty:
            print(file=sys.stderr)
        print(f"flowctl demo cpu: error: {exc}", file=sys.stderr)
        return SETUP_FAILED_EXIT
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result.as_dict(), sort_keys=True))
    else:
        if tty:
            print(file=sys.stderr)
        print(format_report(result))
        if args.plot:
            print(f"\nplot written to {args.plot}")
    return 0


# ---------------------------------------------------------------- measuring


def _burner_script(cpus: float) -> str:
    loops = max(1, math.ceil(cpus))
    return f'i=0; while [ $i -lt {loops} ]; do (while :; do :; done) & i=$((i+1)); done; exec "$@"'


def _lxcfs_available() -> tuple[bool, str]:
    if system_lxcfs():
        return True, "system lxcfs at /var/lib/lxcfs"
    try:
        find_lxcfs_binary()
    except LxcfsError as exc:
        return False, str(exc)
    return True, "private lxcfs --enable-cfs started for the demo"


async def _read_inside(stream: asyncio.StreamReader, latest: dict[str, Any]) -> None:
    """Keep ``latest["lxcfs"]`` at the lxcfs section of the newest ``flowctl inspect --json`` line."""
    while line := await stream.readline():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict) and isinstance(obj.get("lxcfs"), dict):
                latest["lxcfs"] = obj["lxcfs"]


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _mean(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


async def run_cpu_demo(
    *,
    cpus: float = 0.5,
    memory_bytes: int = 256 << 20,
    seconds: float = 10.0,
    interval_s: float = 1.0,
    use_lxcfs: bool = True,
    progress: Callable[[DemoSample], None] | None = None,
) -> DemoResult:
    """Run the burner for ``seconds``, sample the three views every ``interval_s``, probe the inside view."""
    lxcfs, note = _lxcfs_available() if use_lxcfs else (False, "disabled with --no-lxcfs")
    result = DemoResult(cpus=cpus, memory_bytes=memory_bytes, seconds=seconds, lxcfs=lxcfs, lxcfs_note=note)
    inside_reader: list[str] = []
    if lxcfs:  # lxcfs answers for the reading process: read its view from inside the group
        inside_reader = [sys.executable, "-m", "flowctl", "inspect", "--json", "--watch", "--interval", str(interval_s)]
    else:
        inside_reader = ["sleep", str(int(seconds) + 3600)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    loop = asyncio.get_running_loop()
    async with launch(["sh", "-c", _burner_script(cpus), "burner", *inside_reader], cpus=cpus,
                      memory_bytes=memory_bytes, lxcfs=lxcfs, env=env,
                      stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL) as w:
        latest: dict[str, Any] = {}
        assert w.process.stdout is not None
        reader = asyncio.create_task(_read_inside(w.process.stdout, latest))
        host = make_signal("host", interval_s=interval_s)
        cgroup = make_signal("container", cgroup_path=w.cgroup_paths["cpu"], interval_s=interval_s, fallback=False)
        try:
            if lxcfs:  # warm-up: let the inside reader start (it is throttled with the burner)
                deadline = loop.time() + 15.0
                while "lxcfs" not in latest and loop.time() < deadline and not reader.done():
                    await asyncio.sleep(0.05)
            start = loop.time()
            host.sample()
            cgroup.sample()
            n = max(1, round(seconds / interval_s))
            for i in range(1, n + 1):
                await asyncio.sleep(max(0.0, start + i * interval_s - loop.time()))
                h, c = host.sample(), cgroup.sample()
                lx = latest.get("lxcfs", {})
                sample = DemoSample(
                    t_s=round(loop.time() - start, 3),
                    host_utilization=h.utilization, host_cpus=h.limit_cores, host_usage_cores=h.usage_cores,
                    cgroup_utilization=c.utilization, cgroup_usage_cores=c.usage_cores,
                    cgroup_limit_cores=c.limit_cores, cgroup_throttled_ratio=c.throttled_ratio,
                    lxcfs_utilization=_num(lx.get("utilization")), lxcfs_cpus=_num(lx.get("cpus")),
                    cgroup_pressure_ratio=c.pressure_ratio,
                )
                result.samples.append(sample)
                if progress:
                    progress(sample)
            version = cgroup.limits.details.get("version") if cgroup.limits else None
            result.cgroup_version = version if isinstance(version, int) else None
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            host.close()
            cgroup.close()
    s = result.samples
    result.summary = {
        "host_utilization": _mean([x.host_utilization for x in s]),
        "host_cpus": _mean([x.host_cpus for x in s]),
        "host_usage_cores": _mean([x.host_usage_cores for x in s]),
        "cgroup_utilization": _mean([x.cgroup_utilization for x in s]),
        "cgroup_usage_cores": _mean([x.cgroup_usage_cores for x in s]),
        "cgroup_limit_cores": _mean([x.cgroup_limit_cores for x in s]),
        "cgroup_throttled_ratio": _mean([x.cgroup_throttled_ratio for x in s]),
        "cgroup_pressure_ratio": _mean([x.cgroup_pressure_ratio for x in s]),
        "lxcfs_utilization": _mean([x.lxcfs_utilization for x in s]),
        "lxcfs_cpus": _mean([x.lxcfs_cpus for x in s]),
    }
    result.inside.append(await probe_inside(cpus=cpus, memory_bytes=memory_bytes, lxcfs=False))
    if lxcfs:
        result.inside.append(await probe_inside(cpus=cpus, memory_bytes=memory_bytes, lxcfs=True))
    return result


# ---------------------------------------------------------------- output


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _cores(x: float | None) -> str:
    return "n/a" if x is None else f"{x:g}"


def _progress(s: DemoSample, cpus: float, tty: bool) -> None:
    line = (f"[{s.t_s:5.1f}s] host {_pct(s.host_utilization)} of {_cores(s.host_cpus)} CPUs | "
            f"cgroup {_pct(s.cgroup_utilization)} of {cpus:g} CPU, throttled {_pct(s.cgroup_throttled_ratio)}"
            f"{'' if s.cgroup_pressure_ratio is None else ', PSI ' + _pct(s.cgroup_pressure_ratio)} | "
            f"lxcfs {_pct(s.lxcfs_utilization)} of {_cores(s.lxcfs_cpus)} CPU")
    print(f"\r{line}\x1b[K" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


def verdict_text(r: DemoResult) -> str:
    """One sentence: what each view says about the same burner."""
    m = r.summary
    parts = [
        f"host says {_pct(m['host_utilization'])} busy on {_cores(m['host_cpus'])} CPUs",
        f"cgroup says {_pct(m['cgroup_utilization'])} of {_cores(m['cgroup_limit_cores'])} CPU, "
        f"throttled in {_pct(m['cgroup_throttled_ratio'])} of periods"
        + ("" if m.get("cgroup_pressure_ratio") is None else
           f", and its own cpu.pressure has some task waiting {_pct(m['cgroup_pressure_ratio'])} of the time"),
    ]
    if r.lxcfs and m["lxcfs_cpus"] is not None:
        parts.append(f"lxcfs says {_cores(m['lxcfs_cpus'])} CPU ({_pct(m['lxcfs_utilization'])} busy)")
    else:
        parts.append(f"lxcfs: not used ({r.lxcfs_note})")
    return "; ".join(parts) + "."


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _mib(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb} kB ({kb / 1024:.0f} MiB)"


def format_report(r: DemoResult) -> str:
    """The verdict table, the verdict sentence and the inside-view table."""
    m = r.summary
    rows = [
        ["view", "reads", "CPUs", "utilization", "throttled", "PSI some", "what a CPU-gated limiter (80%) does"],
        ["host", "/proc/stat (cgroup-blind tools)", _cores(m["host_cpus"]), _pct(m["host_utilization"]), "-", "-",
         _decision(m["host_utilization"])],
        ["cgroup", "cpu.max, cpu.stat, cpu.pressure (v2)" if r.cgroup_version == 2 else
         "cpu.cfs_quota_us, cpuacct.usage, cpu.stat", _cores(m["cgroup_limit_cores"]),
         _pct(m["cgroup_utilization"]), _pct(m["cgroup_throttled_ratio"]),
         "n/a" if m.get("cgroup_pressure_ratio") is None else _pct(m["cgroup_pressure_ratio"]),
         _decision(m["cgroup_utilization"])],
        ["lxcfs", "lxcfs /proc seen inside the group", _cores(m["lxcfs_cpus"]) if r.lxcfs else "n/a",
         _pct(m["lxcfs_utilization"]) if r.lxcfs else "n/a", "-", "-",
         _decision(m["lxcfs_utilization"]) if r.lxcfs else "-"],
    ]
    out = [
        f"A CPU burner in a {r.cpus:g}-CPU, {r.memory_bytes >> 20} MiB cgroup, sampled every second for "
        f"{r.seconds:g} s (means over {len(r.samples)} samples):",
        "",
        _table(rows),
        "",
        "Verdict: " + verdict_text(r),
    ]
    others = _others_note(r)
    if others:
        out += ["", others]
    if r.inside:
        by = {v.lxcfs: v for v in r.inside}
        cols = [False] + ([True] if True in by else [])
        head = ["what a program inside sees"] + [("with lxcfs" if c else "without lxcfs") for c in cols]
        def row(label: str, get: Callable[[InsideView], str]) -> list[str]:
            return [label] + [get(by[c]) for c in cols]
        def num(x: int | None) -> str:
            return "n/a" if x is None else str(x)
        irows = [
            head,
            row("getconf _NPROCESSORS_ONLN", lambda v: num(v.getconf_nprocessors_onln)),
            row("python os.cpu_count()", lambda v: num(v.os_cpu_count)),
            row("processors in /proc/cpuinfo", lambda v: num(v.cpuinfo_processors)),
            row("MemTotal in /proc/meminfo", lambda v: _mib(v.memtotal_kb)),
            row("nproc", lambda v: num(v.nproc)),
        ]
        out += ["", _table(irows)]
        if True in by and by[True].nproc is not None and by[True].nproc != by[True].getconf_nprocessors_onln:
            out.append(
                f"\nnproc still says {by[True].nproc} with lxcfs: it counts the CPU affinity mask "
                "(sched_getaffinity), which lxcfs does not change; getconf and os.cpu_count() read "
                "/sys/devices/system/cpu/online, which lxcfs replaces."
            )
        out.append(
            f"Either way the real budget is {r.cpus:g} CPU: only the cgroup files say so exactly "
            "(lxcfs rounds up to whole CPUs)."
        )
    return "\n".join(out)


def _others_note(r: DemoResult) -> str:
    """A warning when other processes kept the host busy, so the burner did not get its whole quota."""
    m = r.summary
    host_busy, burner = m.get("host_usage_cores"), m.get("cgroup_usage_cores")
    if host_busy is None or burner is None or host_busy - burner < 0.25:
        return ""
    return (
        f"Note: other processes kept {host_busy - burner:.2f} cores of this host busy meanwhile, and the burner "
        f"got {burner:.2f} of its {r.cpus:g} CPU (CPU contention). The host number includes them; on a quiet "
        f"host it would read about {100 * r.cpus / (m.get('host_cpus') or 1):.0f}% while the cgroup reads ~100%."
    )


def _decision(util: float | None) -> str:
    if util is None:
        return "-"
    return "sheds (sees the overload)" if util >= 0.8 else "never sheds (looks idle enough)"


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'flowctl[plot]' (or pip install matplotlib)") from None


def plot(r: DemoResult, path: str) -> None:
    """Write a PNG: host, cgroup and lxcfs utilization (and cgroup throttling) over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s for s in r.samples]

    def pct(values: list[float | None]) -> list[float]:
        return [math.nan if v is None else 100 * v for v in values]

    fig, ax = plt.subplots(figsize=(9, 5.8), dpi=110)
    host_cpus = r.summary.get("host_cpus")
    ax.plot(t, pct([s.host_utilization for s in r.samples]), marker="o", lw=2,
            label=f"host /proc/stat (% of {_cores(host_cpus)} CPUs)")
    ax.plot(t, pct([s.cgroup_utilization for s in r.samples]), marker="o", lw=2,
            label=f"cgroup (% of the {r.cpus:g}-CPU quota)")
    if r.lxcfs:
        ax.plot(t, pct([s.lxcfs_utilization for s in r.samples]), marker="o", lw=2,
                label=f"lxcfs view inside (% of {_cores(r.summary.get('lxcfs_cpus'))} CPU)")
    ax.plot(t, pct([s.cgroup_throttled_ratio for s in r.samples]), ls="--", lw=1.5, color="grey",
            label="cgroup: periods throttled")
    if any(s.cgroup_pressure_ratio is not None for s in r.samples):
        ax.plot(t, pct([s.cgroup_pressure_ratio for s in r.samples]), ls="-.", lw=1.5, color="purple",
                label="cgroup cpu.pressure: some waiting (v2 PSI)")
    ax.axhline(80, color="red", lw=1, ls=":")
    ax.text(1.0, 80, " 80%\n threshold", color="red", fontsize=8, va="center", transform=ax.get_yaxis_transform())
    ax.set_ylim(0, 110)
    ax.set_xlabel("seconds")
    ax.set_ylabel("utilization %")
    ax.set_title(f"One CPU burner in a {r.cpus:g}-CPU cgroup: what each view says")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
