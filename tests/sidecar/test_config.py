"""Configuration: flags > FLOWCTL_* env > TOML > defaults; bad values fail at start with one line naming the key."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from flowctl.errors import ConfigError
from flowctl.limiter.policy import DEFAULT_POLICY
from sidecar.config import (OPTIONS, HostPort, SidecarConfig, build_parser, load_config, parse_bytes,
                            parse_host_port)  # fmt: skip
from sidecar.watch import WatchTarget, parse_watch
from tests.sidecar.conftest import REPO


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_defaults() -> None:
    cfg = load_config(args(), env={})
    assert cfg == SidecarConfig()
    assert cfg.admin.host == "127.0.0.1"  # admin is local by default


def test_the_sidecars_policy_is_the_librarys() -> None:
    """One set of defaults (docs/limiter.md, the knob table): the sidecar's options at their defaults
    give the library's policy, wait budget included."""
    assert SidecarConfig().policy() == DEFAULT_POLICY
    assert DEFAULT_POLICY.wait_rts == 2.0


def test_precedence_flag_over_env_over_toml(tmp_path: Path) -> None:
    toml = tmp_path / "sidecar.toml"
    toml.write_text('upstream = "http://app:1"\nmax_body = "1M"\ndrain_seconds = 5\n[sidecar]\ncpu_threshold = 0.7\n')
    env = {"FLOWCTL_UPSTREAM": "http://app:2", "FLOWCTL_DRAIN_SECONDS": "7"}
    cfg = load_config(args("--config", str(toml), "--upstream", "http://app:3/"), env=env)
    assert cfg.upstream == "http://app:3"  # flag wins (trailing slash dropped)
    assert cfg.drain_seconds == 7.0  # env beats TOML
    assert cfg.max_body_bytes == 1024 * 1024  # TOML beats default
    assert cfg.cpu_threshold == 0.7  # [sidecar] table works too
    cfg2 = load_config(args(), env={**env, "FLOWCTL_CONFIG": str(toml)})
    assert cfg2.upstream == "http://app:2"


def test_every_option_has_flag_and_env() -> None:
    p = build_parser()
    flags = {a for action in p._actions for a in action.option_strings}
    for o in OPTIONS:
        assert o.flag in flags
        assert o.env == "FLOWCTL_" + o.key.upper()


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"FLOWCTL_LISTEN": "nonsense"}, "listen"),
        ({"FLOWCTL_UPSTREAM": "ftp://x"}, "upstream"),
        ({"FLOWCTL_MAX_BODY": "lots"}, "max_body"),
        ({"FLOWCTL_CPU_THRESHOLD": "1.5"}, "cpu_threshold"),
        ({"FLOWCTL_WATCH": "pod:3"}, "watch"),
        ({"FLOWCTL_DRAIN_SECONDS": "-1"}, "drain_seconds"),
        ({"FLOWCTL_DRY_RUN": "maybe"}, "dry_run"),
        ({"FLOWCTL_ALGORITHM": "magic"}, "algorithm"),
        ({"FLOWCTL_QUEUE_ALLOWANCE": "-1"}, "queue_allowance"),
    ],
)
def test_invalid_value_names_key_and_origin(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(args(), env=env)
    msg = str(e.value)
    assert msg.startswith(key + ":")
    assert next(iter(env)) in msg  # where it came from
    assert "\n" not in msg


def test_queue_allowance_is_a_count_or_off() -> None:
    assert load_config(args(), env={}).queue_allowance == 3
    assert load_config(args("--queue-allowance", "off"), env={}).queue_allowance is None
    assert load_config(args(), env={"FLOWCTL_QUEUE_ALLOWANCE": "5"}).queue_allowance == 5


def test_unknown_toml_key_and_bad_toml(tmp_path: Path) -> None:
    bad = tmp_path / "a.toml"
    bad.write_text("upstrem = 'http://x'\n")
    with pytest.raises(ConfigError, match=r"^upstrem: unknown key"):
        load_config(args("--config", str(bad)), env={})
    bad.write_text("upstream = [1, 2]\n")
    with pytest.raises(ConfigError, match=r"^upstream: expected a string"):
        load_config(args("--config", str(bad)), env={})
    bad.write_text("this is not toml\n")
    with pytest.raises(ConfigError, match=r"^config: .* not valid TOML"):
        load_config(args("--config", str(bad)), env={})
    with pytest.raises(ConfigError, match=r"^config: cannot read"):
        load_config(args("--config", str(tmp_path / "missing.toml")), env={})


def test_value_parsers() -> None:
    assert parse_host_port(":8000") == HostPort("0.0.0.0", 8000)
    assert parse_host_port("[::1]:9") == HostPort("::1", 9)
    assert parse_bytes("10M") == 10 * 1024**2 and parse_bytes("512k") == 512 * 1024 and parse_bytes("0") == 0
    assert parse_bytes("1GiB") == 1024**3
    assert parse_watch("process:gunicorn") == WatchTarget("process", "gunicorn")
    assert parse_watch("pid:42") == WatchTarget("pid", "42")
    assert parse_watch("cgroup:/sys/fs/cgroup/cpu/app") == WatchTarget("cgroup", "/sys/fs/cgroup/cpu/app")
    for bad in ("pid:x", "cgroup:relative", "process:", "other"):
        with pytest.raises(ValueError):
            parse_watch(bad)


def test_listen_and_admin_must_differ() -> None:
    with pytest.raises(ConfigError, match=r"^admin:"):
        load_config(args("--listen", "127.0.0.1:9000", "--admin", "127.0.0.1:9000"), env={})


@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "sidecar"], [sys.executable, "-m", "flowctl", "sidecar"]])
def test_cli_fails_at_start_with_one_line(cmd: list[str]) -> None:
    p = subprocess.run([*cmd, "--max-body", "huge"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "max_body" in lines[0] and "--max-body" in lines[0]


def test_flowctl_sidecar_is_the_sidecars_own_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``flowctl sidecar ARGS`` hands ARGS to ``python -m sidecar``'s parser: the same options and
    help, and the same one-line configuration errors (exit 2)."""
    from flowctl.cli import main as flowctl_main

    with pytest.raises(SystemExit) as exc:
        flowctl_main(["sidecar", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: flowctl sidecar")
    for flag in {s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")}:
        assert flag in out
    assert flowctl_main(["sidecar", "--listen", "nowhere"]) == 2
    assert capsys.readouterr().err.startswith("flowctl sidecar: invalid configuration: listen")
