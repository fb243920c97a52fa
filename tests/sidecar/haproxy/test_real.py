"""The haproxy engine with the real HAProxy (Debian's 2.6): proxying, shedding, limits, priorities,
drain, restarts, the admin socket's permissions, and the one-line errors before anything starts.

Every HAProxy here is the engine's child on 127.0.0.1 free ports, and is stopped and reaped by the
engine (``stop()`` kills and waits) or, for the sidecar processes, with its parent (``PR_SET_PDEATHSIG``
and the parent's own drain).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from flowctl.signal import StaticSignal
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
from sidecar.haproxy.engine import HaproxySidecar
from sidecar.haproxy.render import APP, RT_SAMPLE_VAR, SERVER
from sidecar.haproxy.runtime import set_var
from tests.realenv import need_binary, need_root
from tests.sidecar.conftest import REPO, Proc, Upstream, config_for, echo_headers, read_json, wait_http
from bench.ports import free_port

pytestmark = pytest.mark.real

MakeEngine = Callable[..., Awaitable[HaproxySidecar]]


@pytest.fixture
def haproxy_bin() -> str:
    return need_binary("haproxy")


@pytest.fixture
async def make_engine(haproxy_bin: str) -> AsyncIterator[MakeEngine]:
    """``await make_engine(config, signal=...)``: a started HaproxySidecar, stopped (child reaped) after the test."""
    started: list[HaproxySidecar] = []

    async def make(config: SidecarConfig, **kw: Any) -> HaproxySidecar:
        kw.setdefault("signal", StaticSignal("container", utilization=0.2, usage_cores=0.1, limit_cores=0.5, seq=1))
        sc = HaproxySidecar(config, binary=haproxy_bin, **kw)
        started.append(sc)
        await sc.start()
        return sc

    try:
        yield make
    finally:
        for sc in started:
            await sc.stop()
            assert sc.process is None or not sc.process.running


def cfg(up: Upstream, **kw: Any) -> SidecarConfig:
    return config_for(up.url, engine="haproxy", **kw)


def url(sc: HaproxySidecar | Sidecar, path: str) -> str:
    return f"http://127.0.0.1:{sc.listen_port}{path}"


async def until(pred: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# -- proxying as the Python engine does ------------------------------------------------------------

SENT = [("X-Forwarded-For", "10.0.0.1"), ("Via", "1.0 edge"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
        ("Proxy-Authorization", "Basic eA=="), ("X-Multi", "a"), ("X-Multi", "b"), ("X-End", "kept"),
        ("X-Forwarded-Host", "spoofed.example"), ("X-Forwarded-Proto", "https")]  # fmt: skip
COMPARED = ("x-forwarded-for", "via", "keep-alive", "te", "proxy-authorization", "x-multi", "x-end", "x-forwarded-host",
            "x-forwarded-proto", "content-length", "host")  # fmt: skip


async def _exchange(client: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    body = os.urandom(300_000)
    async with client.post(base + "/echo/x?q=1", data=body, headers=list(SENT)) as r:
        data = await r.json()
        hs = echo_headers(data)
        out["request"] = {k: ", ".join(hs[k]) if k in hs else None for k in COMPARED}
        out["path_qs"] = data["path_qs"]
        out["body"] = (data["body_len"], data["body_sha256"] == hashlib.sha256(body).hexdigest())
    async with client.get(base + "/hop") as r:
        out["response"] = {k: ", ".join(r.headers.getall(k)) if k in r.headers else None
                           for k in ("x-conn-listed", "keep-alive", "proxy-authenticate", "trailer", "x-end-to-end",
                                     "x-multi", "via")}  # fmt: skip
        out["hop_body"] = await r.text()
    async with client.get(base + "/gzip") as r:
        out["gzip"] = (r.headers.get("Content-Encoding"), len(await r.read()))
    async with client.get(base + "/chunked") as r:
        out["chunked"] = await r.text()
    async with client.get(base + "/big?n=3000000&len=1") as r:
        out["big"] = (r.headers.get("Content-Length"), len(await r.read()))
    async with client.get(base + "/status/404") as r:
        out["404"] = (r.status, await r.text())
    return out


async def test_headers_and_bodies_pass_as_through_the_python_engine(upstream: Upstream, make_engine: MakeEngine,
                                                                    make_sidecar: Callable[..., Awaitable[Sidecar]]) -> None:  # fmt: skip
    hx = await make_engine(cfg(up=upstream))
    py = await make_sidecar(config_for(upstream.url), limit=False)
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        got_hx = await _exchange(client, url(hx, ""))
        got_py = await _exchange(client, url(py, ""))
    host = got_hx["request"].pop("host"), got_py["request"].pop("host")
    assert host[0] == f"127.0.0.1:{hx.listen_port}" and host[1] == f"127.0.0.1:{py.listen_port}"
    fwd_host = got_hx["request"].pop("x-forwarded-host"), got_py["request"].pop("x-forwarded-host")
    assert fwd_host == host  # the client's X-Forwarded-Host is replaced (trust_forwarded is off)
    assert got_hx == got_py
    assert got_hx["request"]["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert got_hx["request"]["via"] == "1.0 edge, 1.1 flowctl"
    assert got_hx["request"]["keep-alive"] is None and got_hx["request"]["te"] is None
    assert got_hx["request"]["proxy-authorization"] is None
    assert got_hx["response"]["x-conn-listed"] is None  # named in the upstream's Connection header: hop-by-hop
    assert got_hx["body"] == (300_000, True)


# -- shedding: the 503 answers ---------------------------------------------------------------------


async def test_a_full_room_answers_503_with_retry_after_and_the_json_reason(upstream: Upstream,
                                                                             make_engine: MakeEngine) -> None:  # fmt: skip
    sc = await make_engine(cfg(upstream, algorithm="fixed", fixed_limit=1, priority_header="X-Priority", cool_off_s=1.0))
    await until(lambda: sc.setting is not None and sc.setting.rooms.get("default") == 1, what="the default room at 1")
    async with aiohttp.ClientSession() as client:
        busy = asyncio.ensure_future(client.get(url(sc, "/slow?s=1.0")))
        await until(lambda: sc.figures.get("current_sessions", 0) == 1, what="the slow request in service")
        async with client.get(url(sc, "/echo")) as r:  # default: its room (1) is taken
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            assert r.headers["Content-Type"] == "application/json"
            # as the Python engine answers a fixed limiter's shed
            assert await r.json() == {"error": "overloaded", "reason": "limit", "stage": "limit", "retry_after_s": 1.0}
        async with client.get(url(sc, "/echo"), headers={"X-Priority": "critical"}) as r:  # critical: room 3
            assert r.status == 200
        resp = await busy
        assert resp.status == 200
        resp.release()
    await until(lambda: sc.sheds_total.get("default") == 1, what="the shed counted")
    text = await _get_text(f"http://127.0.0.1:{sc.admin_port}/metrics")
    assert 'flowctl_haproxy_shed_total{priority="default",reason="room"} 1.0' in text
    assert 'flowctl_sidecar_errors_total{status="503"} 1.0' in text


async def test_a_queue_timeout_answers_503_with_retry_after_and_the_json_reason(upstream: Upstream,
                                                                                make_engine: MakeEngine) -> None:  # fmt: skip
    # dry-run with one request in service at most: nothing is shed by a room, the second request queues
    sc = await make_engine(cfg(upstream, dry_run=True, max_connections=1, queue_timeout_s=0.3))
    async with aiohttp.ClientSession() as client:
        busy = asyncio.ensure_future(client.get(url(sc, "/slow?s=1.0")))
        await until(lambda: sc.figures.get("current_sessions", 0) == 1, what="the slow request in service")
        async with client.get(url(sc, "/echo")) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            assert await r.json() == {"error": "overloaded", "reason": "queue_timeout", "stage": "queue", "retry_after_s": 1.0}
        resp = await busy
        assert resp.status == 200
        resp.release()
    await until(lambda: sc.figures.get("queue_timeouts_total") == 1, what="the timeout counted")
    text = await _get_text(f"http://127.0.0.1:{sc.admin_port}/metrics")
    assert 'flowctl_haproxy_shed_total{priority="",reason="queue_timeout"} 1.0' in text


async def _get_text(u: str) -> str:
    async with aiohttp.ClientSession() as client, client.get(u) as r:
        return await r.text()


# -- the limits HAProxy runs are the ones the loop set ---------------------------------------------


async def test_haproxy_sums_the_sampled_response_times_the_loop_reads(upstream: Upstream, make_engine: MakeEngine) -> None:
    sig = StaticSignal("container", utilization=0.2, usage_cores=0.1, limit_cores=0.5, seq=1)
    sc = await make_engine(cfg(upstream), signal=sig)
    assert sc.runtime is not None and sc.controller is not None
    before = (await sc.runtime.stats()).rt
    assert before is not None  # the Lua answered "flowctl rt"
    async with aiohttp.ClientSession() as client:
        for _ in range(20):
            async with client.get(url(sc, "/hop")) as r:
                assert r.status == 200
    after = (await sc.runtime.stats()).rt
    assert after is not None
    n, total_us = after[1] - before[1], after[0] - before[0]
    assert n == 20  # every request sampled at first (the per mille: 1000)
    assert 0 < total_us / n < 1_000_000  # a loopback request: between 0 and 1 s
    # the per mille the loop sets is the one HAProxy runs: none sampled at 0 (set by hand here; the loop's
    # next tick would set it back, so the ticks are held)
    async with sc.controller._tick_lock:
        await sc.runtime.apply([set_var(RT_SAMPLE_VAR, 0)])
        start = (await sc.runtime.stats()).rt
        async with aiohttp.ClientSession() as client:
            for _ in range(5):
                async with client.get(url(sc, "/hop")) as r:
                    assert r.status == 200
        end = (await sc.runtime.stats()).rt
    assert start is not None and end is not None and end[1] == start[1]


async def test_the_maxconn_and_rooms_the_loop_sets_are_what_haproxy_reports(upstream: Upstream,
                                                                            make_engine: MakeEngine) -> None:  # fmt: skip
    sig = StaticSignal("container", utilization=0.2, usage_cores=0.1, limit_cores=0.5, seq=1)
    sc = await make_engine(cfg(upstream, max_connections=50, priority_header="X-Priority"), signal=sig)
    assert sc.runtime is not None and sc.controller is not None
    map_path = sc.controller.map_path

    async def reported() -> tuple[int, dict[str, int], list[str]]:
        assert sc.runtime is not None
        state, stat, amap = await sc.runtime.send([f"show servers state {APP}", "show stat", f"show map {map_path}"])
        server = next(ln.split() for ln in state.splitlines() if ln[:1].isdigit() and len(ln.split()) > 5)
        slim = [ln.split(",") for ln in stat.splitlines() if ln.startswith(f"{APP},{SERVER},")][0][6]
        rooms = {ln.split()[1]: int(ln.split()[2]) for ln in amap.splitlines() if ln.strip()}
        return int(slim), rooms, server

    await asyncio.sleep(0.3)  # a few ticks: cold CPU, no ceiling known yet -> max_connections in service
    maxconn, rooms, server = await reported()
    assert (server[1], server[3], server[5]) == (APP, SERVER, "2")  # 2.6's show servers state: running (no maxconn column)
    assert maxconn == sc.setting.maxconn == 50 if sc.setting else False
    assert rooms == dict(sc.setting.rooms) if sc.setting else False
    for _ in range(3):  # hot: two fast readings over the threshold engage the limits (BBR's cold start, 16)
        sig.set(utilization=0.95, utilization_smoothed=0.95)
        await asyncio.sleep(0.15)
    await until(lambda: sc.setting is not None and sc.setting.engaged, what="engaged")
    await asyncio.sleep(0.25)
    maxconn, rooms, _ = await reported()
    assert sc.setting is not None
    assert maxconn == sc.setting.maxconn == 48 and rooms == dict(sc.setting.rooms)  # the largest room
    assert rooms == {"critical": 48, "default": 16, "sheddable": 8}


# -- priorities ------------------------------------------------------------------------------------


async def test_critical_is_dequeued_before_sheddable_under_overload(upstream: Upstream, make_engine: MakeEngine) -> None:
    # dry-run with one request in service at most: nothing is shed, everything queues, the class orders the queue
    sc = await make_engine(cfg(upstream, dry_run=True, max_connections=1, priority_header="X-Priority",
                               queue_timeout_s=10.0))  # fmt: skip
    done: list[str] = []
    async with aiohttp.ClientSession() as client:

        async def one(prio: str, i: int, s: float = 0.05) -> None:
            async with client.get(url(sc, f"/slow?s={s}"), headers={"X-Priority": prio}) as r:
                assert r.status == 200
                await r.read()
            done.append(f"{prio}{i}")

        first = asyncio.ensure_future(one("default", 0, 0.6))  # in service while all nine queue
        await until(lambda: sc.figures.get("current_sessions", 0) == 1, what="one request in service")
        tasks = [first]
        for prio in ("sheddable", "default", "critical"):
            for i in range(3):
                tasks.append(asyncio.ensure_future(one(prio, i)))
                await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
    order = [d.rstrip("0123456789") for d in done[1:]]
    assert order == ["critical"] * 3 + ["default"] * 3 + ["sheddable"] * 3, done


async def test_under_overload_critical_is_served_while_others_are_shed(upstream: Upstream,
                                                                      make_engine: MakeEngine) -> None:  # fmt: skip
    sc = await make_engine(cfg(upstream, algorithm="fixed", fixed_limit=2, priority_header="X-Priority",
                               queue_timeout_s=5.0))  # fmt: skip
    await until(lambda: sc.setting is not None and sc.setting.rooms.get("default") == 2, what="the default room at 2")
    status: dict[str, list[int]] = {"critical": [], "default": [], "sheddable": []}
    async with aiohttp.ClientSession() as client:

        async def one(prio: str) -> None:
            async with client.get(url(sc, "/slow?s=0.3"), headers={"X-Priority": prio}) as r:
                await r.read()
                status[prio].append(r.status)

        tasks = [asyncio.ensure_future(one("default")) for _ in range(2)]
        await until(lambda: sc.figures.get("current_sessions", 0) == 2, what="two in service")
        for prio in ("sheddable", "default", "critical"):
            for _ in range(4):
                tasks.append(asyncio.ensure_future(one(prio)))
                await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
    assert status["sheddable"] == [503] * 4
    assert sorted(status["default"]) == [200, 200, 503, 503, 503, 503]
    assert status["critical"] == [200] * 4  # room 6: served beside the two in service


async def test_streams_pass_through_without_holding_an_admission(upstream: Upstream, make_engine: MakeEngine) -> None:
    sc = await make_engine(cfg(upstream, algorithm="fixed", fixed_limit=1, stream_paths=("/big",)))
    await until(lambda: sc.setting is not None and sc.setting.rooms.get("default") == 1, what="the default room at 1")
    async with aiohttp.ClientSession() as client:
        ws = await client.ws_connect(url(sc, "/ws"), protocols=("echo.v1",))
        await ws.send_str("hi")
        assert (await ws.receive()).data == "echo:hi"
        sse = asyncio.ensure_future(client.get(url(sc, "/slow?s=1.5"), headers={"Accept": "text/event-stream"}))
        await until(lambda: sc.figures.get("stream_sessions", 0) == 2, what="two streams open")
        assert sc.figures.get("current_sessions", 0) == 0
        async with client.get(url(sc, "/echo")) as r:  # the default class's one admission is free
            assert r.status == 200
        async with client.get(url(sc, "/big?n=100000")) as r:  # a configured stream path
            assert r.status == 200 and len(await r.read()) == 100000
        await ws.close()
        resp = await sse
        assert resp.status == 200
        resp.release()


# -- lifecycle: restart, drain, the admin socket ---------------------------------------------------


async def test_haproxy_killed_is_restarted_once_and_driven_again_then_the_sidecar_fails(
    upstream: Upstream, make_engine: MakeEngine
) -> None:
    sc = await make_engine(cfg(upstream, algorithm="fixed", fixed_limit=3))
    assert sc.process is not None and sc.controller is not None and sc.runtime is not None
    await until(lambda: sc.setting is not None and sc.setting.maxconn == 9, what="maxconn 9 (critical's room)")
    first = sc.process.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await until(lambda: sc.controller is not None and sc.controller.pid not in (None, first) and sc.up,
                timeout_s=10, what="a new child")  # fmt: skip
    assert sc.restarts_total == 1
    stat = (await sc.runtime.stats()).row(APP, SERVER)
    assert stat is not None and stat.num("slim") == 9  # re-driven: the restarted child runs the loop's limit
    async with aiohttp.ClientSession() as client, client.get(url(sc, "/echo")) as r:
        assert r.status == 200
    failed = asyncio.ensure_future(sc.failed())
    assert sc.process.pid is not None
    os.kill(sc.process.pid, signal.SIGKILL)
    why = await asyncio.wait_for(failed, 10)
    assert "giving up" in why


async def test_the_admin_socket_is_not_reachable_by_other_users(upstream: Upstream, make_engine: MakeEngine) -> None:
    need_root()
    sc = await make_engine(cfg(upstream))
    assert sc.runtime is not None
    sock = sc.runtime.path
    assert os.stat(sc.run_dir).st_mode & 0o777 == 0o700
    assert os.stat(sock).st_mode & 0o777 == 0o600
    probe = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except PermissionError:\n"
        "    print('denied')\n"
        "else:\n"
        "    print('connected')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, sock], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "denied", out.stderr
    assert (await sc.runtime.stats()).pid == sc.process.pid if sc.process else False  # its owner still gets in


def _sidecar_cmd(upstream_url: str, port: int, admin: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sidecar", "--engine", "haproxy", "--listen", f"127.0.0.1:{port}",
            "--admin", f"127.0.0.1:{admin}", "--upstream", upstream_url, "--probe-interval", "0.1",
            "--log-level", "warning", *extra]  # fmt: skip


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.slow
async def test_sigterm_drains_in_flight_requests_and_exits_0(haproxy_bin: str, upstream_proc: Proc) -> None:
    port, admin = free_port(), free_port()
    p = subprocess.Popen(_sidecar_cmd(upstream_proc.url, port, admin, "--drain-seconds", "15"), cwd=REPO)
    try:
        wait_http(f"http://127.0.0.1:{admin}/healthz", proc=p)
        child = read_json(f"http://127.0.0.1:{admin}/debug/limiter")["proxy"]["haproxy"]["pid"]
        async with aiohttp.ClientSession() as client:

            async def one() -> tuple[int, str]:
                async with client.get(f"http://127.0.0.1:{port}/slow?s=2") as r:
                    return r.status, await r.text()

            tasks = [asyncio.ensure_future(one()) for _ in range(5)]
            deadline = time.monotonic() + 10
            while read_json(f"http://127.0.0.1:{admin}/debug/limiter")["proxy"]["inflight"] < 5:
                assert time.monotonic() < deadline, "requests never reached the upstream"
                await asyncio.sleep(0.05)
            p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while True:
                async with client.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    if r.status == 503:
                        assert await r.text() == "draining\n"
                        break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            await until(lambda: _refused(port), what="the listener closed")
            assert not any(t.done() for t in tasks)
            results = await asyncio.gather(*tasks)
        assert results == [(200, "slow done")] * 5  # no request in flight was cut
        assert await asyncio.to_thread(p.wait, 15) == 0
        assert not os.path.exists(f"/proc/{child}"), "the haproxy child outlived the sidecar"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
async def test_a_second_death_of_haproxy_exits_non_zero(haproxy_bin: str, upstream_proc: Proc) -> None:
    port, admin = free_port(), free_port()
    p = subprocess.Popen(_sidecar_cmd(upstream_proc.url, port, admin), cwd=REPO)
    try:
        wait_http(f"http://127.0.0.1:{admin}/healthz", proc=p)
        for n in range(2):
            pid = read_json(f"http://127.0.0.1:{admin}/debug/limiter")["proxy"]["haproxy"]["pid"]
            os.kill(pid, signal.SIGKILL)
            if n == 0:
                deadline = time.monotonic() + 10
                while read_json(f"http://127.0.0.1:{admin}/debug/limiter")["proxy"]["haproxy"]["pid"] in (pid, None):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        assert await asyncio.to_thread(p.wait, 15) == 1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_port_in_use_or_a_bad_upstream_is_one_line_before_anything_starts(haproxy_bin: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(_sidecar_cmd("http://127.0.0.1:9", port, free_port()), cwd=REPO, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"sidecar: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use"]
    for bad in ("http://a b", "http://127.0.0.1:8080\n    server x 10.0.0.1:80"):
        out = subprocess.run(_sidecar_cmd(bad, free_port(), free_port()), cwd=REPO, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sidecar: invalid configuration: upstream:"), out.stderr
