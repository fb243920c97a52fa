"""A real redis-server for the quota tests: started on a free loopback port, always stopped and reaped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.redis_server import RedisServer
from tests.realenv import need_binary


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` child (fails instead of skipping under FLOWCTL_REQUIRE_REAL=1 when absent)."""
    binary = need_binary("redis-server", "redis-server")
    with RedisServer(binary) as server:
        yield server
