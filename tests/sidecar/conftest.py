"""Fixtures for the sidecar: a real aiohttp upstream on loopback and an in-process sidecar in front of it."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import Sidecar
from sidecar.config import HostPort, SidecarConfig
from bench.ports import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GZ_BODY = gzip.compress(b"compressed payload " * 100)


def upstream_app() -> web.Application:
    """Handlers that show what arrived and misbehave on demand."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        )

    async def hop(request: web.Request) -> web.Response:
        resp = web.Response(text="hop")
        resp.headers["Connection"] = "X-Conn-Listed"
        resp.headers["X-Conn-Listed"] = "secret"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["Proxy-Authenticate"] = "Basic"
        resp.headers["Trailer"] = "X-Trailer"
        resp.headers["X-End-To-End"] = "kept"
        resp.headers.add("X-Multi", "a")
        resp.headers.add("X-Multi", "b")
        return resp

    async def gz(request: web.Request) -> web.Response:
        return web.Response(body=GZ_BODY, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(f"part{i};".encode())
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "0"))
        resp = web.StreamResponse(headers={"Content-Length": str(n)} if "len" in request.query else None)
        await resp.prepare(request)
        block = b"\xab" * 65536
        left = n
        while left > 0:
            chunk = block[: min(left, len(block))]
            await resp.write(chunk)
            left -= len(chunk)
        await resp.write_eof()
        return resp

    async def upload(request: web.Request) -> web.Response:
        h = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            n += len(chunk)
        return web.json_response({"n": n, "sha256": h.hexdigest(), "te": request.headers.get("Transfer-Encoding")})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text="slow done")

    async def set_cookie(request: web.Request) -> web.Response:
        resp = web.Response(text="cookie set")
        resp.set_cookie("session", "alice-secret", path="/")
        return resp

    async def cookies(request: web.Request) -> web.Response:
        return web.json_response({"cookie": request.headers.get("Cookie")})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, body=None if code in (204, 304) else b"status")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(protocols=("echo.v1",))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is aiohttp.WSMsgType.TEXT:
                if msg.data == "close":
                    await sock.close(code=4001, message=b"bye")
                else:
                    await sock.send_str("echo:" + msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        return sock

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/hop", hop)
    app.router.add_get("/gzip", gz)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/big", big)
    app.router.add_post("/upload", upload)
    app.router.add_get("/slow", slow)
    app.router.add_get("/set-cookie", set_cookie)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/ws", ws)
    return app


class Upstream:
    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    runner = web.AppRunner(upstream_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Upstream(runner, port)
    finally:
        await runner.cleanup()


# The upstream client the sidecar fixtures use; test_proxy.py runs every test with both.
CLIENT = {"name": "fast"}


@pytest.fixture(params=["fast", "aiohttp"])
def both_upstream_clients(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per upstream client (the proxy's contract is the same on both): a module
    opts in with ``pytestmark = pytest.mark.usefixtures("both_upstream_clients")``."""
    CLIENT["name"] = request.param
    try:
        yield request.param
    finally:
        CLIENT["name"] = "fast"


def config_for(upstream_url: str, **overrides: Any) -> SidecarConfig:
    base = SidecarConfig(
        client=CLIENT["name"],
        listen=HostPort("127.0.0.1", 0),
        admin=HostPort("127.0.0.1", 0),
        upstream=upstream_url,
        probe_interval_s=0.1,
        rejections_kept=10,
    )
    return replace(base, **overrides)


MakeSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def make_sidecar() -> AsyncIterator[MakeSidecar]:
    """``await make_sidecar(config, limiter=..., signal=..., limit=False)`` -> a started Sidecar."""
    started: list[Sidecar] = []

    async def make(config: SidecarConfig, **kw: Any) -> Sidecar:
        sc = Sidecar(config, **kw)
        await sc.start()
        started.append(sc)
        return sc

    try:
        yield make
    finally:
        for sc in started:
            await sc.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


def url(sc: Sidecar, path: str = "/") -> str:
    return f"http://127.0.0.1:{sc.listen_port}{path}"


def admin_url(sc: Sidecar, path: str) -> str:
    return f"http://127.0.0.1:{sc.admin_port}{path}"


def echo_headers(data: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in data["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


# -- a sidecar (and upstream) in subprocesses, for memory, signal and drain tests ----------------

UPSTREAM_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from aiohttp import web
from tests.sidecar.conftest import upstream_app
web.run_app(upstream_app(), host="127.0.0.1", port={port}, print=None, access_log=None, shutdown_timeout=0.5)
"""


class Proc:
    def __init__(self, popen: subprocess.Popen[bytes], port: int, admin_port: int = 0) -> None:
        self.popen = popen
        self.port = port
        self.admin_port = admin_port
        self.url = f"http://127.0.0.1:{port}"

    def vm_hwm_bytes(self) -> int:
        with open(f"/proc/{self.popen.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def wait_http(url_: str, timeout_s: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url_} came up")
        try:
            with urllib.request.urlopen(url_, timeout=1.0) as r:
                r.read()
                return
        except Exception:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url_} not up after {timeout_s} s") from None
            time.sleep(0.05)


@pytest.fixture
def upstream_proc() -> Iterator[Proc]:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-c", UPSTREAM_SCRIPT.format(repo=REPO, port=port)], cwd=REPO)
    proc = Proc(p, port)
    try:
        wait_http(proc.url + "/echo", proc=p)
        yield proc
    finally:
        proc.stop()


def start_sidecar_proc(upstream_url: str, *extra: str, env: dict[str, str] | None = None) -> Proc:
    port, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "sidecar", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
           "--upstream", upstream_url, "--probe-interval", "0.1", "--log-level", "warning", *extra]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})})
    proc = Proc(p, port, admin)
    try:
        wait_http(f"http://127.0.0.1:{admin}/healthz", proc=p)
    except BaseException:
        proc.stop()
        raise
    return proc


def read_json(url_: str) -> Any:
    with urllib.request.urlopen(url_, timeout=5) as r:
        return json.load(r)
