"""The engine seam: --engine python | haproxy | auto, and what each builds (nothing started)."""

from __future__ import annotations

import argparse

import pytest

from flowctl.errors import ConfigError
from sidecar.app import Sidecar
from sidecar.config import add_arguments, load_config
from sidecar.engine import make_engine, resolve_engine
from sidecar.haproxy.engine import HaproxySidecar
from tests.sidecar.haproxy.helpers import loopback_config


def test_auto_picks_haproxy_when_installed() -> None:
    assert resolve_engine("auto", haproxy_found=True) == "haproxy"
    assert resolve_engine("auto", haproxy_found=False) == "python"
    assert resolve_engine("python", haproxy_found=True) == "python"
    assert resolve_engine("haproxy", haproxy_found=False) == "haproxy"  # and start() says it is missing


def test_make_engine_builds_the_named_engine() -> None:
    assert isinstance(make_engine(loopback_config()), Sidecar)
    assert isinstance(make_engine(loopback_config(engine="haproxy")), HaproxySidecar)


def test_the_flag_and_its_environment_variable() -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert load_config(p.parse_args([]), env={}).engine == "python"
    assert load_config(p.parse_args([]), env={"FLOWCTL_ENGINE": "haproxy"}).engine == "haproxy"
    assert load_config(p.parse_args(["--engine", "auto", "--queue-timeout", "0.5"]), env={}).queue_timeout_s == 0.5
    with pytest.raises(ConfigError, match="engine"):
        load_config(p.parse_args(["--engine", "envoy"]), env={})


async def test_a_missing_haproxy_is_one_clear_error_before_anything_starts(tmp_path: object) -> None:
    sc = HaproxySidecar(loopback_config(engine="haproxy"), binary=f"{tmp_path}/no-haproxy-here")
    from flowctl.errors import DataPlaneError

    with pytest.raises(DataPlaneError, match="no haproxy binary"):
        await sc.start()
    await sc.stop()
    assert sc.limiter is None and sc.run_dir == ""  # nothing was built
