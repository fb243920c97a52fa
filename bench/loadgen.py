"""Open-loop HTTP load generator: Poisson or constant arrivals, no coordinated omission.

Every request has an *intended* send time drawn from the arrival process before
the run; latency is measured from that time, not from when the request was
actually written, so a slow server (or a slow generator) cannot hide queueing.
A request that has no answer ``timeout_s`` after its intended time counts as a
timeout and its connection is closed.

The client is a minimal HTTP/1.1 client on ``asyncio.Protocol`` (keep-alive
pool, a new connection whenever none is idle): several times cheaper per
request than aiohttp's client, so one core can drive well over 4x the
benchmark upstream's capacity (``--selftest`` measures that).

Run as a process (``python -m bench.loadgen ...``, optionally pinned with
``--cpu``), or call :func:`run_load` / :func:`run_load_process`.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from bench.ports import free_port

__all__ = ["WARMUP", "LoadSpec", "Phase", "TrafficClass", "arrivals_by_label", "main", "run_load", "run_load_process",
           "run_load_process_async"]  # fmt: skip

_HIST_MAX_US = 120_000_000  # 120 s, far above any timeout
SLOWEST_KEPT = 10  # per phase label: the slowest admitted requests kept with their send offsets (where the tail is)


@dataclass(frozen=True)
class TrafficClass:
    """A share of the traffic, sent with its own extra headers (e.g. a priority header)."""

    name: str = "all"
    weight: float = 1.0
    headers: tuple[tuple[str, str], ...] = ()


WARMUP = "warmup"  # phases with this label are left out of the ``measured`` totals


@dataclass(frozen=True)
class Phase:
    """``seconds`` of arrivals at ``multiplier`` x the spec's ``rate_rps``, counted under ``label``.

    Phases run in order; several phases may share a label (their counts are summed).
    """

    seconds: float
    multiplier: float
    label: str


@dataclass(frozen=True)
class LoadSpec:
    """What to send: ``rate_rps`` requests per second to ``url`` for ``duration_s``."""

    url: str
    rate_rps: float
    duration_s: float
    arrival: str = "poisson"  # "poisson" | "constant"
    timeout_s: float = 2.0
    good_latency_s: float = 1.0  # goodput counts 2xx answered within this
    classes: tuple[TrafficClass, ...] = (TrafficClass(),)
    seed: int = 1
    max_connections: int = 8192
    progress: bool = False
    events: tuple[tuple[float, str], ...] = ()  # (offset_s, label) lines printed in progress only
    start_at: float | None = None  # wall-clock (time.time()) instant of the first intended send; None = now
    phases: tuple[Phase, ...] = ()  # a rate schedule; empty = one phase of duration_s at rate_rps

    def schedule(self) -> tuple[Phase, ...]:
        """The phases in force: ``phases``, or one phase labelled "all" at 1x for ``duration_s``."""
        return self.phases or (Phase(self.duration_s, 1.0, "all"),)


def _new_hist() -> HdrHistogram:
    return HdrHistogram(1, _HIST_MAX_US, 3)


def _pct_ms(h: HdrHistogram, pct: float) -> float | None:
    if h.get_total_count() == 0:
        return None
    return float(h.get_value_at_percentile(pct)) / 1000.0


@dataclass
class _Stats:
    """Counters and histograms for one traffic class or one time bucket."""

    sent: int = 0
    ok: int = 0
    good: int = 0
    rejected: int = 0
    other_status: int = 0
    timeouts: int = 0
    errors: int = 0
    admitted: HdrHistogram = field(default_factory=_new_hist)
    rejected_h: HdrHistogram = field(default_factory=_new_hist)

    def as_dict(self, seconds: float) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "good": self.good,
            "rejected": self.rejected,
            "other_status": self.other_status,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "offered_rps": self.sent / seconds if seconds > 0 else 0.0,
            "ok_rps": self.ok / seconds if seconds > 0 else 0.0,
            "goodput_rps": self.good / seconds if seconds > 0 else 0.0,
            "shed_ratio": self.rejected / self.sent if self.sent else 0.0,
            "admitted_p50_ms": _pct_ms(self.admitted, 50),
            "admitted_p90_ms": _pct_ms(self.admitted, 90),
            "admitted_p99_ms": _pct_ms(self.admitted, 99),
            "admitted_p999_ms": _pct_ms(self.admitted, 99.9),
            "admitted_max_ms": (float(self.admitted.get_max_value()) / 1000.0) if self.ok else None,
            "rejected_p50_ms": _pct_ms(self.rejected_h, 50),
            "rejected_p99_ms": _pct_ms(self.rejected_h, 99),
        }


class _Pending:
    __slots__ = ("fut", "intended", "sent_at")

    def __init__(self, fut: asyncio.Future[int], intended: float) -> None:
        self.fut = fut
        self.intended = intended
        self.sent_at = 0.0


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future[int] | None = None
        self.closed = False
        self._status = 0
        self._need = -1  # body bytes still needed after the header, -1 = header not parsed
        self._chunked = False
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes, fut: asyncio.Future[int]) -> None:
        self.fut = fut
        self.buf.clear()
        self._need = -1
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._parse()

    def _parse(self) -> None:
        if self._need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            lines = head.split("\r\n")
            try:
                self._status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                self._fail(ConnectionError(f"bad status line {lines[0]!r}"))
                return
            length = 0
            self._chunked = False
            self._close_after = lines[0].startswith("HTTP/1.0")
            for line in lines[1:]:
                name, _, value = line.partition(":")
                lname = name.strip().lower()
                if lname == "content-length":
                    length = int(value.strip())
                elif lname == "transfer-encoding" and "chunked" in value.lower():
                    self._chunked = True
                elif lname == "connection":
                    v = value.strip().lower()
                    self._close_after = v == "close" or (self._close_after and v != "keep-alive")
            self._need = length
        if self._chunked:
            # Chunked: done when the terminating "0\r\n\r\n" chunk arrives (we never read the body).
            if not (self.buf.endswith(b"0\r\n\r\n") or self.buf == b"0\r\n\r\n"):
                return
        elif len(self.buf) < self._need:
            return
        self._done()

    def _done(self) -> None:
        fut, self.fut = self.fut, None
        self._need = -1
        if fut is not None and not fut.done():
            fut.set_result(self._status)
        if self._close_after:
            self.close()
        else:
            self.pool.release(self)

    def _fail(self, exc: BaseException) -> None:
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.open -= 1
        self.pool.forget(self)
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_exception(exc or ConnectionResetError("connection closed by server"))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()


class _Pool:
    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.idle: list[_Conn] = []
        self.open = 0
        self.peak_open = 0
        self.connects = 0

    def release(self, conn: _Conn) -> None:
        if not conn.closed:
            self.idle.append(conn)

    def forget(self, conn: _Conn) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def get(self) -> _Conn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        if self.open >= self.limit:
            raise ConnectionError("load generator connection limit reached")
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        self.connects += 1
        try:
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except BaseException:
            self.open -= 1
            raise
        assert isinstance(proto, _Conn)
        return proto


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def _arrivals(spec: LoadSpec) -> list[tuple[float, int, int]]:
    """Intended send offsets (seconds from start), class index and phase index, drawn up front.

    The rate is piecewise constant over the phases; a Poisson draw that crosses a
    phase boundary restarts at the boundary (exact, the process is memoryless).
    Without phases the draws are the same as a single-rate run with that seed.
    """
    rng = random.Random(spec.seed)
    weights = [c.weight for c in spec.classes]
    total_w = sum(weights)
    cum = []
    acc = 0.0
    for w in weights:
        acc += w / total_w
        cum.append(acc)
    out: list[tuple[float, int, int]] = []
    t = 0.0
    phase_start = 0.0
    for pi, ph in enumerate(spec.schedule()):
        end = min(phase_start + ph.seconds, spec.duration_s)
        rate = spec.rate_rps * ph.multiplier
        while rate > 0:
            nxt = t + (rng.expovariate(rate) if spec.arrival == "poisson" else 1.0 / rate)
            if nxt >= end:
                break
            t = nxt
            u = rng.random()
            idx = next((i for i, c in enumerate(cum) if u <= c), len(cum) - 1)
            out.append((t, idx, pi))
        t = phase_start = end
    return out


def arrivals_by_label(spec: LoadSpec, traffic_class: str | None = None) -> dict[str, int]:
    """How many requests each phase label of ``spec`` will send (of ``traffic_class`` only, if
    named): the draws :func:`run_load` makes (the same seed, the same schedule), counted before
    any is sent."""
    schedule = spec.schedule()
    counts = dict.fromkeys((ph.label for ph in schedule), 0)
    for _, cls, phase in _arrivals(spec):
        if traffic_class is None or spec.classes[cls].name == traffic_class:
            counts[schedule[phase].label] += 1
    return counts


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Send the load described by ``spec`` and return the result as a JSON-able dict."""
    if spec.rate_rps <= 0 or spec.duration_s <= 0:
        raise ValueError("rate_rps and duration_s must be positive")
    _raise_nofile()
    parts = urlsplit(spec.url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    requests = []
    for c in spec.classes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in c.headers)
        requests.append(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: flowctl-loadgen\r\n{extra}\r\n".encode())
    arrivals = _arrivals(spec)
    schedule = spec.schedule()
    labels = list(dict.fromkeys(ph.label for ph in schedule))
    label_seconds = {lb: sum(ph.seconds for ph in schedule if ph.label == lb) for lb in labels}
    phase_label = [labels.index(ph.label) for ph in schedule]
    per_phase = [_Stats() for _ in labels]
    per_phase_class = [[_Stats() for _ in spec.classes] for _ in labels]
    measured = _Stats()
    measured_classes = [_Stats() for _ in spec.classes]
    measured_s = sum(ph.seconds for ph in schedule if ph.label != WARMUP)
    answered: dict[int, int] = {}  # 2xx answers by whole second of *completion* time (saturation throughput)
    pool = _Pool(host, port, spec.max_connections)
    loop = asyncio.get_running_loop()
    per_class = [_Stats() for _ in spec.classes]
    total = _Stats()
    nbuckets = int(math.ceil(spec.duration_s)) + 1
    buckets = [_Stats() for _ in range(nbuckets)]
    lag = _new_hist()
    phase_lag = [_new_hist() for _ in labels]  # the generator's own lateness per phase label
    slowest: list[list[tuple[int, float]]] = [[] for _ in labels]  # per phase label: a min-heap of (us, offset s)
    inflight = 0
    peak_inflight = 0
    errors_by_kind: dict[str, int] = {}
    pending: set[asyncio.Task[None]] = set()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    # Arrivals are anchored at start_at, or at "now" if this process started too late for it
    # (its own start-up must not count as latency); started_at reports the real anchor.
    lead_s = 0.05 if spec.start_at is None else max(0.05, spec.start_at - time.time())
    start_delay_s = 0.0 if spec.start_at is None else max(0.0, time.time() + lead_s - spec.start_at)
    t0 = loop.time() + lead_s
    wall0 = time.time() + lead_s

    async def one(offset: float, cls: int, phase: int) -> None:
        nonlocal inflight, peak_inflight
        intended = t0 + offset
        lb = phase_label[phase]
        stats: tuple[_Stats, ...] = (per_class[cls], total, buckets[min(int(offset), nbuckets - 1)], per_phase[lb],
                                     per_phase_class[lb][cls])  # fmt: skip
        if schedule[phase].label != WARMUP:
            stats += (measured, measured_classes[cls])
        for s in stats:
            s.sent += 1
        inflight += 1
        peak_inflight = max(peak_inflight, inflight)
        late_us = max(1, int((loop.time() - intended) * 1e6))
        lag.record_value(late_us)
        phase_lag[lb].record_value(late_us)
        conn: _Conn | None = None
        try:
            async with asyncio.timeout_at(intended + spec.timeout_s):
                conn = await pool.get()
                fut: asyncio.Future[int] = loop.create_future()
                conn.send(requests[cls], fut)
                status = await fut
        except TimeoutError:
            if conn is not None:
                conn.close()
            for s in stats:
                s.timeouts += 1
        except (OSError, ConnectionError) as exc:
            kind = type(exc).__name__
            errors_by_kind[kind] = errors_by_kind.get(kind, 0) + 1
            if conn is not None:
                conn.close()
            for s in stats:
                s.errors += 1
        else:
            latency_s = loop.time() - intended
            us = max(1, int(latency_s * 1e6))
            if 200 <= status < 300:
                done_s = int(loop.time() - t0)
                answered[done_s] = answered.get(done_s, 0) + 1
                for s in stats:
                    s.ok += 1
                    s.admitted.record_value(us)
                    if latency_s <= spec.good_latency_s:
                        s.good += 1
                slow = slowest[lb]
                if len(slow) < SLOWEST_KEPT:
                    heapq.heappush(slow, (us, offset))
                elif us > slow[0][0]:
                    heapq.heapreplace(slow, (us, offset))
            elif status in (429, 503):
                for s in stats:
                    s.rejected += 1
                    s.rejected_h.record_value(us)
            else:
                for s in stats:
                    s.other_status += 1
        finally:
            inflight -= 1

    async def progress() -> None:
        events = sorted(spec.events)
        sec = 0
        while True:
            await asyncio.sleep(max(0.0, t0 + sec + 1 - loop.time()))
            sec += 1
            if sec - 1 >= nbuckets:
                return
            b = buckets[sec - 1]
            p99 = _pct_ms(b.admitted, 99)
            ev = " ".join(label for at, label in events if sec - 1 <= at < sec)
            print(
                f"  [{sec:3d}s] sent {b.sent:5d} ok {b.ok:5d} shed {b.rejected:5d} timeout {b.timeouts:4d} "
                f"err {b.errors:4d} p99(so far) {p99 if p99 is None else round(p99, 1)} ms inflight {inflight}"
                + (f"  <- {ev}" if ev else ""),
                file=sys.stderr,
                flush=True,
            )

    prog = asyncio.create_task(progress()) if spec.progress else None
    for offset, cls, phase in arrivals:
        intended = t0 + offset
        delay = intended - loop.time()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(offset, cls, phase))
        pending.add(task)
        task.add_done_callback(pending.discard)
    send_end = loop.time()
    if pending:
        await asyncio.wait(set(pending))
    if prog is not None:
        prog.cancel()
        try:
            await prog
        except asyncio.CancelledError:
            pass
    for conn in list(pool.idle):
        conn.close()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    seconds = spec.duration_s
    result: dict[str, Any] = {
        "spec": {
            "url": spec.url,
            "rate_rps": spec.rate_rps,
            "duration_s": spec.duration_s,
            "arrival": spec.arrival,
            "timeout_s": spec.timeout_s,
            "good_latency_s": spec.good_latency_s,
            "classes": [{"name": c.name, "weight": c.weight, "headers": dict(c.headers)} for c in spec.classes],
            "seed": spec.seed,
            "phases": [{"seconds": ph.seconds, "multiplier": ph.multiplier, "label": ph.label} for ph in spec.phases],
        },
        "started_at": wall0,
        "start_delay_s": start_delay_s,
        **total.as_dict(seconds),
        "classes": {c.name: per_class[i].as_dict(seconds) for i, c in enumerate(spec.classes)},
        "timeline": [{"t_s": i, **{k: v for k, v in b.as_dict(1.0).items() if not k.endswith("_rps")}} for i, b in enumerate(buckets)],
        "phases": {lb: {**per_phase[i].as_dict(label_seconds[lb]), "send_lag_p99_ms": _pct_ms(phase_lag[i], 99),
                        "slowest": [[round(off, 4), us / 1000.0] for us, off in sorted(slowest[i], reverse=True)],
                        "classes": {c.name: per_phase_class[i][j].as_dict(label_seconds[lb]) for j, c in enumerate(spec.classes)}}
                   for i, lb in enumerate(labels)},  # fmt: skip
        "measured": {**measured.as_dict(measured_s),
                     "classes": {c.name: measured_classes[j].as_dict(measured_s) for j, c in enumerate(spec.classes)}},  # fmt: skip
        "answered_by_second": [answered.get(i, 0) for i in range(max(answered, default=-1) + 1)],
        "errors_by_kind": errors_by_kind,
        "loadgen": {
            "send_lag_p50_ms": _pct_ms(lag, 50),
            "send_lag_p99_ms": _pct_ms(lag, 99),
            "send_lag_max_ms": float(lag.get_max_value()) / 1000.0 if lag.get_total_count() else None,
            "send_overrun_s": max(0.0, send_end - (t0 + spec.duration_s)),
            "cpu_s": cpu_s,
            "cpu_cores": cpu_s / max(1e-9, loop.time() - t0),
            "peak_inflight": peak_inflight,
            "peak_connections": pool.peak_open,
            "connects": pool.connects,
            "affinity": sorted(os.sched_getaffinity(0)),
        },
    }
    return result


def parse_mix(text: str, header: str) -> tuple[TrafficClass, ...]:
    """``critical:0.5,sheddable:0.5`` -> classes sending ``header: <name>``."""
    out = []
    for part in text.split(","):
        name, _, w = part.partition(":")
        out.append(TrafficClass(name=name.strip(), weight=float(w or 1.0), headers=((header, name.strip()),)))
    return tuple(out)


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--url", help="target URL, e.g. http://127.0.0.1:8080/cpu-blocking")
    p.add_argument("--rate", type=float, help="requests per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--arrival", choices=("poisson", "constant"), default="poisson")
    p.add_argument("--timeout", type=float, default=2.0, help="per-request timeout from the intended send time (s)")
    p.add_argument("--good-latency", type=float, default=1.0, help="2xx within this many seconds count as goodput")
    p.add_argument("--mix", default="", help="traffic classes, e.g. critical:0.5,sheddable:0.5")
    p.add_argument("--priority-header", default="X-Priority")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cpu", type=int, action="append", help="pin this process to CPU N (repeatable)")
    p.add_argument("--event", action="append", default=[], help="OFFSET:LABEL shown in the progress lines")
    p.add_argument("--phase", action="append", default=[], help="SECONDS:MULTIPLIER:LABEL, repeatable: a rate schedule (x --rate)")
    p.add_argument("--start-at", type=float, default=None, help="wall-clock time (epoch s) of the first send")
    p.add_argument("--progress", action="store_true", help="print a line per second to stderr")
    p.add_argument("--json", dest="json_out", help="write the result here ('-' = stdout)")
    p.add_argument("--selftest", action="store_true", help="measure the generator's own max rate against a trivial server")
    p.add_argument("--selftest-rates", default="500,1000,2000,3000,4000,6000")
    return p


def spec_from_args(a: argparse.Namespace) -> LoadSpec:
    classes = parse_mix(a.mix, a.priority_header) if a.mix else (TrafficClass(),)
    events = []
    for e in a.event:
        at, _, label = e.partition(":")
        events.append((float(at), label))
    phases = []
    for ph in a.phase:
        secs, mult, label = ph.split(":", 2)
        phases.append(Phase(float(secs), float(mult), label))
    return LoadSpec(
        url=a.url,
        rate_rps=a.rate,
        duration_s=a.seconds,
        arrival=a.arrival,
        timeout_s=a.timeout,
        good_latency_s=a.good_latency,
        classes=classes,
        seed=a.seed,
        progress=a.progress,
        events=tuple(events),
        start_at=a.start_at,
        phases=tuple(phases),
    )


def _process_cmd(spec: LoadSpec, out: str, cpus: Sequence[int] | None, python: str, priority_header: str) -> list[str]:
    cmd = [
        python, "-m", "bench.loadgen", "--url", spec.url, "--rate", repr(spec.rate_rps), "--seconds", repr(spec.duration_s),
        "--arrival", spec.arrival, "--timeout", repr(spec.timeout_s), "--good-latency", repr(spec.good_latency_s),
        "--seed", str(spec.seed), "--json", out, "--priority-header", priority_header,
    ]  # fmt: skip
    if spec.classes != (TrafficClass(),):
        cmd += ["--mix", ",".join(f"{c.name}:{c.weight}" for c in spec.classes)]
    for at, label in spec.events:
        cmd += ["--event", f"{at}:{label}"]
    for ph in spec.phases:
        cmd += ["--phase", f"{ph.seconds!r}:{ph.multiplier!r}:{ph.label}"]
    if spec.progress:
        cmd.append("--progress")
    for c in cpus or ():
        cmd += ["--cpu", str(c)]
    if spec.start_at is not None:
        cmd += ["--start-at", repr(spec.start_at)]
    return cmd


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_load_process(
    spec: LoadSpec,
    *,
    cpus: Sequence[int] | None = None,
    python: str = sys.executable,
    priority_header: str = "X-Priority",
) -> dict[str, Any]:
    """Run the load in a separate process (optionally pinned to ``cpus``) and return its result.

    A separate process keeps the generator's CPU off the caller's event loop and
    lets it be pinned away from the upstream.
    """
    fd, out = tempfile.mkstemp(suffix=".json", prefix="flowctl-loadgen-")
    os.close(fd)
    try:
        subprocess.run(_process_cmd(spec, out, cpus, python, priority_header), check=True, cwd=_REPO)
        with open(out) as fh:
            data: dict[str, Any] = json.load(fh)
        return data
    finally:
        os.unlink(out)


async def run_load_process_async(
    spec: LoadSpec,
    *,
    cpus: Sequence[int] | None = None,
    python: str = sys.executable,
    priority_header: str = "X-Priority",
) -> dict[str, Any]:
    """:func:`run_load_process` without blocking the caller's event loop."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix="flowctl-loadgen-")
    os.close(fd)
    try:
        proc = await asyncio.create_subprocess_exec(*_process_cmd(spec, out, cpus, python, priority_header), cwd=_REPO)
        try:
            rc = await proc.wait()
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if rc != 0:
            raise RuntimeError(f"load generator exited with {rc}")
        with open(out) as fh:
            data: dict[str, Any] = json.load(fh)
        return data
    finally:
        os.unlink(out)


# ---------------------------------------------------------------- self test


_TRIVIAL_SERVER = r"""
import asyncio, os, sys
if len(sys.argv) > 2:
    os.sched_setaffinity(0, {int(sys.argv[2])})
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.b = b""
    def data_received(self, d):
        self.b += d
        while b"\r\n\r\n" in self.b:
            _, _, self.b = self.b.partition(b"\r\n\r\n")
            self.t.write(RESP)
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    print("ready", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""


def selftest(rates: Sequence[float], seconds: float = 4.0, server_cpu: int = 0) -> dict[str, Any]:
    """Drive a trivial raw-asyncio server at increasing rates; report what the generator sustains.

    "Sustained" means: at least 99% of the intended requests answered 2xx, send
    lag p99 under 5 ms and no send overrun. The generator runs in this process
    (pin it with ``--cpu``); the server on ``server_cpu``.
    """
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-c", _TRIVIAL_SERVER, str(port), str(server_cpu)], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        srv.stdout.readline()
        rows = []
        best = 0.0
        for rate in rates:
            r = asyncio.run(run_load(LoadSpec(url=f"http://127.0.0.1:{port}/", rate_rps=rate, duration_s=seconds)))
            lg = r["loadgen"]
            ok_ratio = r["ok"] / max(1, r["sent"])
            sustained = ok_ratio >= 0.99 and (lg["send_lag_p99_ms"] or 0) < 5.0 and lg["send_overrun_s"] < 0.05
            rows.append({"rate_rps": rate, "ok_rps": r["ok_rps"], "ok_ratio": ok_ratio, "sustained": sustained,
                         "admitted_p99_ms": r["admitted_p99_ms"], **lg})  # fmt: skip
            print(f"  selftest {rate:7.0f} rps: ok {r['ok_rps']:7.1f}/s ({ok_ratio:.3f}) send lag p99 "
                  f"{lg['send_lag_p99_ms']:.2f} ms, cpu {lg['cpu_cores']:.2f} cores -> {'ok' if sustained else 'NOT sustained'}",
                  file=sys.stderr, flush=True)  # fmt: skip
            if sustained:
                best = max(best, rate)
            else:
                break
        return {"max_sustained_rps": best, "rows": rows, "affinity": sorted(os.sched_getaffinity(0)), "server_cpu": server_cpu}
    finally:
        srv.terminate()
        srv.wait()


def main(argv: Sequence[str] | None = None) -> int:
    a = _build_parser().parse_args(argv)
    if a.cpu:
        os.sched_setaffinity(0, set(a.cpu))
    if a.selftest:
        other = [c for c in range(os.cpu_count() or 1) if c not in (a.cpu or [])]
        result = selftest([float(x) for x in a.selftest_rates.split(",")], seconds=a.seconds if a.seconds != 10.0 else 4.0,
                          server_cpu=other[0] if other else 0)  # fmt: skip
    else:
        if not a.url or not a.rate:
            print("loadgen: --url and --rate are required", file=sys.stderr)
            return 2
        result = asyncio.run(run_load(spec_from_args(a)))
    text = json.dumps(result, indent=1)
    if a.json_out == "-" or not a.json_out:
        if not a.selftest or a.json_out == "-":
            print(text)
    else:
        with open(a.json_out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
