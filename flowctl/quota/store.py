"""The shared store: GCRA in one Lua script on Redis, and the client that runs it.

``RedisStore.debit`` is one ``EVALSHA`` (one round trip) that charges every
key of a request or none, with Redis ``TIME`` as the clock, so replicas
whose clocks differ still share one timeline. Tests pass ``now_us`` to run
the same script on a controlled clock. ``heartbeat`` keeps this replica in a
sorted set and returns how many replicas were seen within the TTL (the local
failure mode divides quotas by it).

The client is ``redis.asyncio`` (imported when a store is created, so the
library works without the ``quota`` extra) over a bounded connection pool,
with no retries of its own: every call is bounded by ``timeout_s`` (connect,
pool wait and reply together) and any failure raises ``QuotaStoreError``.
The circuit breaker and the failure modes are the caller's
(``flowctl.quota.core``).

URLs (``redis.asyncio`` parses them): ``redis://[:password@]host:port/db``,
``rediss://`` (TLS), ``unix:///path.sock?db=0``, and
``redis+sentinel://host:port[,host:port...]/service[/db]`` (the master of
``service`` as Redis Sentinel names it, through ``redis.asyncio.sentinel``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from flowctl.errors import ConfigError, QuotaStoreError
from flowctl.quota.gcra import Debit, Verdict

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["GCRA_SCRIPT", "HEARTBEAT_SCRIPT", "KEY_PREFIX", "QuotaStore", "RedisStore", "check_store_url"]

KEY_PREFIX = "flowctl:quota:"
#: pooled connections opened ahead of traffic when the store (re)appears
WARM_CONNECTIONS = 4

#: KEYS: one per rule. ARGV[1]: now in microseconds, or "" for the server's TIME.
#: Then per key i (1-based): ARGV[3i-1] = T (us), ARGV[3i] = tau (us), ARGV[3i+1] = cost.
#: Returns {allowed 0|1, blocking key (1-based, 0 when allowed), retry_after_us, remaining, reset_us}.
GCRA_SCRIPT = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local new_tats = {}
local remaining = -1
local reset = 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 1])
  local tolerance = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then
    tat = now
  end
  local new_tat = tat + cost * interval
  local ahead = new_tat - now
  if ahead > tolerance + interval then
    local left = math.floor((tolerance + interval - (tat - now)) / interval)
    return {0, i, math.ceil(ahead - tolerance - interval), left, math.ceil(tat - now)}
  end
  new_tats[i] = new_tat
  local left = math.floor((tolerance + interval - ahead) / interval)
  if remaining < 0 or left < remaining then
    remaining = left
  end
  if ahead > reset then
    reset = ahead
  end
end
for i = 1, #KEYS do
  -- expire a second after the TAT has passed (an expired key and a passed TAT are the same)
  local ttl_ms = math.ceil((new_tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', ttl_ms)
end
return {1, 0, 0, remaining, math.ceil(reset)}
"""

#: KEYS[1]: the replicas' sorted set. ARGV[1]: this replica's id, ARGV[2]: TTL in ms, ARGV[3]: "1" to leave.
#: Returns how many replicas sent a heartbeat within the TTL.
HEARTBEAT_SCRIPT = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl_ms = tonumber(ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - ttl_ms)
redis.call('PEXPIRE', KEYS[1], ttl_ms * 2)
return redis.call('ZCARD', KEYS[1])
"""


class QuotaStore(Protocol):
    """Where quotas are kept across replicas (``RedisStore``; a fake in tests)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def debit(self, debits: Sequence[Debit], now_us: int | None = None) -> Verdict:
        """Charge every key or none (``flowctl.quota.gcra``); raises ``QuotaStoreError``."""
        ...

    async def heartbeat(self, replica: str, ttl_s: float, *, leave: bool = False) -> int:
        """Mark ``replica`` alive (or gone) and return the replicas alive; raises ``QuotaStoreError``."""
        ...


def check_store_url(url: str) -> str:
    """``url`` if its scheme is one ``RedisStore`` connects to, else ``ConfigError``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("redis", "rediss", "unix", "redis+sentinel"):
        raise ConfigError(f"quota store: expected redis://HOST:PORT/DB (or rediss://, unix://, redis+sentinel://), got {url!r}")
    if parts.scheme != "unix" and not parts.netloc:
        raise ConfigError(f"quota store: no host in {url!r}")
    return url.strip()


class RedisStore:
    """``QuotaStore`` on Redis through ``redis.asyncio`` (see the module docstring).

    ``timeout_s`` bounds each call whole (default 20 ms); ``max_connections``
    bounds the pool (a call waits for a free connection within its timeout).
    """

    def __init__(self, url: str, *, timeout_s: float = 0.02, max_connections: int = 64, prefix: str = KEY_PREFIX) -> None:
        self.url = check_store_url(url)
        if not (timeout_s > 0):
            raise ConfigError(f"quota store timeout must be > 0 seconds, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.max_connections = int(max_connections)
        self.prefix = prefix
        self._client: Redis | None = None
        self._gcra: Any = None
        self._heartbeat: Any = None
        self._loaded = False  # the GCRA script is known to be in the server's script cache
        self._sentinels: list[Redis] = []  # the clients of a redis+sentinel:// URL's sentinels

    async def start(self) -> None:
        """Create the client and its pool (connections open on first use: a store that is down
        at start-up is a failure of the first call, not of start)."""
        if self._client is not None:
            return
        self._client, self._sentinels = _client(self.url, self.timeout_s, self.max_connections)
        self._gcra = self._client.register_script(GCRA_SCRIPT)
        self._heartbeat = self._client.register_script(HEARTBEAT_SCRIPT)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        sentinels, self._sentinels = self._sentinels, []
        for sentinel in sentinels:
            await sentinel.aclose()

    async def debit(self, debits: Sequence[Debit], now_us: int | None = None) -> Verdict:
        args: list[Any] = ["" if now_us is None else int(now_us)]
        for d in debits:
            args += [repr(float(d.interval_us)), repr(float(d.tolerance_us)), repr(float(d.cost))]
        reply = await self._call(self._gcra, [d.key for d in debits], args)
        try:
            allowed, blocking, retry_us, remaining, reset_us = (int(x) for x in reply)
        except (TypeError, ValueError) as e:
            raise QuotaStoreError(f"quota store: unexpected reply {reply!r}") from e
        return Verdict(bool(allowed), blocking - 1, retry_us / 1e6, max(0, remaining), reset_us / 1e6)

    async def heartbeat(self, replica: str, ttl_s: float, *, leave: bool = False) -> int:
        """Also loads the GCRA script when the server may not have it (first beat, or after a failure:
        a restarted Redis has an empty script cache), so requests do not pay the NOSCRIPT round trips."""
        reply = await self._call(self._heartbeat, [self.prefix + "replicas"], [replica, int(ttl_s * 1000), "1" if leave else "0"])
        if not self._loaded and not leave:
            assert self._client is not None
            await self._call(None, [GCRA_SCRIPT], [])
            self._loaded = True
            await self._warm()
        return int(reply)

    async def _warm(self) -> None:
        """Open a few pooled connections ahead of traffic (best effort): the first requests of a
        load ramp then do not each pay a connect within their timeout."""
        client = self._client
        assert client is not None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(self.timeout_s, 0.5)):
                await asyncio.gather(*(client.ping() for _ in range(min(WARM_CONNECTIONS, self.max_connections))))

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self._client is None:
            raise QuotaStoreError("quota store: not started")
        try:
            async with asyncio.timeout(self.timeout_s):
                if script is None:  # SCRIPT LOAD of keys[0]
                    return await self._client.script_load(keys[0])
                return await script(keys=keys, args=args)
        except TimeoutError:
            self._loaded = False
            raise QuotaStoreError(f"quota store: no answer within {self.timeout_s * 1000:g} ms") from None
        except (OSError, ConnectionError) as e:
            self._loaded = False
            raise QuotaStoreError(f"quota store: {type(e).__name__}: {e}") from e
        except Exception as e:  # redis.exceptions.RedisError and whatever the client raises
            self._loaded = False
            raise QuotaStoreError(f"quota store: {type(e).__name__}: {e}") from e


def _client(url: str, timeout_s: float, max_connections: int) -> tuple[Redis, list[Redis]]:
    """The client for ``url``, and the sentinels' own clients (to close) for a sentinel URL."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise ConfigError("quota store: the redis client is not installed (pip install 'flowctl[quota]')") from None
    # The call's own timeout bounds everything; these keep a dead socket from lingering past it.
    options: dict[str, Any] = {
        "socket_timeout": max(timeout_s, 0.5),
        "socket_connect_timeout": max(timeout_s, 0.5),
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections,
    }
    parts = urlsplit(url)
    if parts.scheme == "redis+sentinel":
        from redis.asyncio.sentinel import Sentinel

        hosts = []
        for hp in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = hp.rpartition(":")
            hosts.append((host or hp, int(port) if port.isdigit() else 26379))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ConfigError(f"quota store: redis+sentinel:// needs a service name: {url!r}")
        db = int(path[1]) if len(path) > 1 and path[1].isdigit() else 0
        password = unquote(parts.password) if parts.password else None
        sentinel = Sentinel(hosts, socket_timeout=options["socket_timeout"], socket_connect_timeout=options["socket_connect_timeout"])
        client: Redis = sentinel.master_for(path[0], db=db, password=password, **options)
        return client, list(sentinel.sentinels)
    pool = aioredis.BlockingConnectionPool.from_url(url, timeout=None, **options)
    return aioredis.Redis.from_pool(pool), []
