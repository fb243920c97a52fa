"""A Redis Sentinel URL (redis+sentinel://) reaches the master that a real sentinel names."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bench.ports import free_port
from bench.redis_server import RedisServer
from flowctl.quota.gcra import Debit
from flowctl.quota.store import RedisStore
from tests.realenv import need_binary

pytestmark = pytest.mark.real


async def test_sentinel_url_debits_on_the_master(redis_server: RedisServer) -> None:
    binary = need_binary("redis-server", "redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="flowctl-sentinel-") as tmp:
        conf = Path(tmp) / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
            f"sentinel monitor flowctl 127.0.0.1 {redis_server.port} 1\n"
        )
        proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            sentinel = RedisServer(binary, port=port)  # only for its PING wait
            deadline = time.monotonic() + 10
            while not sentinel.ping():
                assert proc.poll() is None and time.monotonic() < deadline, "sentinel did not start"
                time.sleep(0.05)
            store = RedisStore(f"redis+sentinel://127.0.0.1:{port}/flowctl/0", timeout_s=2.0)
            await store.start()
            try:
                d = [Debit("flowctl:quota:sentinel:x", 1e6, 0.0, 1.0)]
                assert (await store.debit(d)).allowed
                assert not (await store.debit(d)).allowed
                assert await store.heartbeat("r1", 3.0) == 1
            finally:
                await store.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
