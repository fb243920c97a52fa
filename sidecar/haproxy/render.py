"""The HAProxy configuration the haproxy engine runs: one pure function of the sidecar config.

What the generated file does (names are fixed: the control loop addresses them):

- frontend ``flowctl`` on ``--listen``: header hygiene as the Python engine
  (X-Forwarded-For and ``Via: 1.1 flowctl`` appended as one more header
  line each, X-Forwarded-Proto/Host set, Keep-Alive, TE, Trailer and Proxy-* removed
  both ways, and the names a Connection header lists, by ``HOP_LUA``), 413 over ``max_body`` (by Content-Length), the priority class
  from ``--priority-header`` (``http-request set-priority-class``: the class
  index minus the default's, so critical -1 is dequeued first), and
  admission: a request is shed (503) when the upstream's requests in service
  plus those queued reach its class's *room*, read from ``admission.map``
  (``set map`` at run time); the 503 body's reason and stage come from
  ``why.map`` (``queue``/``ceiling``, or the limit's reason/``limit``);
- backend ``app``, server ``upstream``: ``maxconn`` is the admission limit
  (``set maxconn server app/upstream N`` at run time); the queue ends at
  ``timeout queue`` (503, reason ``queue_timeout``);
- backend ``streams``: WebSocket upgrades, ``Accept: text/event-stream`` and
  ``--stream-paths`` go there, with no maxconn: streams hold no admission;
- backend ``unreachable``: 502 while HAProxy's health check (the probe's rule:
  a TCP connect, or GET ``--health-path`` below 500) finds the upstream down;
- backends ``shed_<class>``: answer the shed 503 (their request counters are
  the sheds per class);
- the admin socket, mode 0600, in the engine's private run directory.

Every value written here is checked against a strict character set first
(``ConfigError`` otherwise): nothing from a flag can add a line or a directive.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from flowctl.errors import ConfigError
from sidecar.config import SidecarConfig

__all__ = ["APP", "HOP_LUA", "RT_SAMPLE_VAR", "SERVER", "STREAMS", "Plan", "map_text", "render", "shed_backend", "why_text"]

APP = "app"
STREAMS = "streams"
UNREACHABLE = "unreachable"
SERVER = "upstream"
RT_SAMPLE_VAR = "proc.flowctl_rts"  # the per mille of the app's requests whose response time is summed
FRONTEND = "flowctl"

_SAFE_WORD = re.compile(r"[A-Za-z0-9._~/:\[\]-]+")
_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Plan:
    """What the config is rendered from besides the sidecar config: where things live and the first limits."""

    listen_port: int
    socket_path: str
    map_path: str  # admission.map: the rooms (integers)
    why_path: str  # why.map: what each class's shed says (strings)
    lua_path: str
    priorities: tuple[str, ...]  # most important first (``Limiter.priorities``)
    default_priority: str
    maxconn: int  # the server's maxconn at start
    rooms: Mapping[str, int]  # per class: in service + queued at most (admission.map at start)
    nbthread: int | None = None  # HAProxy's threads; None: its default (the CPUs its affinity allows)


# Loaded with ``lua-load``: removes the headers a Connection header names (RFC 9110 7.6.1), which HAProxy
# itself forwards; run only for a message that has a Connection header left after HAProxy's own parsing.
HOP_LUA = """\
-- flowctl: remove the headers a Connection header names (RFC 9110 7.6.1), as the Python engine does.
local kept = { ["keep-alive"] = true, ["close"] = true, ["upgrade"] = true }

local function strip(get, del, set)
  local hdrs = get()
  local conn = hdrs["connection"]
  if conn == nil then return end
  local left = {}
  for i = 0, #conn do
    local v = conn[i]
    if v ~= nil then
      for tok in string.gmatch(v, "[^,%s]+") do
        local t = string.lower(tok)
        if kept[t] then
          left[#left + 1] = t
        elseif t ~= "connection" then
          del(t)
        end
      end
    end
  end
  if #left == 0 then del("connection") else set("connection", table.concat(left, ", ")) end
end

core.register_action("flowctl_hop_req", { "http-req" }, function(txn)
  local h = txn.http
  strip(function() return h:req_get_headers() end, function(n) h:req_del_header(n) end,
        function(n, v) h:req_set_header(n, v) end)
end)
-- flowctl: the response time of sampled requests of the app backend (txn.t0, set at the request in microseconds
-- since the epoch), summed, for the control loop: "flowctl rt" on the admin socket answers "<sum_us> <count>".
local rt_sum, rt_count = 0, 0
core.register_action("flowctl_rt", { "http-res" }, function(txn)
  local t0 = txn:get_var("txn.t0")
  if t0 == nil then return end
  local now = core.now()
  local rt = now.sec * 1000000 + now.usec - t0
  if rt >= 0 then
    rt_sum = rt_sum + rt
    rt_count = rt_count + 1
  end
end)
core.register_cli({ "flowctl", "rt" }, "flowctl: sampled response times, sum in us and count", function(applet)
  applet:send(string.format("%d %d\\n", rt_sum, rt_count))
end)

core.register_action("flowctl_hop_res", { "http-res" }, function(txn)
  local h = txn.http
  strip(function() return h:res_get_headers() end, function(n) h:res_del_header(n) end,
        function(n, v) h:res_set_header(n, v) end)
end)
"""


def shed_backend(priority: str) -> str:
    return f"shed_{priority}"


def _word(value: str, what: str) -> str:
    """``value`` when it is one safe config word (no spaces, quotes, ``#``, ``%``, ``$``, ``\\``), else ConfigError."""
    if not _SAFE_WORD.fullmatch(value):
        raise ConfigError(f"{what}: {value!r} cannot be written into HAProxy's configuration")
    return value


def _name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise ConfigError(f"{what}: {value!r} must be letters, digits, '-' or '_'")
    return value


def _ms(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds * 1000))}ms"


def _json(body: Mapping[str, object]) -> str:
    """A JSON body as a single-quoted HAProxy string argument (no quote or backslash can occur in it)."""
    text = json.dumps(body)
    if "'" in text or "\\" in text or "%" in text:
        raise ConfigError(f"response body {text!r} cannot be written into HAProxy's configuration")
    return f"'{text}'"


def _server_address(upstream: str) -> tuple[str, str]:
    """``(HOST:PORT, PREFIX)`` of an ``http://`` upstream; https is not supported by this engine yet."""
    parts = urlsplit(upstream)
    if parts.scheme != "http":
        raise ConfigError(f"upstream: the haproxy engine forwards to http:// only, got {upstream!r}")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or 80
    return _word(f"{host}:{port}", "upstream"), _word(parts.path.rstrip("/"), "upstream") if parts.path.strip("/") else ""


def retry_after_s(config: SidecarConfig) -> int:
    """The Retry-After of the engine's sheds: the cool-off, in whole seconds, at least 1 (as the Python engine's)."""
    return max(1, math.ceil(config.cool_off_s))


def map_text(rooms: Mapping[str, int]) -> str:
    """``admission.map``: one ``<class> <room>`` line per priority class."""
    return "".join(f"{_name(k, 'priority')} {int(v)}\n" for k, v in rooms.items())


def why_text(why: Mapping[str, tuple[str, str]]) -> str:
    """``why.map``: what a shed of each class says, ``<class>.reason <reason>`` and ``<class>.stage <stage>``."""
    return "".join(f"{_name(k, 'priority')}.reason {_name(r, 'reason')}\n{_name(k, 'priority')}.stage {_name(st, 'stage')}\n"
                   for k, (r, st) in why.items())  # fmt: skip


def render(config: SidecarConfig, plan: Plan) -> str:
    """The whole haproxy.cfg for ``config`` (validated) and ``plan``."""
    if config.quota:
        raise ConfigError("quota: quotas are enforced by the python engine only (--engine python)")
    server, prefix = _server_address(config.upstream)
    prios = [_name(p, "priority") for p in plan.priorities]
    default = _name(plan.default_priority, "priority")
    if default not in prios:
        raise ConfigError(f"priority: the default class {default!r} is not one of {prios}")
    host = config.listen.host
    bind = _word(f"[{host}]:{plan.listen_port}" if ":" in host else f"{host}:{plan.listen_port}", "listen")
    sock = _word(plan.socket_path, "run directory")
    amap = _word(plan.map_path, "run directory")
    wmap = _word(plan.why_path, "run directory")
    retry = retry_after_s(config)
    header = _name(config.priority_header, "priority_header") if config.priority_header else ""
    streams = [_word(p, "stream_paths") for p in config.stream_paths]
    # the upstream's health as the probe judges it (a TCP connect, or GET health_path: any status < 500)
    check = f"check inter {_ms(config.probe_interval_s)} rise 1 fall 2"
    out: list[str] = []
    add = out.append

    add("# Written by flowctl sidecar --engine haproxy at every start; edits are lost. See docs/haproxy.md.")
    add("global")
    add(f"    stats socket {sock} mode 600 level admin")
    add(f"    lua-load {_word(plan.lua_path, 'run directory')}")
    if plan.nbthread is not None:
        add(f"    nbthread {max(1, int(plan.nbthread))}")
    add("    stats timeout 10s")
    add(f"    set-var {RT_SAMPLE_VAR} int(1000)")
    # A backstop for a soft stop flowctl did not finish (flowctl ends its own drain first).
    add(f"    hard-stop-after {_ms(config.drain_seconds + 5.0)}")
    add("")
    add("defaults")
    add("    mode http")
    add("    option http-keep-alive")
    add("    retries 2")
    add(f"    timeout connect {_ms(config.connect_timeout_s)}")
    add(f"    timeout http-request {_ms(config.header_timeout_s)}")
    add(f"    timeout http-keep-alive {_ms(min(75.0, config.header_timeout_s))}")
    add(f"    timeout client {_ms(config.body_timeout_s)}")
    add(f"    timeout server {_ms(config.read_timeout_s)}")
    add(f"    timeout queue {_ms(config.queue_timeout_s)}")
    add("    timeout tunnel 1h")
    add(f"    http-error status 502 content-type application/json string {_json({'error': 'Bad Gateway', 'detail': 'upstream unreachable or broken'})}")
    add(f"    http-error status 504 content-type application/json string {_json({'error': 'Gateway Timeout', 'detail': 'upstream timed out'})}")
    add("")
    add(f"frontend {FRONTEND}")
    add(f"    bind {bind}")
    add(f"    maxconn {config.max_clients}")
    # hop-by-hop headers: HAProxy handles Transfer-Encoding, Upgrade and the keep-alive/close tokens;
    # the names a Connection header lists are removed by HOP_LUA
    add("    http-request lua.flowctl_hop_req if { req.fhdr(connection) -m found }")
    add("    http-response lua.flowctl_hop_res if { res.fhdr(connection) -m found }")
    add("    http-request del-header keep-alive")
    add("    http-request del-header te")
    add("    http-request del-header trailer")
    add("    http-request del-header proxy- -m beg")
    add("    http-response del-header keep-alive")
    add("    http-response del-header trailer")
    add("    http-response del-header proxy- -m beg")
    # X-Forwarded-For gets the peer appended and Via "1.1 flowctl", each as one more header line (the same
    # list as the Python engine's comma-joined value: RFC 9110 5.3); one rule each keeps the hot path short
    add("    option forwardfor")
    if config.trust_forwarded:
        add("    http-request set-header x-forwarded-proto http unless { req.hdr(x-forwarded-proto) -m found }")
        add("    http-request set-header x-forwarded-host %[req.hdr(host)] if { req.hdr(host) -m found } !{ req.hdr(x-forwarded-host) -m found }")
    else:
        add("    http-request set-header x-forwarded-proto http")
        add("    http-request del-header x-forwarded-host")
        add("    http-request set-header x-forwarded-host %[req.hdr(host)] if { req.hdr(host) -m found }")
    add('    http-request add-header via "1.1 flowctl"')
    add('    http-response add-header via "1.1 flowctl"')
    if config.max_body_bytes:
        body = _json({"error": "Payload Too Large", "detail": f"request body exceeds max_body {config.max_body_bytes}"})
        add(f"    http-request return status 413 content-type application/json string {body} "
            f"if {{ req.hdr(content-length) -m int gt {config.max_body_bytes} }}")  # fmt: skip
    # the priority class: the header's value when it names a class, else the default
    if header:
        add(f"    http-request set-var(txn.prio) req.hdr({header}),lower")
        add(f"    http-request set-var(txn.prio) str({default}) unless {{ var(txn.prio) -m str {' '.join(prios)} }}")
        for i, p in enumerate(prios):
            rank = i - prios.index(default)
            if rank:
                add(f"    http-request set-priority-class int({rank}) if {{ var(txn.prio) -m str {p} }}")
        prio_expr = "var(txn.prio)"
    else:
        prio_expr = f"str({default})"
    # admission: requests in service plus queued, against the class's room (admission.map)
    add(f"    http-request set-var(txn.busy) queue({APP})")
    add(f"    http-request set-var(txn.busy) srv_conn({APP}/{SERVER}),add(txn.busy)")
    add(f"    http-request set-var(txn.room) {prio_expr},map_str_int({amap},0)")
    stream_acl = ["{ req.hdr(upgrade) -i websocket }", "{ req.hdr(accept) -m sub text/event-stream }"]
    if streams:
        stream_acl.append("{ path_beg " + " ".join(streams) + " }")
    add(f"    use_backend {UNREACHABLE} unless {{ srv_is_up({APP}/{SERVER}) }}")
    add(f"    use_backend {STREAMS} if " + " || ".join(stream_acl))
    add(f"    use_backend shed_%[{prio_expr}] if {{ var(txn.busy),sub(txn.room) ge 0 }}")
    add(f"    default_backend {APP}")
    add("")
    add(f"backend {APP}")
    if config.health_path:
        add(f"    option httpchk GET {_word(config.health_path, 'health_path')}")
        add("    http-check expect rstatus ^[1-4]")
    if prefix:
        add(f"    http-request set-path {prefix}%[path]")
    overloaded = _json({"error": "overloaded", "reason": "queue_timeout", "stage": "queue", "retry_after_s": float(retry)})
    add(f"    http-error status 503 content-type application/json string {overloaded} hdr retry-after {retry}")
    # the response time of a sample of requests (RT_SAMPLE_VAR: per mille, set by the control loop), summed by
    # HOP_LUA's flowctl_rt: HAProxy's own rtime is an average of 1024 requests in whole ms
    add(f"    http-request set-var(txn.t0) date(0,us) if {{ rand(1000),sub({RT_SAMPLE_VAR}) lt 0 }}")
    add("    http-response lua.flowctl_rt if { var(txn.t0) -m found }")
    add(f"    server {SERVER} {server} maxconn {max(1, plan.maxconn)} {check}")
    add("")
    add(f"backend {STREAMS}")
    if prefix:
        add(f"    http-request set-path {prefix}%[path]")
    add(f"    server {SERVER} {server} track {APP}/{SERVER}")
    add("")
    add(f"backend {UNREACHABLE}")
    body = _json({"error": "Bad Gateway", "detail": "upstream unreachable (health check)"})
    add(f"    http-request return status 502 content-type application/json string {body}")
    for p in prios:
        add("")
        add(f"backend {shed_backend(p)}")
        # reason and stage as the Python engine's body: what holds the class's room now (admission.map)
        body = (f'\'{{"error": "overloaded", "reason": "%[str({p}.reason),map({wmap},queue)]", '
                f'"stage": "%[str({p}.stage),map({wmap},ceiling)]", "retry_after_s": {float(retry)}}}\'')
        add(f"    http-request return status 503 content-type application/json lf-string {body} hdr retry-after {retry}")
    return "\n".join(out) + "\n"


def initial_rooms(priorities: Sequence[str], room: int) -> dict[str, int]:
    """Every class the same room (before the first control tick)."""
    return {p: room for p in priorities}
