"""Header hygiene for a reverse proxy (RFC 9110 §7.6).

Hop-by-hop headers describe one connection, not the message: ``Connection``
and every name it lists, ``Keep-Alive``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade`` and ``Proxy-*``. They are removed in both
directions. End-to-end headers (``Content-Length``, ``Content-Encoding``,
``Set-Cookie``, ...) pass through untouched, in order, duplicates kept.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, MultiMapping

__all__ = [
    "HOP_BY_HOP",
    "VIA",
    "connection_tokens",
    "request_headers",
    "response_headers",
]

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection"}
)
VIA = "1.1 flowctl"


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """The lower-cased header names listed in ``Connection`` header values."""
    out: set[str] = set()
    for v in values:
        for tok in v.split(","):
            tok = tok.strip().lower()
            if tok:
                out.add(tok)
    return frozenset(out)


def _end_to_end(headers: Iterable[tuple[str, str]], listed: frozenset[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers:
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in listed or lk.startswith("proxy-"):
            continue
        out.add(k, v)
    return out


def request_headers(
    headers: MultiMapping[str],
    *,
    peer: str | None,
    scheme: str,
    host: str | None,
    trust_forwarded: bool = False,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end ones plus X-Forwarded-For/Proto/Host and Via.

    X-Forwarded-For gets the peer appended. X-Forwarded-Proto/Host are set from
    this hop unless ``trust_forwarded`` and the client sent them. For a WebSocket
    upgrade the handshake headers (``Sec-WebSocket-*``) are left to the client library.
    """
    listed = connection_tokens(headers.getall("Connection", ())) if "Connection" in headers else frozenset()
    out = _end_to_end(headers.items(), listed)
    if websocket:
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol"):
            out.popall(name, None)
    if peer:
        prior = ", ".join(out.popall("X-Forwarded-For", ()))
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    if not (trust_forwarded and "X-Forwarded-Proto" in out):
        out["X-Forwarded-Proto"] = scheme
    if host and not (trust_forwarded and "X-Forwarded-Host" in out):
        out["X-Forwarded-Host"] = host
    prior_via = ", ".join(out.popall("Via", ()))
    out["Via"] = f"{prior_via}, {VIA}" if prior_via else VIA
    return out


def response_headers(headers: Iterable[tuple[str, str]], connection: Iterable[str] = ()) -> CIMultiDict[str]:
    """Headers to send back to the client: the upstream's end-to-end ones plus Via."""
    out = _end_to_end(headers, connection_tokens(connection))
    prior_via = ", ".join(out.popall("Via", ()))
    out["Via"] = f"{prior_via}, {VIA}" if prior_via else VIA
    return out

