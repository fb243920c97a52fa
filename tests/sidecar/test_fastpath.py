"""The fast listener on raw sockets: pipelining, hand-over to aiohttp mid-connection, close and drain."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from sidecar.app import Sidecar
from tests.sidecar.conftest import MakeSidecar, Upstream, config_for, url


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length or chunked body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        body = b"".join(parts)
    else:
        body = b""
    return status, headers, body


def fast(sc: Sidecar) -> int:
    """How many connections the fast listener handed to aiohttp so far."""
    assert sc._fast is not None  # noqa: SLF001
    return sc._fast.handed_over  # noqa: SLF001


async def test_pipelined_requests_are_answered_in_order(upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    reqs = b"".join(
        b"POST /echo/%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (i, i, b"a" * i) for i in range(1, 6)
    )
    writer.write(reqs)
    await writer.drain()
    for i in range(1, 6):
        status, _, body = await read_response(reader)
        data = json.loads(body)
        assert status == 200 and data["path_qs"] == f"/echo/{i}" and data["body_len"] == i
    assert fast(sc) == 0  # all plain: never left the fast path
    writer.close()


async def test_hand_over_mid_connection_keeps_order_and_behaviour(upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    """A plain request, then a chunked upload on the same connection: the second goes to aiohttp."""
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.write(
        b"GET /echo/first HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo/second HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        b"GET /echo/third HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    await writer.drain()
    seen = []
    for _ in range(3):
        status, _, body = await read_response(reader)
        assert status == 200
        data = json.loads(body)
        seen.append((data["path_qs"], data["body_len"]))
    assert seen == [("/echo/first", 0), ("/echo/second", 5), ("/echo/third", 0)]
    assert fast(sc) == 1
    writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /echo HTTP/1.0\r\nHost: x\r\n\r\n",  # HTTP/1.0
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",  # Expect
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + b"b" * 70000,  # a large body
    ],
    ids=["http10", "expect", "large-body"],
)
async def test_not_plain_requests_go_to_aiohttp(raw: bytes, upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.write(raw)
    await writer.drain()
    status, _, body = await read_response(reader)
    if status == 100:
        status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["method"] in ("GET", "POST")
    assert fast(sc) == 1
    writer.close()


async def test_a_head_split_over_reads_is_served(upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.write(b"GET /echo/split HTTP/1.1\r\nHo")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"st: x\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["path_qs"] == "/echo/split"
    writer.close()


async def test_connection_close_is_honoured(upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the sidecar
    writer.close()


async def test_drain_closes_idle_fast_connections_and_refuses_new_ones(upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert await sc.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # the idle keep-alive connection was closed
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.close()


async def test_fast_path_chunks_a_response_of_unknown_length(upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    async with aiohttp.ClientSession() as client, client.get(url(sc, "/chunked")) as r:
        assert r.status == 200 and r.headers.get("Transfer-Encoding") == "chunked"
        assert len(await r.read()) > 0
    assert fast(sc) == 0


async def test_half_close_is_answered_then_closed(upstream: Upstream, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(config_for(upstream.url), limit=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.listen_port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    writer.write_eof()
    status, _, _ = await read_response(reader)
    assert status == 200
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
