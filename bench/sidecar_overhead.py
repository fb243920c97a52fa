"""What the sidecar costs: wrk on loopback, direct vs nginx (1 worker) vs the sidecar's two engines, in one session.

One command (the lead re-runs it on a quiet machine)::

    .venv/bin/python -m bench.sidecar_overhead            # ~2 minutes
    .venv/bin/python -m bench.sidecar_overhead --rounds 5 --seconds 10 --json bench/results/sidecar_overhead.json

It starts a tiny aiohttp upstream (hello, 13 bytes, uvloop when installed),
an nginx reverse proxy in front of it (Debian package, ``worker_processes 1``,
upstream keep-alive, its own temporary prefix and config; stopped at the
end), the sidecar (``python -m sidecar``, default limiter on, watching
itself) and the sidecar with ``--engine haproxy`` (HAProxy as its child, the
same options; its CPU is the flowctl process and the haproxy child together).
Then, alternating the order every round for ``--rounds`` rounds so drift hits
all alike:

1. **Throughput**: ``wrk -t1 -c{connections} -d{seconds}s --latency`` against
   each; medians of req/s and p99 over rounds; the ratio sidecar/nginx; and
   the CPU time the target process tree spent per request (utime+stime from
   /proc: the proxy's own cost, much steadier than req/s on a shared machine).
2. **Added latency with one connection** (``wrk -c1``): p50(proxy) - p50(direct)
   when nothing queues, for each proxy.
3. **Added latency at 25% and 50% load**: an open-loop generator
   (``bench.loadgen``, constant arrivals) at that fraction of the (Python)
   sidecar's measured req/s, against direct and each proxy; the median over
   rounds of p50(proxy) - p50(direct), and the same for p99.

Everything runs on the same 2 cores, so the numbers include contention
between wrk, the proxy and the upstream; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from bench.ports import free_port

__all__ = ["main", "parse_wrk"]

# The limiter decides every request (and counts it) but never sheds: on a loaded 2-core box the
# whole-machine cgroup is "hot", and shed 503s would inflate req/s. Same hot path as admitted traffic.
DEFAULT_SIDECAR_ARGS = ("--dry-run=true", "--cpu-threshold=1.0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# CPU pinning (``--pin SERVERS:CLIENT``, e.g. ``0:1``): servers (upstream, nginx, sidecar) on one
# set of CPUs, the load generators (wrk, bench.loadgen) on another. Empty: no pinning.
PIN = {"servers": "", "client": ""}


def _pinned(cmd: list[str], which: str) -> list[str]:
    cpus = PIN[which]
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def _wait_http(url: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                r.read()
                return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up within {timeout_s} s") from None
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the upstream ------------------------------------------------------------------------------


def serve_upstream(port: int) -> None:
    """A minimal aiohttp hello-world (low-level server, no access log)."""
    import asyncio

    from aiohttp import web

    body = b"hello, world\n"

    async def hello(request: web.BaseRequest) -> web.Response:
        if request.can_read_body:
            await request.read()
        return web.Response(body=body, content_type="text/plain")

    async def run() -> None:
        runner = web.ServerRunner(web.Server(hello, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


# -- nginx ---------------------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream app {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def start_nginx(prefix: str, port: int, upstream_port: int) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        raise RuntimeError("nginx not found (apt-get install -y nginx)")
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(prefix=prefix, port=port, upstream_port=upstream_port))
    return subprocess.Popen(_pinned([nginx, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "error.log")], "servers"))


# -- CPU time of a process tree (the proxy's cost per request, robust to a noisy machine) --------


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            if int(data[data.rfind(")") + 2 :].split()[1]) == pid:
                out.append(int(d))
    return out


def tree_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and its direct children (nginx master + worker), in seconds."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# -- wrk -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    cpu_us_per_request: float | None = None  # of the target process tree (proxy, or the upstream for direct)


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    """Requests/sec, the 50% and 99% latency lines (``--latency``) and error counts from wrk's output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    return WrkResult(rps=rps, p50_ms=_ms(pct["50"]), p99_ms=_ms(pct["99"]), errors=errors, requests=int(m.group(1)) if m else 0)


def run_wrk(url: str, seconds: float, connections: int, threads: int = 1, pid: int | None = None) -> WrkResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk not found (apt-get install -y wrk)")
    cpu0 = tree_cpu_s(pid) if pid else 0.0
    out = subprocess.run(
        _pinned([wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", url], "client"),
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    res = parse_wrk(out)
    if pid and res.requests:
        cpu_us = (tree_cpu_s(pid) - cpu0) / res.requests * 1e6
        res = WrkResult(res.rps, res.p50_ms, res.p99_ms, res.errors, res.requests, cpu_us)
    return res


def run_rate(url: str, rate_rps: float, seconds: float) -> dict[str, Any]:
    from bench.loadgen import LoadSpec, run_load_process

    spec = LoadSpec(url=url, rate_rps=rate_rps, duration_s=seconds, arrival="constant", timeout_s=2.0)
    cpus = [int(c) for c in PIN["client"].split(",")] if PIN["client"] and PIN["client"].replace(",", "").isdigit() else None
    return run_load_process(spec, cpus=cpus)


def _p50_ms(result: dict[str, Any]) -> float:
    total = result.get("total", result)
    return float(total["admitted_p50_ms"])


def _p99_ms(result: dict[str, Any]) -> float:
    total = result.get("total", result)
    return float(total["admitted_p99_ms"])


def _added(ms: dict[str, list[float]], proxy: str) -> float:
    """The median over rounds of the proxy's figure minus the direct one's (same round)."""
    return statistics.median(p - d for p, d in zip(ms[proxy], ms["direct"], strict=True))


# -- the run -------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    py = sys.executable
    up_port, nginx_port, sc_port, admin_port, hx_port, hx_admin = (free_port() for _ in range(6))
    procs: list[subprocess.Popen[bytes]] = []
    nginx_proc: subprocess.Popen[bytes] | None = None
    prefix = tempfile.mkdtemp(prefix="flowctl-bench-nginx-")
    load_before = os.getloadavg()
    try:
        procs.append(subprocess.Popen(_pinned([py, "-m", "bench.sidecar_overhead", "--serve-upstream", str(up_port)], "servers"), cwd=REPO))
        _wait_http(f"http://127.0.0.1:{up_port}/")
        targets = {"direct": f"http://127.0.0.1:{up_port}/"}
        pids = {"direct": procs[0].pid}
        if not args.no_nginx:
            nginx_proc = start_nginx(prefix, nginx_port, up_port)
            procs.append(nginx_proc)
            targets["nginx"] = f"http://127.0.0.1:{nginx_port}/"
            pids["nginx"] = procs[-1].pid
            _wait_http(targets["nginx"])
        sc_cmd = [py, "-m", "sidecar", "--listen", f"127.0.0.1:{sc_port}", "--admin", f"127.0.0.1:{admin_port}",
                  "--upstream", f"http://127.0.0.1:{up_port}", "--log-level", "warning", *args.sidecar_arg]
        procs.append(subprocess.Popen(_pinned(sc_cmd, "servers"), cwd=REPO))
        targets["sidecar"] = f"http://127.0.0.1:{sc_port}/"
        pids["sidecar"] = procs[-1].pid
        _wait_http(targets["sidecar"])
        if not args.no_haproxy:
            hx_cmd = [py, "-m", "sidecar", "--engine", "haproxy", "--listen", f"127.0.0.1:{hx_port}",
                      "--admin", f"127.0.0.1:{hx_admin}", "--upstream", f"http://127.0.0.1:{up_port}",
                      "--log-level", "warning", *args.sidecar_arg]  # fmt: skip
            procs.append(subprocess.Popen(_pinned(hx_cmd, "servers"), cwd=REPO))
            targets["haproxy"] = f"http://127.0.0.1:{hx_port}/"
            pids["haproxy"] = procs[-1].pid  # the flowctl process; tree_cpu_s adds its haproxy child
            _wait_http(targets["haproxy"])
        proxies = [n for n in targets if n != "direct"]

        for url in targets.values():  # warm-up: connections, caches, the limiter's window
            run_wrk(url, 2, args.connections)
        wrk: dict[str, list[WrkResult]] = {name: [] for name in targets}
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                res = run_wrk(targets[name], args.seconds, args.connections, pid=pids[name])
                wrk[name].append(res)
                print(f"round {r + 1} {name:8s} {res.rps:9.0f} req/s  p50 {res.p50_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms"
                      f"  cpu {res.cpu_us_per_request or 0:6.1f} us/req"
                      f"{'  errors ' + str(res.errors) if res.errors else ''}", file=sys.stderr, flush=True)
        summary: dict[str, Any] = {}
        for name, results in wrk.items():
            summary[name] = {
                "rps_median": statistics.median(x.rps for x in results),
                "p50_ms_median": statistics.median(x.p50_ms for x in results),
                "p99_ms_median": statistics.median(x.p99_ms for x in results),
                "errors": sum(x.errors for x in results),
                "cpu_us_per_request_median": statistics.median(x.cpu_us_per_request or 0.0 for x in results),
                "rounds": [x.__dict__ for x in results],
            }
        # One connection, one request at a time: what the hop itself adds when nothing queues.
        names = ["direct", *proxies]
        idle: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else list(reversed(names))):
                res = run_wrk(targets[name], min(args.seconds, 5), 1)
                idle[name].append(res.p50_ms)
                print(f"c=1 round {r + 1} {name:8s} {res.rps:7.0f} req/s  p50 {res.p50_ms:6.3f} ms", file=sys.stderr, flush=True)
        one_conn = {
            "p50_ms": idle,
            "added_p50_ms_median": _added(idle, "sidecar"),
            "added_p50_ms_median_by_proxy": {n: _added(idle, n) for n in proxies},
        }
        half: dict[str, Any] = {}
        if not args.no_half_load:
            for fraction in (0.25, 0.5):
                rate = fraction * summary["sidecar"]["rps_median"]
                p50: dict[str, list[float]] = {n: [] for n in names}
                p99: dict[str, list[float]] = {n: [] for n in names}
                for r in range(args.rounds):
                    for name in (names if r % 2 == 0 else list(reversed(names))):
                        rr = run_rate(targets[name], rate, args.half_seconds)
                        p50[name].append(_p50_ms(rr))
                        p99[name].append(_p99_ms(rr))
                        print(f"{fraction:.0%}-load round {r + 1} {name:8s} {rate:7.0f} req/s  p50 {p50[name][-1]:8.3f} ms"
                              f"  p99 {p99[name][-1]:8.3f} ms  timeouts {rr.get('timeouts', 0)}", file=sys.stderr, flush=True)
                half[f"{fraction:g}"] = {"rate_rps": rate, "p50_ms": p50, "p99_ms": p99,
                                         "added_p50_ms_median": _added(p50, "sidecar"),
                                         "added_p50_ms_median_by_proxy": {n: _added(p50, n) for n in proxies},
                                         "added_p99_ms_median_by_proxy": {n: _added(p99, n) for n in proxies}}  # fmt: skip
        nginx_rps = summary["nginx"]["rps_median"] if "nginx" in summary else None
        return {
            "connections": args.connections,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "sidecar_args": args.sidecar_arg,
            "pin": args.pin,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
            "wrk": summary,
            "ratio_sidecar_over_nginx": summary["sidecar"]["rps_median"] / nginx_rps if nginx_rps else None,
            "ratio_haproxy_over_nginx": summary["haproxy"]["rps_median"] / nginx_rps if nginx_rps and "haproxy" in summary
            else None,
            "ratio_over_nginx_by_round": {n: [a.rps / b.rps for a, b in zip(wrk[n], wrk["nginx"], strict=True)]
                                          for n in proxies if n != "nginx"} if nginx_rps else {},  # fmt: skip
            "one_connection": one_conn,
            "half_load": half,
        }
    finally:
        for p in reversed(procs):
            _stop(p, signal.SIGQUIT if p is nginx_proc else signal.SIGTERM)
        shutil.rmtree(prefix, ignore_errors=True)


def render(result: dict[str, Any]) -> str:
    lines = [
        f"wrk -t1 -c{result['connections']} -d{result['seconds']}s, {result['rounds']} rounds alternated, medians; "
        + (f"pinned servers:client = {result['pin']}; " if result.get("pin") else "")
        + f"load average before {result['loadavg_before'][0]:.2f}, after {result['loadavg_after'][0]:.2f}",
        "",
        "| target | req/s | p50 | p99 | CPU per request |",
        "|---|---:|---:|---:|---:|",
    ]
    what = {"direct": "upstream", "nginx": "nginx", "sidecar": "sidecar", "haproxy": "flowctl + its haproxy child"}
    for name, s in result["wrk"].items():
        lines.append(f"| {name} | {s['rps_median']:.0f} | {s['p50_ms_median']:.2f} ms | {s['p99_ms_median']:.2f} ms | "
                     f"{s['cpu_us_per_request_median']:.0f} us ({what.get(name, name)}) |")
    if result["ratio_sidecar_over_nginx"] is not None:
        lines.append("")
        lines.append(f"sidecar / nginx req/s: {result['ratio_sidecar_over_nginx']:.0%}")
        if result.get("ratio_haproxy_over_nginx") is not None:
            per_round = ", ".join(f"{x:.0%}" for x in result["ratio_over_nginx_by_round"]["haproxy"])
            lines.append(f"haproxy engine / nginx req/s: {result['ratio_haproxy_over_nginx']:.0%} (per round {per_round})")
    oc = result["one_connection"]
    by = oc.get("added_p50_ms_median_by_proxy", {"sidecar": oc["added_p50_ms_median"]})
    lines.append("added p50 with one connection (wrk -c1, nothing queues): "
                 + "; ".join(f"{n} {v:.3f} ms" for n, v in by.items()))  # fmt: skip
    for fraction, h in result["half_load"].items():
        by50 = h.get("added_p50_ms_median_by_proxy", {"sidecar": h["added_p50_ms_median"]})
        by99 = h.get("added_p99_ms_median_by_proxy", {})
        lines.append(
            f"added at {float(fraction):.0%} of the sidecar's req/s ({h['rate_rps']:.0f} req/s, constant arrivals, "
            "bench.loadgen): "
            + "; ".join(f"{n} p50 {v:+.3f} ms" + (f", p99 {by99[n]:+.3f} ms" if n in by99 else "") for n, v in by50.items())
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sidecar_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="wrk duration per run")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--half-seconds", type=float, default=8.0, help="duration of each half-load run")
    p.add_argument("--no-nginx", action="store_true")
    p.add_argument("--no-half-load", action="store_true")
    p.add_argument("--no-haproxy", action="store_true", help="leave out the sidecar's haproxy engine")
    p.add_argument("--sidecar-arg", action="append", default=None,
                   help="sidecar flag (repeatable), e.g. --sidecar-arg=--client=aiohttp; default: "
                   + " ".join(DEFAULT_SIDECAR_ARGS))
    p.add_argument("--pin", default="", metavar="SERVERS:CLIENT",
                   help="taskset CPU lists, e.g. 0:1 = upstream/nginx/sidecar on CPU 0, wrk/loadgen on CPU 1")
    p.add_argument("--json", dest="json_out", help="also write the result as JSON here")
    p.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pin:
        PIN["servers"], _, PIN["client"] = args.pin.partition(":")
    if args.sidecar_arg is None:
        args.sidecar_arg = list(DEFAULT_SIDECAR_ARGS)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    result = measure(args)
    print(render(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
