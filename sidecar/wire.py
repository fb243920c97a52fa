"""HTTP/1.1 response bytes the sidecar writes itself on the fast listener (errors, rejections, heads)."""

from __future__ import annotations

import json
from http import HTTPStatus

__all__ = ["error_body", "header_block", "plain_response", "reason_phrase", "status_line"]


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def error_body(status: int, detail: str) -> bytes:
    return json.dumps({"error": reason_phrase(status), "detail": detail}).encode()


def status_line(status: int, reason: str) -> bytes:
    return f"HTTP/1.1 {status} {reason or reason_phrase(status)}\r\n".encode("latin-1", "replace")


def header_block(headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers).encode("utf-8", "surrogateescape")


def plain_response(status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool) -> bytes:
    """A whole small response (errors, rejections) for the fast listener."""
    head = status_line(status, "") + header_block(headers)
    head += b"Content-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n" % len(body)
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body
