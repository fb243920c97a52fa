"""The generated haproxy.cfg: what it says for each option, and that no flag can inject into it."""

from __future__ import annotations

import argparse
import subprocess
from dataclasses import replace

import pytest

from flowctl.errors import ConfigError
from flowctl.quota.rules import parse_rules
from sidecar.config import HostPort, add_arguments, load_config
from sidecar.haproxy.render import HOP_LUA, Plan, map_text, render, retry_after_s, why_text
from tests.realenv import need_binary
from tests.sidecar.haproxy.helpers import loopback_config

PRIOS = ("critical", "default", "sheddable")


def plan(**kw: object) -> Plan:
    base = Plan(18080, "/run/x/admin.sock", "/run/x/admission.map", "/run/x/why.map", "/run/x/hop.lua", PRIOS, "default", 7,
                {p: 9 for p in PRIOS})  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines()]


def test_defaults_render_the_named_pieces_the_control_loop_addresses() -> None:
    cfg = render(loopback_config(queue_timeout_s=0.25, drain_seconds=10.0), plan())
    ls = lines(cfg)
    assert "stats socket /run/x/admin.sock mode 600 level admin" in ls
    assert "bind 127.0.0.1:18080" in ls
    assert "timeout queue 250ms" in ls
    assert "hard-stop-after 15000ms" in ls  # drain_seconds + 5 s: a backstop behind flowctl's own drain
    assert any(ln.startswith("server upstream 127.0.0.1:8080 maxconn 7 check") for ln in ls)
    assert "server upstream 127.0.0.1:8080 track app/upstream" in ls  # streams: same server, no maxconn
    assert "http-request set-var(txn.room) str(default),map_str_int(/run/x/admission.map,0)" in ls
    assert "use_backend shed_%[str(default)] if { var(txn.busy),sub(txn.room) ge 0 }" in ls
    for p in PRIOS:
        assert f"backend shed_{p}" in ls
    # no priority header configured: every request is the default class, nothing reorders the queue
    assert not any("set-priority-class" in ln for ln in ls)
    assert not any("x-priority" in ln.lower() for ln in ls)


def test_the_shed_and_timeout_answers_carry_the_python_engines_json_and_retry_after() -> None:
    cfg = render(loopback_config(cool_off_s=2.5), plan())
    assert retry_after_s(loopback_config(cool_off_s=2.5)) == 3
    assert ('http-request return status 503 content-type application/json lf-string '
            '\'{"error": "overloaded", "reason": "%[str(default.reason),map(/run/x/why.map,queue)]", '
            '"stage": "%[str(default.stage),map(/run/x/why.map,ceiling)]", "retry_after_s": 3.0}\' hdr retry-after 3') in cfg  # fmt: skip
    assert ('http-error status 503 content-type application/json string \'{"error": "overloaded", '
            '"reason": "queue_timeout", "stage": "queue", "retry_after_s": 3.0}\' hdr retry-after 3') in cfg  # fmt: skip


def test_priority_header_maps_to_priority_classes_critical_first() -> None:
    ls = lines(render(loopback_config(priority_header="X-Priority"), plan()))
    assert "http-request set-var(txn.prio) req.hdr(X-Priority),lower" in ls
    assert "http-request set-var(txn.prio) str(default) unless { var(txn.prio) -m str critical default sheddable }" in ls
    assert "http-request set-priority-class int(-1) if { var(txn.prio) -m str critical }" in ls
    assert "http-request set-priority-class int(1) if { var(txn.prio) -m str sheddable }" in ls
    assert "use_backend shed_%[var(txn.prio)] if { var(txn.busy),sub(txn.room) ge 0 }" in ls


def test_streams_go_to_a_backend_without_admission() -> None:
    ls = lines(render(loopback_config(stream_paths=("/sse", "/events/")), plan()))
    streams = next(ln for ln in ls if ln.startswith("use_backend streams if"))
    assert "{ req.hdr(upgrade) -i websocket }" in streams
    assert "{ req.hdr(accept) -m sub text/event-stream }" in streams
    assert "{ path_beg /sse /events/ }" in streams
    # before the shed rule: a stream is never shed by the rooms
    assert ls.index(streams) < next(i for i, ln in enumerate(ls) if ln.startswith("use_backend shed_"))


def test_upstream_prefix_health_path_and_forwarded_headers() -> None:
    ls = lines(render(loopback_config(upstream="http://app.local:9000/api/v1", health_path="/healthz"), plan()))
    assert ls.count("http-request set-path /api/v1%[path]") == 2  # app and streams
    assert any(ln.startswith("server upstream app.local:9000 maxconn") for ln in ls)
    assert "option httpchk GET /healthz" in ls
    assert "http-request set-header x-forwarded-proto http" in ls
    assert "http-request del-header x-forwarded-host" in ls
    trusted = lines(render(loopback_config(trust_forwarded=True), plan()))
    assert "http-request set-header x-forwarded-proto http unless { req.hdr(x-forwarded-proto) -m found }" in trusted
    assert "http-request del-header x-forwarded-host" not in trusted


def test_max_body_zero_means_no_size_rule() -> None:
    assert "status 413" in render(loopback_config(max_body_bytes=1024), plan())
    assert "status 413" not in render(loopback_config(max_body_bytes=0), plan())


def test_ipv6_listen_and_upstream_are_bracketed() -> None:
    ls = lines(render(loopback_config(listen=HostPort("::1", 0), upstream="http://[::1]:8080"), plan()))
    assert "bind [::1]:18080" in ls
    assert any(ln.startswith("server upstream [::1]:8080 maxconn") for ln in ls)


def test_map_text() -> None:
    assert map_text({"critical": 9, "default": 3, "sheddable": 1}) == "critical 9\ndefault 3\nsheddable 1\n"
    assert why_text({"default": ("cpu", "limit")}) == "default.reason cpu\ndefault.stage limit\n"
    with pytest.raises(ConfigError):
        map_text({"crit ical": 1})


# -- no configuration injection -------------------------------------------------------------------


def _load(*argv: str) -> object:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return load_config(p.parse_args(list(argv)), env={})


@pytest.mark.parametrize(
    "upstream",
    ["http://a b", "http://a\nb", "http://127.0.0.1:8080\n    server evil 10.0.0.1:80", "http://h/p\r\nx",
     "http://h/'x", "http://h/%25", "http://h/a#b", "http://u@h:1", "http://h/a b"],
)  # fmt: skip
def test_an_upstream_that_could_inject_is_refused_by_the_config_loader(upstream: str) -> None:
    with pytest.raises(ConfigError, match="upstream"):
        _load("--upstream", upstream)


@pytest.mark.parametrize("paths", ["/a b", "/x'y", "/a\nb", "/a%[src]", "/a#c"])
def test_stream_paths_that_could_inject_are_refused(paths: str) -> None:
    with pytest.raises(ConfigError, match="stream_paths"):
        _load("--stream-paths", paths)


@pytest.mark.parametrize("header", ["X Priority", "X-Prio\nX", "X%[src]"])
def test_priority_header_that_could_inject_is_refused(header: str) -> None:
    with pytest.raises(ConfigError, match="priority_header"):
        _load("--priority-header", header)


def test_render_refuses_unsafe_words_even_past_the_loader() -> None:
    """Defense in depth: values that reach render() without the loader's checks are refused there."""
    with pytest.raises(ConfigError, match="listen"):
        render(loopback_config(listen=HostPort("127.0.0.1 \n    stats", 0)), plan())
    with pytest.raises(ConfigError, match="run directory"):
        render(loopback_config(), plan(socket_path="/run/x y/admin.sock"))
    with pytest.raises(ConfigError, match="health_path"):
        render(loopback_config(health_path="/h z"), plan())
    with pytest.raises(ConfigError, match="stream_paths"):
        render(loopback_config(stream_paths=("/a b",)), plan())
    with pytest.raises(ConfigError, match="priority"):
        render(loopback_config(), plan(priorities=("critical", "de fault"), default_priority="de fault"))


def test_what_this_engine_cannot_do_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="http:// only"):
        render(loopback_config(upstream="https://app:8443"), plan())
    with pytest.raises(ConfigError, match="quota"):
        render(loopback_config(quota=parse_rules("key=header:X-Tenant,rate=10/s")), plan())


@pytest.mark.real
def test_haproxy_accepts_every_rendered_variant(tmp_path: object) -> None:
    """``haproxy -c`` on the configs the options above produce (the real 2.6 parser)."""
    binary = need_binary("haproxy")
    import os

    d = str(tmp_path)
    variants = [
        loopback_config(),
        loopback_config(priority_header="X-Priority", stream_paths=("/sse", "/ws"), trust_forwarded=True),
        loopback_config(upstream="http://localhost:9000/pre/fix", health_path="/healthz", max_body_bytes=0),
        loopback_config(listen=HostPort("::1", 0), upstream="http://[::1]:8080"),
    ]
    for i, cfg in enumerate(variants):
        amap, wmap = os.path.join(d, f"a{i}.map"), os.path.join(d, f"w{i}.map")
        with open(amap, "w") as f:
            f.write(map_text({p: 5 for p in PRIOS}))
        with open(wmap, "w") as f:
            f.write(why_text({p: ("queue", "ceiling") for p in PRIOS}))
        lua = os.path.join(d, "hop.lua")
        with open(lua, "w") as f:
            f.write(HOP_LUA)
        path = os.path.join(d, f"h{i}.cfg")
        with open(path, "w") as f:
            f.write(render(cfg, plan(socket_path=os.path.join(d, f"s{i}.sock"), map_path=amap, why_path=wmap,
                                     lua_path=lua)))
        out = subprocess.run([binary, "-c", "-f", path], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"variant {i}: {out.stdout}{out.stderr}"
