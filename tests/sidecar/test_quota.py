"""Quotas in the sidecar: --quota (repeatable), FLOWCTL_QUOTA, the TOML list, and the answers on both
listener paths; two sidecars sharing one quota through a real redis-server."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bench.redis_server import RedisServer
from flowctl.errors import ConfigError
from sidecar.config import build_parser, load_config
from tests.realenv import need_binary
from tests.sidecar.conftest import REPO, MakeSidecar, Upstream, admin_url, config_for, url

RULE = "key=header:X-Tenant,rate=10/s,burst=1"


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_quota_flag_repeats_env_splits_on_semicolons_toml_takes_a_list(tmp_path: Path) -> None:
    cfg = load_config(args("--quota", RULE, "--quota", "key=const:all,rate=100/s"), env={})
    assert [r.name for r in cfg.quota] == ["x-tenant", "all"]
    cfg = load_config(args(), env={"FLOWCTL_QUOTA": RULE + ";key=path:/search,rate=6000/min"})
    assert [(r.name, r.count, r.period_s) for r in cfg.quota] == [("x-tenant", 10, 1), ("path:/search", 6000, 60)]
    toml = tmp_path / "sidecar.toml"
    toml.write_text(f'quota = ["{RULE}", "key=const:all,rate=5/s"]\nquota_store = "redis://127.0.0.1:6379/0"\n'
                    'quota_on_error = "closed"\nquota_replicas = 3\n')  # fmt: skip
    cfg = load_config(args("--config", str(toml)), env={})
    assert len(cfg.quota) == 2 and cfg.quota_store == "redis://127.0.0.1:6379/0"
    assert cfg.quota_on_error == "closed" and cfg.quota_replicas == 3 and cfg.quota_timeout_s == 0.02
    assert load_config(args("--quota-replicas", "auto"), env={}).quota_replicas is None


@pytest.mark.parametrize(
    ("argv", "key", "origin"),
    [
        (["--quota", "key=header:X-Tenant,rate=lots"], "quota", "--quota"),
        (["--quota", RULE, "--quota-store", "http://x:1"], "quota_store", "--quota-store"),
        (["--quota-on-error", "maybe"], "quota_on_error", "--quota-on-error"),
        (["--quota-replicas", "0"], "quota_replicas", "--quota-replicas"),
    ],
)
def test_bad_quota_options_name_key_and_origin(argv: list[str], key: str, origin: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(args(*argv), env={})
    assert str(e.value).startswith(key + ":") and origin in str(e.value)
    with pytest.raises(ConfigError, match="^quota_store: given without any quota rule"):
        load_config(args("--quota-store", "redis://127.0.0.1:1/0"), env={})


def test_a_malformed_rule_fails_the_command_at_start_with_one_line() -> None:
    cmd = [sys.executable, "-m", "flowctl", "sidecar", "--quota", "key=header:X-Tenant,rate=100/s,burst=x"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "burst must be an integer" in lines[0], p.stderr


@pytest.mark.parametrize("client_path", ["fast", "aiohttp"])
async def test_over_quota_is_429_on_both_paths(
    client_path: str, upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession
) -> None:
    cfg = config_for(upstream.url, client=client_path, quota=load_config(args("--quota", RULE), env={}).quota)
    sc = await make_sidecar(cfg)
    statuses = []
    for _ in range(3):
        async with client.get(url(sc, "/echo"), headers={"X-Tenant": "a"}) as r:
            statuses.append(r.status)
            if r.status == 429:
                assert r.headers["RateLimit-Policy"] == '"x-tenant";q=10;w=1'
                assert r.headers["Retry-After"] == "1"
                body = await r.json()
                assert body["error"] == "quota" and body["key"] == "a"
    assert statuses == [200, 200, 429]
    async with client.get(url(sc, "/echo")) as r:  # no tenant header: no rule counts it
        assert r.status == 200
    async with client.get(admin_url(sc, "/metrics")) as r:
        text = await r.text()
    assert 'flowctl_sidecar_errors_total{status="429"} 1.0' in text
    assert 'flowctl_quota_requests_total{outcome="local_rejected",rule="x-tenant"} 1.0' in text
    assert sc.limiter is not None and sc.limiter.inflight == 0


@pytest.mark.real
async def test_two_sidecars_share_one_quota_through_redis(
    upstream: Upstream, make_sidecar: MakeSidecar, client: aiohttp.ClientSession
) -> None:
    binary = need_binary("redis-server", "redis-server")
    with RedisServer(binary) as redis:
        rules = load_config(args("--quota", "key=header:X-Tenant,rate=1/s,burst=2"), env={}).quota
        # a store call's bound is 20 ms by default; a fresh redis-server's first calls can take longer on a busy
        # machine (CI, 2026-12-05: "no answer within 20 ms", the sidecar fell back to local): this test is about sharing
        cfg = config_for(upstream.url, quota=rules, quota_store=redis.url, quota_timeout_s=1.0)
        a, b = await make_sidecar(cfg), await make_sidecar(cfg)
        statuses = []
        for sc in (a, b, a, b):
            async with client.get(url(sc, "/echo"), headers={"X-Tenant": "t"}) as r:
                statuses.append(r.status)
        assert statuses == [200, 200, 200, 429]
        assert a.quotas is not None and a.quotas.mode == "store"
        for sc in (a, b):
            await sc.stop()


def test_the_haproxy_engine_refuses_quotas_instead_of_ignoring_them() -> None:
    from sidecar.engine import make_engine

    cfg = load_config(args("--quota", RULE, "--engine", "haproxy"), env={})
    with pytest.raises(ConfigError, match="^quota: the haproxy engine does not enforce quotas"):
        make_engine(cfg)
