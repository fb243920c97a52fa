"""Sidecar configuration: flags > ``FLOWCTL_*`` environment > TOML file > defaults.

Every option has one key (``max_body``), one flag (``--max-body``) and one
environment variable (``FLOWCTL_MAX_BODY``); the TOML file uses the keys at its
top level or under a ``[sidecar]`` table. ``load_config`` returns a validated,
frozen ``SidecarConfig`` or raises ``ConfigError`` whose one-line message names
the bad key and where its value came from.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from flowctl.errors import ConfigError
from flowctl.limit import ALGORITHMS, FIXED_LIMIT
from flowctl.limiter.policy import DEFAULT_POLICY, Policy
from flowctl.quota.rules import QuotaRule, parse_rules
from flowctl.quota.store import check_store_url

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "HostPort",
    "Option",
    "SidecarConfig",
    "add_arguments",
    "load_config",
    "parse_bytes",
    "parse_host_port",
]

ENV_PREFIX = "FLOWCTL_"


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen address; ``port`` 0 means "pick a free port"."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """The validated sidecar configuration (units in the field names)."""

    listen: HostPort = HostPort("0.0.0.0", 8000)
    upstream: str = "http://127.0.0.1:8080"
    admin: HostPort = HostPort("127.0.0.1", 9901)
    watch: str = "self"
    view: str = "container"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    total_timeout_s: float = 0.0
    max_body_bytes: int = 100 * 1024 * 1024
    max_header_bytes: int = 8190
    max_connections: int = 1024
    max_clients: int = 10000
    header_timeout_s: float = 20.0
    body_timeout_s: float = 30.0
    upstream_keepalive_s: float = 30.0
    drain_seconds: float = 25.0
    cpu_threshold: float = DEFAULT_POLICY.cpu_threshold
    cool_off_s: float = DEFAULT_POLICY.cool_off_s
    queue_allowance: int | None = DEFAULT_POLICY.queue_allowance
    period_gate: bool = DEFAULT_POLICY.period_gate
    algorithm: str = "bbr"
    fixed_limit: int = FIXED_LIMIT
    dry_run: bool = False
    priority_header: str = ""
    resource: str = "default"
    sample_interval_s: float = 0.1
    rejections_kept: int = 100
    probe_interval_s: float = 1.0
    health_path: str = ""
    trust_forwarded: bool = False
    stream_paths: tuple[str, ...] = ()
    exempt_paths: tuple[str, ...] = ("/healthz", "/metrics")
    uvloop: str = "auto"
    client: str = "fast"
    log_level: str = "info"
    engine: str = "python"
    queue_timeout_s: float = 1.0
    quota: tuple[QuotaRule, ...] = ()
    quota_store: str = ""
    quota_on_error: str = "local"
    quota_replicas: int | None = None
    quota_timeout_s: float = 0.02

    def policy(self) -> Policy:
        """The admission ``Policy``: the library's defaults with this config's options; a fixed or
        gradient algorithm runs ungated (a plain concurrency limiter)."""
        return replace(DEFAULT_POLICY, cpu_threshold=self.cpu_threshold, cool_off_s=self.cool_off_s,
                       queue_allowance=self.queue_allowance, period_gate=self.period_gate,
                       cpu_gate=self.algorithm == "bbr")  # fmt: skip


# -- value parsers: each raises ValueError with a short explanation ----------------------------


def parse_host_port(text: str) -> HostPort:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6]:PORT``."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port_n = int(port)
    if not 0 <= port_n <= 65535:
        raise ValueError(f"port {port_n} out of range 0..65535")
    return HostPort(host or "0.0.0.0", port_n)


_BYTE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_bytes(text: str) -> int:
    """A byte count: ``1048576``, ``512k``, ``10M``, ``1G`` (binary units); 0 disables."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in ("k", "m", "g") else ""
    number = t[: len(t) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a size like 10M, got {text!r}") from None
    if value < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return int(value * _BYTE_UNITS[unit])


# A host name, an IPv4 address or a bracketed IPv6 literal; a prefix of unreserved path characters.
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~-]*)*")


def _parse_upstream(text: str) -> str:
    text = text.strip()
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"must not contain spaces or control characters: {text!r}")
    parts = urlsplit(text)
    host = parts.netloc.rsplit("@", 1)[-1].rpartition(":")[0] if parts.port is not None else parts.netloc
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or not _HOST.fullmatch(host):
        raise ValueError(f"expected http://HOST[:PORT][/PREFIX], got {text!r}")
    if not _PREFIX.fullmatch(parts.path):
        raise ValueError(f"the path prefix may hold only letters, digits and ._~-/, got {parts.path!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"must not have a query or fragment: {text!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as e:
        raise ValueError(str(e)) from None
    return text.rstrip("/")


def _parse_watch(text: str) -> str:
    from sidecar.watch import parse_watch

    parse_watch(text)
    return text.strip()


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        v = text.strip().lower()
        if v not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return v

    return parse


def _allowance(text: str) -> int | None:
    return None if text.strip().lower() == "off" else _number(int, 0, 1000)(text)


def _number(kind: type[int] | type[float], lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            v = kind(text.strip()) if kind is float else int(text.strip(), 10)
        except ValueError:
            raise ValueError(f"expected {'a number' if kind is float else 'an integer'}, got {text!r}") from None
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise ValueError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text!r}")
        if hi is not None and v > hi:
            raise ValueError(f"must be <= {hi:g}, got {text!r}")
        return v

    return parse


def _bool(text: str) -> bool:
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _header_name(text: str) -> str:
    v = text.strip()
    if v and not all(c.isalnum() or c in "-_" for c in v):
        raise ValueError(f"not a header name: {text!r}")
    return v


def _path_prefixes(text: str) -> tuple[str, ...]:
    """Comma-separated path prefixes, each starting with '/' (empty: none)."""
    out = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in out:
        if not p.startswith("/"):
            raise ValueError(f"each prefix must start with '/', got {p!r}")
        if not _PREFIX.fullmatch(p):
            raise ValueError(f"a prefix may hold only letters, digits and ._~-/, got {p!r}")
    return out


def _quota_rules(text: str) -> tuple[QuotaRule, ...]:
    """Quota rules separated by ';' (one rule uses ','); see flowctl.quota.rules."""
    return parse_rules(r for r in text.split(";") if r.strip())


def _quota_store(text: str) -> str:
    return check_store_url(text) if text.strip() else ""


def _replicas(text: str) -> int | None:
    return None if text.strip().lower() == "auto" else _number(int, 1)(text)


def _path(text: str) -> str:
    v = text.strip()
    if v and not v.startswith("/"):
        raise ValueError(f"must start with '/', got {text!r}")
    return v


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration key: its flag, environment variable, parser and help."""

    key: str
    field: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


OPTIONS: tuple[Option, ...] = (
    Option("listen", "listen", parse_host_port, "proxy listen address (HOST:PORT)", "HOST:PORT"),
    Option("upstream", "upstream", _parse_upstream, "the app's URL, e.g. http://127.0.0.1:8080", "URL"),
    Option("admin", "admin", parse_host_port, "admin listener: /metrics /healthz /readyz /debug/limiter", "HOST:PORT"),
    Option("watch", "watch", _parse_watch, "whose CPU: self | pid:N | process:NAME | cmdline:REGEX | cgroup:PATH", "TARGET"),
    Option("view", "view", _choice("container", "host", "lxcfs"), "CPU view that gates shedding", "VIEW"),
    Option("connect_timeout", "connect_timeout_s", _number(float, 0, lo_open=True), "upstream connect timeout, seconds", "S"),
    Option("read_timeout", "read_timeout_s", _number(float, 0, lo_open=True), "upstream socket read timeout, seconds", "S"),
    Option("total_timeout", "total_timeout_s", _number(float, 0), "whole upstream exchange timeout, seconds (0: none)", "S"),
    Option("max_body", "max_body_bytes", parse_bytes, "largest request body, e.g. 10M (0: unlimited); larger -> 413", "SIZE"),
    Option("max_header", "max_header_bytes", _number(int, 256, 1 << 20), "largest request line / header field, bytes", "N"),
    Option("max_connections", "max_connections", _number(int, 1), "upstream connection pool size (TCPConnector limit)", "N"),
    Option("max_clients", "max_clients", _number(int, 1), "open client connections at most; more are closed at once (counted)", "N"),
    Option("header_timeout", "header_timeout_s", _number(float, 0, 3600, lo_open=True), "a request head must arrive whole within this, seconds; else 408 and close", "S"),
    Option("body_timeout", "body_timeout_s", _number(float, 0, 3600, lo_open=True), "close a request body with no new byte for this long, seconds", "S"),
    Option("upstream_keepalive", "upstream_keepalive_s", _number(float, 0), "idle upstream keep-alive, seconds", "S"),
    Option("drain_seconds", "drain_seconds", _number(float, 0), "on SIGTERM, wait this long for in-flight requests", "S"),
    Option("cpu_threshold", "cpu_threshold", _number(float, 0, 1, lo_open=True), "shed above this CPU utilization (0..1]", "RATIO"),
    Option("cool_off", "cool_off_s", _number(float, 0), "keep shedding this long after the last CPU-gated rejection", "S"),
    Option("queue_allowance", "queue_allowance", _allowance, "requests that may queue beyond the in-flight the "
           "app's CPU capacity carries (the always-on ceiling); off: no ceiling", "N|off"),
    Option("period_gate", "period_gate", _bool, "admit only while the app's current CFS period has quota left for the "
           "request (reads the app's cgroup per request; needs a quota on the app's own group)", "BOOL"),
    Option("algorithm", "algorithm", _choice(*ALGORITHMS), "concurrency limit algorithm", "NAME"),
    Option("fixed_limit", "fixed_limit", _number(int, 1), "limit for --algorithm fixed", "N"),
    Option("dry_run", "dry_run", _bool, "decide and count, but never shed", "BOOL"),
    Option("priority_header", "priority_header", _header_name, "trusted request header naming the priority (critical|default|sheddable)", "NAME"),
    Option("resource", "resource", _header_name, "resource label for the limiter and metrics", "NAME"),
    Option("sample_interval", "sample_interval_s", _number(float, 0.01, 60), "CPU sampling interval, seconds", "S"),
    Option("rejections_kept", "rejections_kept", _number(int, 0, 100000), "how many recent rejections /debug/limiter shows", "N"),
    Option("probe_interval", "probe_interval_s", _number(float, 0.05, 3600), "upstream readiness probe interval, seconds", "S"),
    Option("health_path", "health_path", _path, "probe GET upstream+PATH for readiness (default: a TCP connect)", "PATH"),
    Option("trust_forwarded", "trust_forwarded", _bool, "keep incoming X-Forwarded-Proto/Host instead of overwriting", "BOOL"),
    Option("stream_paths", "stream_paths", _path_prefixes, "path prefixes whose responses are streams: the admission "
           "ends at the response headers (text/event-stream is detected anyway)", "P1,P2"),
    Option("exempt_paths", "exempt_paths", _path_prefixes, "paths (exact, without the query) proxied without "
           "admission: never shed, and their RT is not a sample (probes; as the aiohttp middleware's); '' for none",
           "P1,P2"),
    Option("uvloop", "uvloop", _choice("auto", "on", "off"), "use uvloop if installed (auto), required (on) or never (off)", "MODE"),
    Option("client", "client", _choice("fast", "aiohttp"), "upstream HTTP client: the lean keep-alive pool (fast) or aiohttp's ClientSession", "NAME"),
    Option("log_level", "log_level", _choice("debug", "info", "warning", "error"), "log level", "LEVEL"),
    Option("engine", "engine", _choice("python", "haproxy", "auto"), "data plane: this process (python), HAProxy as a "
           "child driven over its admin socket (haproxy; docs/haproxy.md), or haproxy when installed (auto)", "NAME"),
    Option("queue_timeout", "queue_timeout_s", _number(float, 0, 3600, lo_open=True), "haproxy engine: the longest a "
           "request waits in HAProxy's queue before a 503 (the queue is also bounded by length)", "S"),
    Option("quota", "quota", _quota_rules, "a quota rule, e.g. 'key=header:X-Tenant,rate=100/s,burst=20' "
           "(repeatable; in the environment, rules separated by ';'); see docs/quota.md", "RULE"),
    Option("quota_store", "quota_store", _quota_store, "Redis URL the quotas are shared through "
           "(redis://HOST:PORT/DB; empty: each sidecar enforces them alone)", "URL"),
    Option("quota_on_error", "quota_on_error", _choice("local", "open", "closed"), "while the quota store cannot "
           "answer: local (quota / replicas here), open (admit) or closed (503 quota_store)", "MODE"),
    Option("quota_replicas", "quota_replicas", _replicas, "replicas the local mode divides quotas by "
           "(auto: counted from heartbeats in the store)", "N|auto"),
    Option("quota_timeout", "quota_timeout_s", _number(float, 0, 10, lo_open=True), "bound of one quota store call, "
           "seconds", "S"),
)

_BY_KEY = {o.key: o for o in OPTIONS}
#: options whose flag may be given several times (and whose TOML value may be a list): joined with ';'
_REPEATABLE = frozenset({"quota"})
assert {o.field for o in OPTIONS} == {f.name for f in fields(SidecarConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per option to ``parser`` (defaults are None: unset)."""
    parser.add_argument("--config", metavar="FILE", default=None, help=f"TOML file (also {ENV_PREFIX}CONFIG)")
    defaults = SidecarConfig()
    for o in OPTIONS:
        default = getattr(defaults, o.field)
        parser.add_argument(
            o.flag,
            dest="cfg_" + o.key,
            metavar=o.metavar or None,
            default=None,
            action="append" if o.key in _REPEATABLE else "store",
            help=f"{o.help} [{o.env}; default {default!s}]",
        )


def _toml_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)  # a list option (stream_paths, exempt_paths)
    raise ValueError(f"expected a string or number, got {type(value).__name__}")


def _read_toml(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
    table = data.pop("sidecar", None)
    if table is not None:
        if not isinstance(table, dict):
            raise ConfigError(f"config: [sidecar] in {path} must be a table")
        data.update(table)
    out: dict[str, str] = {}
    for key, value in data.items():
        k = key.replace("-", "_")
        if k not in _BY_KEY:
            raise ConfigError(f"{key}: unknown key in {path}")
        if k in _REPEATABLE and isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[k] = ";".join(value)
            continue
        try:
            out[k] = _toml_text(value)
        except ValueError as e:
            raise ConfigError(f"{key}: {e} (from {path})") from None
    return out


def load_config(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> SidecarConfig:
    """Merge flags (``args`` from a parser given ``add_arguments``), ``env`` and the TOML file.

    Raises ``ConfigError`` naming the first bad key and its origin.
    """
    env = os.environ if env is None else env
    raw: dict[str, tuple[str, str]] = {}  # key -> (text, origin)
    config_path: str | None = getattr(args, "config", None) or env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        for k, v in _read_toml(config_path).items():
            raw[k] = (v, config_path)
    for o in OPTIONS:
        if o.env in env:
            raw[o.key] = (env[o.env], o.env)
    for o in OPTIONS:
        flag_value: str | list[str] | None = getattr(args, "cfg_" + o.key, None) if args is not None else None
        if isinstance(flag_value, list):
            flag_value = ";".join(flag_value)
        if flag_value is not None:
            raw[o.key] = (flag_value, o.flag)
    values: dict[str, Any] = {}
    for key, (text, origin) in raw.items():
        o = _BY_KEY[key]
        try:
            values[o.field] = o.parse(text)
        except ValueError as e:
            raise ConfigError(f"{key}: {e} (from {origin})") from None
    cfg = SidecarConfig(**values)
    if cfg.listen == cfg.admin and cfg.listen.port != 0:
        raise ConfigError(f"admin: must differ from listen ({cfg.listen})")
    if cfg.quota_store and not cfg.quota:
        raise ConfigError("quota_store: given without any quota rule (--quota)")
    return cfg


def build_parser(prog: str = "sidecar") -> argparse.ArgumentParser:
    """A standalone parser (``python -m sidecar``)."""
    p = argparse.ArgumentParser(prog=prog, description="flowctl sidecar: an adaptive-limiting HTTP reverse proxy")
    add_arguments(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)
