"""Exempt paths (default /healthz and /metrics, as the aiohttp middleware's) are proxied without
admission: a probe is never shed and its RT is never a sample of the limiter (a cheap probe would
otherwise set min RT for the whole window)."""

from __future__ import annotations


import aiohttp
import pytest

from flowctl.limit.fixed import FixedLimit
from flowctl.limiter import Limiter, Policy
from flowctl.signal import StaticSignal
from sidecar.config import load_config
from tests.sidecar.conftest import MakeSidecar, Upstream, config_for, url


pytestmark = pytest.mark.usefixtures("both_upstream_clients")  # every test on both upstream clients


def _admitted(limiter: Limiter) -> int:
    return sum(n for (_res, _prio, kind), n in limiter.snapshot().requests.items() if kind == "admitted")


async def test_exempt_paths_bypass_admission(upstream: Upstream, make_sidecar: MakeSidecar,
                                             client: aiohttp.ClientSession) -> None:  # fmt: skip
    limiter = Limiter(StaticSignal(), FixedLimit(1), policy=Policy(cpu_gate=False))
    sc = await make_sidecar(config_for(upstream.url, exempt_paths=("/echo/healthz",)), limiter=limiter)
    for _ in range(3):
        async with client.get(url(sc, "/echo/healthz?probe=1")) as r:
            assert r.status == 200
    assert _admitted(limiter) == 0 and limiter.inflight == 0
    async with client.get(url(sc, "/echo/other")) as r:
        assert r.status == 200
    assert _admitted(limiter) == 1 and limiter.inflight == 0
    async with client.get(url(sc, "/echo/healthz/deeper")) as r:  # exact paths, not prefixes
        assert r.status == 200
    assert _admitted(limiter) == 2


def test_exempt_paths_default_and_none() -> None:
    assert load_config(env={}).exempt_paths == ("/healthz", "/metrics")
    assert load_config(env={"FLOWCTL_EXEMPT_PATHS": ""}).exempt_paths == ()
    assert load_config(env={"FLOWCTL_EXEMPT_PATHS": "/live, /ready"}).exempt_paths == ("/live", "/ready")
