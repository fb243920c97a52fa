"""Header hygiene for a reverse proxy (RFC 9110 §7.6).

Hop-by-hop headers describe one connection, not the message: ``Connection``
and every name it lists, ``Keep-Alive``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade`` and ``Proxy-*``. They are removed in both
directions. End-to-end headers (``Content-Length``, ``Content-Encoding``,
``Set-Cookie``, ...) pass through untouched, in order, duplicates kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from multidict import CIMultiDict, MultiMapping

__all__ = [
    "HOP_BY_HOP",
    "VIA",
    "connection_tokens",
    "request_header_list",
    "request_headers",
    "response_header_list",
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


_WS_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"})


def request_header_list(
    headers: MultiMapping[str] | Sequence[tuple[str, str]],
    *,
    peer: str | None,
    scheme: str,
    host: str | None,
    trust_forwarded: bool = False,
    drop: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """Headers to send upstream, in order: end-to-end ones plus X-Forwarded-For/Proto/Host and Via.

    ``headers``: a multidict, or the (name, value) pairs as received.

    X-Forwarded-For gets the peer appended. X-Forwarded-Proto/Host are set from
    this hop unless ``trust_forwarded`` and the client sent them. Lower-case
    names in ``drop`` are left out too (e.g. framing headers the client library sets).
    """
    pairs = list(headers.items()) if isinstance(headers, MultiMapping) else headers
    conn_values = [v for k, v in pairs if len(k) == 10 and k.lower() == "connection"]
    listed = connection_tokens(conn_values) if conn_values else frozenset()
    out: list[tuple[str, str]] = []
    xff: list[str] = []
    via: list[str] = []
    proto = fwd_host = None
    for k, v in pairs:
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in listed or lk in drop or lk.startswith("proxy-"):
            continue
        if lk.startswith(("x-forwarded-", "via")):
            if lk == "x-forwarded-for":
                xff.append(v)
                continue
            if lk == "via":
                via.append(v)
                continue
            if lk == "x-forwarded-proto":
                proto = v
                continue
            if lk == "x-forwarded-host":
                fwd_host = v
                continue
        out.append((k, v))
    if peer:
        xff.append(peer)
    if xff:
        out.append(("X-Forwarded-For", ", ".join(xff)))
    out.append(("X-Forwarded-Proto", proto if trust_forwarded and proto is not None else scheme))
    if trust_forwarded and fwd_host is not None:
        out.append(("X-Forwarded-Host", fwd_host))
    elif host:
        out.append(("X-Forwarded-Host", host))
    via.append(VIA)
    out.append(("Via", ", ".join(via)))
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
    """``request_header_list`` as a CIMultiDict; for a WebSocket upgrade the handshake
    headers (``Sec-WebSocket-*``) are left to the client library."""
    return CIMultiDict(
        request_header_list(
            headers, peer=peer, scheme=scheme, host=host, trust_forwarded=trust_forwarded,
            drop=_WS_HANDSHAKE if websocket else frozenset(),
        )  # fmt: skip
    )


def response_header_list(headers: Iterable[tuple[str, str]], connection: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The upstream's end-to-end response headers plus Via, as (name, value) pairs in order, Via last."""
    listed = connection_tokens(connection)
    out: list[tuple[str, str]] = []
    via: list[str] = []
    for k, v in headers:
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in listed or lk.startswith("proxy-"):
            continue
        if lk == "via":
            via.append(v)
            continue
        out.append((k, v))
    via.append(VIA)
    out.append(("Via", ", ".join(via)))
    return out


def response_headers(headers: Iterable[tuple[str, str]], connection: Iterable[str] = ()) -> CIMultiDict[str]:
    """Headers to send back to the client: the upstream's end-to-end ones plus Via."""
    return CIMultiDict(response_header_list(headers, connection))

