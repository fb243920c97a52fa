"""The sidecar as a process: bounded memory while streaming 50 MB, and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import time

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.sidecar.conftest import Proc, read_json, start_sidecar_proc

MB = 1024 * 1024


@pytest.mark.slow
async def test_50mb_streams_both_ways_with_bounded_memory(upstream_proc: Proc) -> None:
    sc = start_sidecar_proc(upstream_proc.url)
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(sc.url + "/echo") as r:  # warm up every code path once
                await r.read()
            base_bytes = sc.vm_hwm_bytes()

            block = bytes(range(256)) * 256  # 64 KiB
            total = 50 * MB
            h = hashlib.sha256()

            async def body() -> AsyncIterator[bytes]:
                sent = 0
                while sent < total:
                    h.update(block)
                    yield block
                    sent += len(block)

            async with client.post(sc.url + "/upload", data=body(), headers={"Content-Length": str(total)}) as r:
                up = await r.json()
            assert up["n"] == total and up["sha256"] == h.hexdigest()

            got = 0
            async with client.get(sc.url + f"/big?n={total}&len=1") as r:
                assert r.headers["Content-Length"] == str(total)
                async for chunk in r.content.iter_chunked(MB):
                    got += len(chunk)
            assert got == total
            async with client.get(sc.url + f"/big?n={total}") as r:  # chunked, no length
                got = 0
                async for chunk in r.content.iter_chunked(MB):
                    got += len(chunk)
            assert got == total
        growth = sc.vm_hwm_bytes() - base_bytes
        print(f"peak RSS growth {growth / MB:.1f} MB")
        assert growth < 16 * MB, f"proxy peak RSS grew by {growth / MB:.1f} MB for 3 x 50 MB bodies"
    finally:
        assert sc.stop() == 0


def _connect_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.slow
async def test_sigterm_drains_in_flight_requests_and_exits_0(upstream_proc: Proc) -> None:
    sc = start_sidecar_proc(upstream_proc.url, "--drain-seconds", "15")
    try:
        assert read_json(f"http://127.0.0.1:{sc.admin_port}/debug/limiter")["draining"] is False
        async with aiohttp.ClientSession() as client:

            async def one() -> tuple[int, str]:
                async with client.get(sc.url + "/slow?s=2") as r:
                    return r.status, await r.text()

            tasks = [asyncio.ensure_future(one()) for _ in range(5)]
            deadline = time.monotonic() + 10
            while read_json(f"http://127.0.0.1:{sc.admin_port}/debug/limiter")["proxy"]["inflight"] < 5:
                assert time.monotonic() < deadline, "requests never reached the upstream"
                await asyncio.sleep(0.05)

            sc.popen.send_signal(signal.SIGTERM)
            # readyz turns 503 and the proxy port refuses new connections, while the 5 are still running
            deadline = time.monotonic() + 5
            while True:
                try:
                    async with client.get(f"http://127.0.0.1:{sc.admin_port}/readyz") as r:
                        if r.status == 503:
                            assert await r.text() == "draining\n"
                            break
                except aiohttp.ClientConnectionError:
                    pytest.fail("admin listener closed before the drain finished")
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert await asyncio.to_thread(_connect_refused, sc.port)
            assert not any(t.done() for t in tasks)

            results = await asyncio.gather(*tasks)
        assert results == [(200, "slow done")] * 5  # no admitted request was cut
        assert await asyncio.to_thread(sc.popen.wait, 15) == 0
    finally:
        sc.stop()


@pytest.mark.slow
async def test_drain_deadline_bounds_the_exit(upstream_proc: Proc) -> None:
    sc = start_sidecar_proc(upstream_proc.url, "--drain-seconds", "0.5")
    try:
        async with aiohttp.ClientSession() as client:
            task = asyncio.ensure_future(client.get(sc.url + "/slow?s=30"))
            while read_json(f"http://127.0.0.1:{sc.admin_port}/debug/limiter")["proxy"]["inflight"] < 1:
                await asyncio.sleep(0.05)
            sc.popen.send_signal(signal.SIGTERM)
            # exits 0 within 20 s although the request in flight would take 30 s: the drain deadline bounds it
            assert await asyncio.to_thread(sc.popen.wait, 20) == 0
            with pytest.raises(aiohttp.ClientError):
                r = await task
                await r.read()
    finally:
        sc.stop()
