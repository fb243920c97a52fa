"""The forwarding path against a real aiohttp upstream on loopback (no limiter: limit=False)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from sidecar.headers import VIA, connection_tokens, request_headers, response_headers
from bench.ports import free_port
from tests.sidecar.conftest import GZ_BODY, MakeSidecar, Upstream, config_for, echo_headers, url


pytestmark = pytest.mark.usefixtures("both_upstream_clients")  # every test on both upstream clients


async def test_get_with_query_and_body_roundtrip(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    async with client.post(URL(url(sc, "/echo/a%20b?x=1&y=%2F"), encoded=True), data=b"hello") as r:
        assert r.status == 200
        data = await r.json()
    assert data["method"] == "POST"
    assert data["path_qs"] == "/echo/a%20b?x=1&y=%2F"  # the raw path is passed as sent
    assert data["body_len"] == 5


async def test_request_header_hygiene(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    headers = {
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9v",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "Via": "1.0 edge",
        "X-Keep": "yes",
        "Accept-Encoding": "gzip",
    }
    async with client.get(url(sc, "/echo"), headers=headers, skip_auto_headers=("User-Agent",)) as r:
        got = echo_headers(await r.json())
    for gone in ("x-drop-me", "keep-alive", "te", "proxy-authorization"):
        assert gone not in got, gone
    assert got["x-keep"] == ["yes"]
    assert got["accept-encoding"] == ["gzip"]  # end-to-end: passed, not replaced by the client library's
    assert got["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]  # not trusted by default
    assert got["x-forwarded-host"] == [f"127.0.0.1:{sc.listen_port}"]
    assert got["via"] == ["1.0 edge, " + VIA]
    assert got["host"] == [f"127.0.0.1:{sc.listen_port}"]  # Host passes through
    assert "user-agent" not in got and "cookie" not in got  # nothing added by the proxy's client


async def test_trust_forwarded_keeps_proto_and_host(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url, trust_forwarded=True), limit=False)
    async with client.get(url(sc, "/echo"), headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example"}) as r:
        got = echo_headers(await r.json())
    assert got["x-forwarded-proto"] == ["https"]
    assert got["x-forwarded-host"] == ["shop.example"]


async def test_response_header_hygiene(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    async with client.get(url(sc, "/hop")) as r:
        assert r.status == 200
        h = r.headers
        assert "X-Conn-Listed" not in h and "Keep-Alive" not in h and "Proxy-Authenticate" not in h
        assert "Trailer" not in h
        assert h["X-End-To-End"] == "kept"
        assert h.getall("X-Multi") == ["a", "b"]
        assert h["Via"] == VIA
        assert await r.text() == "hop"


async def test_content_encoding_and_length_pass_through(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    async with client.get(url(sc, "/gzip"), headers={"Accept-Encoding": "gzip"}) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Content-Length"] == str(len(GZ_BODY))
        assert await r.read() == GZ_BODY  # still compressed: not decoded by the proxy


async def test_chunked_response_and_request(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    async with client.get(url(sc, "/chunked")) as r:
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert await r.read() == b"part0;part1;part2;part3;part4;"

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    async with client.post(url(sc, "/upload"), data=gen()) as r:
        data = await r.json()
    assert data["n"] == 10000
    assert data["te"] == "chunked"


async def test_head_keeps_content_length_and_sends_no_body(upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.write(b"HEAD /gzip HTTP/1.1\r\nHost: x\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {len(GZ_BODY)}".encode() in head
    assert rest.startswith(b"HTTP/1.1 204")  # no body bytes between the two responses


async def test_expect_100_continue_is_answered_by_the_proxy(upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(config_for(upstream.url, max_body_bytes=100), limit=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    # over max_body: 413 at once, no 100 Continue, the body is never requested
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\nExpect: 100-continue\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()


async def test_status_codes_pass_through(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    for code in (201, 204, 304, 404, 500, 503):
        async with client.get(url(sc, f"/status/{code}"), allow_redirects=False) as r:
            assert r.status == code


async def test_no_cookie_leak_between_clients(upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    """Client A gets a Set-Cookie; client B (no cookies) must not have it replayed to the upstream."""
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as alice:
        async with alice.get(url(sc, "/set-cookie")) as r:
            assert "alice-secret" in r.headers["Set-Cookie"]  # passed back to the client that got it
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bob:
        async with bob.get(url(sc, "/cookies")) as r:
            assert (await r.json())["cookie"] is None
    assert sc.proxy is not None
    assert len(sc.proxy.session.cookie_jar) == 0


async def test_websocket_echo_and_close_code(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    async with client.ws_connect(url(sc, "/ws"), protocols=("echo.v1",)) as ws:
        assert ws.protocol == "echo.v1"
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive(timeout=5)).data == b"\x03\x02\x01"
        await ws.send_str("close")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 4001
    assert sc.proxy is not None
    for _ in range(100):
        if sc.proxy.inflight == 0:
            break
        await asyncio.sleep(0.02)
    assert sc.proxy.inflight == 0


async def test_upstream_refused_is_502_fast(make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # A long connect timeout: a refusal must answer 502 at once; waiting out the timeout would be a 504.
    sc = await make_sidecar(config_for(dead, connect_timeout_s=60.0), limit=False)
    async with client.get(url(sc, "/x")) as r:
        assert r.status == 502
        body = await r.json()
    assert "unreachable" in body["detail"]
    assert sc.proxy is not None and sc.proxy.errors_total["502"] == 1


async def test_upstream_read_timeout_is_504(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url, read_timeout_s=0.2), limit=False)
    async with client.get(url(sc, "/slow?s=3")) as r:
        assert r.status == 504


async def test_upstream_total_timeout_is_504(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url, total_timeout_s=0.2), limit=False)
    async with client.get(url(sc, "/slow?s=3")) as r:
        assert r.status == 504


async def test_connect_timeout_is_504(make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    # 192.0.2.0/24 (TEST-NET-1) is never routed: the connect hangs until the timeout
    # (or fails at once with "unreachable" where no route exists, which is a 502).
    sc = await make_sidecar(config_for("http://192.0.2.1:81", connect_timeout_s=0.2), limit=False)
    async with client.get(url(sc, "/x")) as r:
        assert r.status in (504, 502)


async def test_declared_body_over_max_is_413(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url, max_body_bytes=1000), limit=False)
    async with client.post(url(sc, "/upload"), data=b"x" * 1001) as r:
        assert r.status == 413
    async with client.post(url(sc, "/upload"), data=b"x" * 1000) as r:
        assert r.status == 200


async def test_chunked_body_over_max_is_413(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url, max_body_bytes=5000), limit=False)

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    async with client.post(url(sc, "/upload"), data=gen()) as r:
        assert r.status == 413
    async with client.get(url(sc, "/echo")) as r:  # still serving
        assert r.status == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",  # a header field too large
        b"GET /" + b"p" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a request line too long
        b"GET /echo HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",  # no colon
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n",  # NUL in a value
        b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",  # conflicting lengths
        b"GET /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # TLS on a plain port
    ],
    ids=["big-header", "long-line", "no-colon", "nul", "two-lengths", "bad-chunk", "tls"],
)
async def test_malformed_requests_get_4xx_and_never_crash(raw: bytes, upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url, max_header_bytes=8190), limit=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    if data:  # some garbage (TLS) may just be dropped; anything answered must be a 4xx
        status = int(data.split(b" ", 2)[1])
        assert 400 <= status < 500, data[:200]
    async with client.get(url(sc, "/echo")) as r:
        assert r.status == 200


async def test_upstream_breaking_mid_stream_cuts_the_client(make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    """After headers are sent, a broken upstream must not look like a complete response."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:  # the readiness probe's bare TCP connect
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"186a0\r\n" + b"z" * 50000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sc = await make_sidecar(config_for(f"http://127.0.0.1:{port}"), limit=False)
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(url(sc, "/x")) as r:
                await r.read()
    finally:
        server.close()
        await server.wait_closed()


async def test_keep_alive_to_upstream_reuses_connections(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url, max_connections=4), limit=False)
    for _ in range(20):
        async with client.get(url(sc, "/echo")) as r:
            await r.read()
    assert sc.proxy is not None
    connector = sc.proxy.session.connector
    assert connector is not None and connector.limit == 4


async def test_large_body_sha_roundtrip(upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    payload = bytes(range(256)) * 4096  # 1 MiB
    async with client.post(url(sc, "/upload"), data=payload) as r:
        data = await r.json()
    assert data == {"n": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "te": None}
    async with client.get(url(sc, "/big?n=3000000&len=1")) as r:
        assert r.headers["Content-Length"] == "3000000"
        assert len(await r.read()) == 3000000


def test_header_helpers_units() -> None:
    from multidict import CIMultiDict

    assert connection_tokens(["close, X-A", " x-b "]) == {"close", "x-a", "x-b"}
    h = CIMultiDict([("Connection", "X-A"), ("X-A", "1"), ("X-B", "2"), ("Proxy-Foo", "3"), ("Upgrade", "h2c")])
    out = request_headers(h, peer="10.0.0.1", scheme="http", host="svc")
    assert "X-A" not in out and "Proxy-Foo" not in out and "Upgrade" not in out and out["X-B"] == "2"
    assert out["X-Forwarded-For"] == "10.0.0.1" and out["Via"] == VIA
    resp = response_headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Transfer-Encoding", "chunked")])
    assert resp.getall("Set-Cookie") == ["a=1", "b=2"] and "Transfer-Encoding" not in resp


def test_the_sidecar_and_the_middleware_shed_with_the_same_rejection_parts() -> None:
    import json
    import math
    from types import SimpleNamespace

    import flowctl.aiohttp
    import flowctl.http
    import sidecar.proxy

    assert vars(sidecar.proxy)["rejection_parts"] is flowctl.http.rejection_parts  # one shared shape
    # the middleware sends rejection_bytes, the bytes of the JSON of rejection_parts (tests/test_http.py)
    assert vars(flowctl.aiohttp)["rejection_bytes"] is flowctl.http.rejection_bytes
    shed = SimpleNamespace(reason=SimpleNamespace(trigger="cpu", stage="limit"), retry_after_s=math.inf)
    r = flowctl.aiohttp.rejection_response(shed, status=429, reason_header="X-Flowctl-Reason")  # type: ignore[arg-type]
    assert r.status == 429 and r.headers["Retry-After"] == "1" and r.headers["X-Flowctl-Reason"] == "cpu"
    assert r.text is not None and json.loads(r.text) == {"error": "overloaded", "reason": "cpu", "stage": "limit", "retry_after_s": 1.0}
